package agent

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/portcullis-dev/portcullis/internal/l7"
	"github.com/portcullis-dev/portcullis/internal/netns"
)

// Capabilities that let a process write TCP segments into a connection past its socket: a raw or
// packet socket (CAP_NET_RAW), TCP_REPAIR or a tun device (CAP_NET_ADMIN).
const (
	capNetAdmin = 12
	capNetRaw   = 13
)

// TrustScanner keeps the kernel's list of network namespaces whose clients may be judged at source
// (--http-judge-at-source): those in which no process can ever hold CAP_NET_RAW or CAP_NET_ADMIN,
// because every process's capability bounding set lacks both (a process never gains a capability
// outside its bounding set, and its children inherit it). Such a client cannot get past its own
// socket's judge. It rescans /proc every interval; a namespace that gets a capable process is
// untrusted at the next scan, for new connections (bpf/README.md, "Judged at source"). The node's
// own namespace is never trusted: kernel threads hold every capability. It is a manager Runnable.
type TrustScanner struct {
	l7       *l7.L7
	proc     string
	interval time.Duration
	trusted  int
}

// NewTrustScanner returns a TrustScanner reading procRoot (/proc).
func NewTrustScanner(l *l7.L7, procRoot string) *TrustScanner {
	return &TrustScanner{l7: l, proc: procRoot, interval: time.Second, trusted: -1}
}

// Start scans until ctx ends.
func (s *TrustScanner) Start(ctx context.Context) error {
	tick := time.NewTicker(s.interval)
	defer tick.Stop()
	for {
		s.scan(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

func (s *TrustScanner) scan(ctx context.Context) {
	cookies := map[uint64]bool{}
	for _, path := range trustedNetns(s.proc) {
		c, err := netns.Cookie(path)
		if err != nil {
			continue // the namespace's last process is gone
		}
		cookies[c] = true
	}
	if err := s.l7.SetTrustedNetns(cookies); err != nil {
		log.FromContext(ctx).Error(err, "update the network namespaces trusted for judging at source")
		return
	}
	if len(cookies) != s.trusted {
		s.trusted = len(cookies)
		log.FromContext(ctx).Info("network namespaces trusted for judging HTTP at source", "count", s.trusted)
	}
}

// trustedNetns returns one /proc/PID/ns/net path for each network namespace in which every
// process's bounding set lacks CAP_NET_RAW and CAP_NET_ADMIN.
func trustedNetns(procRoot string) []string {
	type nsID struct{ dev, ino uint64 }
	trusted := map[nsID]bool{}
	path := map[nsID]string{}
	entries, err := os.ReadDir(procRoot)
	if err != nil {
		return nil
	}
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		p := filepath.Join(procRoot, e.Name(), "ns", "net")
		var st syscall.Stat_t
		if syscall.Stat(p, &st) != nil {
			continue // gone, or a zombie
		}
		bnd, ok := capBnd(filepath.Join(procRoot, e.Name(), "status"))
		if !ok {
			continue
		}
		id := nsID{uint64(st.Dev), st.Ino}
		capable := bnd&(1<<capNetRaw|1<<capNetAdmin) != 0
		if t, seen := trusted[id]; !seen {
			trusted[id] = !capable
			path[id] = p
		} else if t && capable {
			trusted[id] = false
		}
	}
	var out []string
	for id, ok := range trusted {
		if ok {
			out = append(out, path[id])
		}
	}
	return out
}

// capBnd reads the CapBnd line of /proc/PID/status.
func capBnd(statusPath string) (uint64, bool) {
	f, err := os.Open(statusPath)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapBnd:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return n, err == nil
		}
	}
	return 0, false
}
