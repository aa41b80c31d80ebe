package datapath

// The BPF object is built from ../../bpf with clang-14 (Debian bookworm's clang, pinned so that
// regenerating on another machine produces the same bytes) and stripped with llvm-strip-14. Only the
// little-endian object is built: every architecture we ship (amd64, arm64) is little-endian.
//go:generate go tool bpf2go -cc clang-14 -strip llvm-strip-14 -target bpfel -type ipcache_key -type ipcache_value -type endpoint_info -type policy_key -type policy_value -type ct_key -type ct_value -type counter_key -type counter_value -type flow_event -type reason -type verdict -type direction -type policy_action -type policy_flags -type endpoint_flags -type ct_flags -type flow_flags -type identity_reserved portcullis ../../bpf/portcullis.c -- -mcpu=v3 -Wall -Werror
