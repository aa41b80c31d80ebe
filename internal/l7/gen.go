package l7

// The BPF object is built from ../../bpf/http.c with clang-14 (pinned, as internal/datapath, so that
// regenerating produces the same bytes) and stripped with llvm-strip-14; little-endian only.
//go:generate go tool bpf2go -cc clang-14 -strip llvm-strip-14 -target bpfel -type l7_port_key -type l7_port_value -type l7_ipcache_key -type l7_ipcache_value -type l7_ruleset_key -type l7_rule -type l7_ruleset -type l7_dfa -type l7_header -type l7_sock_state -type l7_test_ctx -type l7_reason -type l7_decision -type l7_phase -type l7_direction -type l7_tuple -type l7_fast_conn -type l7_event -type l7_event_verdict http ../../bpf/http.c -- -mcpu=v3 -Wall -Werror
