// Command psockdiag prints the sockmap state (struct sk_psock) of every TCP socket in a network
// namespace: how much waits in the psock backlog and in ingress_msg, the first queued message, the
// receive queue and memory, and the two read cursors (the stream parser's psock->copied_seq and TCP's
// copied_seq, next to rcv_nxt). It is the tool behind the SK_PASS root cause in bpf/README.md ("Why
// allowed messages are redirected"). Build the program, then run as root:
//
//	clang-14 -O2 -g -target bpf -x c -c hack/psockdiag/psock.bpf -o /tmp/psock.o
//	go run ./hack/psockdiag -obj /tmp/psock.o -netns /run/netns/NAME
package main

import (
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/portcullis-dev/portcullis/internal/netns"
)

func main() {
	obj := flag.String("obj", "/tmp/psock.o", "the compiled psock.bpf")
	ns := flag.String("netns", "", "network namespace path (default: this process's)")
	flag.Parse()
	if err := run(*obj, *ns); err != nil {
		fmt.Fprintln(os.Stderr, "psockdiag:", err)
		os.Exit(1)
	}
}

func run(obj, ns string) error {
	coll, err := ebpf.LoadCollection(obj)
	if err != nil {
		return err
	}
	defer coll.Close()
	it, err := link.AttachIter(link.IterOptions{Program: coll.Programs["diag"]})
	if err != nil {
		return err
	}
	defer it.Close()
	// A socket iterator walks the namespace of the thread that opens it.
	return netns.Do(ns, func() error {
		rd, err := it.Open()
		if err != nil {
			return err
		}
		defer rd.Close()
		_, err = io.Copy(os.Stdout, rd)
		return err
	})
}
