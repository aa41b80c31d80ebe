#!/usr/bin/env bash
# Builds the real control plane used by the tests and the lab -- kube-apiserver and kubectl from the
# k8s.io/kubernetes module, etcd from go.etcd.io/etcd/server/v3 -- into a bin directory (default bin/).
# Only the Go module proxy is used. The binaries are reused while hack/tools/controlplane is unchanged.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${1:-$root/bin}
mod=$root/hack/tools/controlplane
stamp=$bin/.controlplane.sum

want=$(cat "$mod/go.mod" "$mod/go.sum" "$mod/etcd/main.go" | sha256sum | cut -d' ' -f1)
if [[ -x $bin/kube-apiserver && -x $bin/etcd && -x $bin/kubectl && "$(cat "$stamp" 2>/dev/null)" == "$want" ]]; then
	echo "control plane: kube-apiserver, etcd and kubectl in $bin are up to date"
	exit 0
fi

mkdir -p "$bin"
echo "control plane: building kube-apiserver, kubectl and etcd into $bin (about 4 minutes the first time)"
start=$SECONDS
cd "$mod"
go build -o "$bin/" ./etcd k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl
echo "$want" >"$stamp"
echo "control plane: built in $((SECONDS - start)) s"
