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
// untrusted at the next scan for new connections, and if the capable process is still there at the
// scan after, the connections it has judged at source are reset (bpf/README.md, "Judged at source"):
// a short-lived full-capability process, such as a runtime's setup process for `kubectl exec`,
// does not break them. The node's own namespace is never trusted: kernel threads hold every
// capability. It is a manager Runnable.
type TrustScanner struct {
	l7       trustKernel
	proc     string
	interval time.Duration
	trusted  int
	// lost counts, for namespaces that were trusted, the consecutive scans that found a capable
	// process in them.
	lost    map[nsID]int
	cookies netnsCookies
}

// trustKernel is what the TrustScanner changes in the kernel (*l7.L7).
type trustKernel interface {
	SetTrustedNetns(cookies map[uint64]bool) error
	ResetAtSource(netnsPath string) error
}

var _ trustKernel = (*l7.L7)(nil)

// nsID names a network namespace while it exists.
type nsID struct{ dev, ino uint64 }

// netnsID is the identity of the network namespace at path (/proc/PID/ns/net).
func netnsID(path string) (nsID, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return nsID{}, err
	}
	return nsID{uint64(st.Dev), st.Ino}, nil
}

// netnsCookies caches network namespaces' cookies: a cookie is stable for a namespace's life, and
// reading one means entering the namespace.
type netnsCookies map[nsID]uint64

// of returns the cookie of the namespace id, reached at path.
func (m netnsCookies) of(id nsID, path string) (uint64, error) {
	if c, ok := m[id]; ok {
		return c, nil
	}
	c, err := netns.Cookie(path)
	if err != nil {
		return 0, err
	}
	m[id] = c
	return c, nil
}

// keep forgets the namespaces alive does not keep (gone: their identity can be reused).
func (m netnsCookies) keep(alive func(nsID) bool) {
	for id := range m {
		if !alive(id) {
			delete(m, id)
		}
	}
}

// netnsInfo is what a scan learnt of one network namespace.
type netnsInfo struct {
	path    string // /proc/PID/ns/net of one of its processes
	capable bool   // a process there has CAP_NET_RAW or CAP_NET_ADMIN in its bounding set
}

// NewTrustScanner returns a TrustScanner reading procRoot (/proc).
func NewTrustScanner(l *l7.L7, procRoot string) *TrustScanner {
	return &TrustScanner{l7: l, proc: procRoot, interval: time.Second, trusted: -1, lost: map[nsID]int{}, cookies: netnsCookies{}}
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
	namespaces := scanNetns(s.proc)
	s.cookies.keep(func(id nsID) bool { _, alive := namespaces[id]; return alive })
	cookies := map[uint64]bool{}
	for id, ns := range namespaces {
		if ns.capable {
			continue
		}
		c, err := s.cookies.of(id, ns.path)
		if err != nil {
			continue // the namespace's last process is gone
		}
		cookies[c] = true
		s.lost[id] = 0
	}
	if err := s.l7.SetTrustedNetns(cookies); err != nil {
		log.FromContext(ctx).Error(err, "update the network namespaces trusted for judging at source")
		return
	}
	if len(cookies) != s.trusted {
		s.trusted = len(cookies)
		log.FromContext(ctx).Info("network namespaces trusted for judging HTTP at source", "count", s.trusted)
	}
	for id, n := range s.lost {
		ns, alive := namespaces[id]
		switch {
		case !alive:
			delete(s.lost, id)
		case !ns.capable:
		case n == 0:
			s.lost[id] = 1 // untrusted for new connections; wait a scan
		default:
			delete(s.lost, id)
			if err := s.l7.ResetAtSource(ns.path); err != nil {
				log.FromContext(ctx).Error(err, "reset connections judged at source", "netns", ns.path)
				continue
			}
			log.FromContext(ctx).Info("a process that can hold CAP_NET_RAW or CAP_NET_ADMIN stays in a namespace judged at source: its connections judged there are reset", "netns", ns.path)
		}
	}
}

// scanNetns reads every process's network namespace and capability bounding set under procRoot.
func scanNetns(procRoot string) map[nsID]netnsInfo {
	out := map[nsID]netnsInfo{}
	entries, err := os.ReadDir(procRoot)
	if err != nil {
		return out
	}
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		p := filepath.Join(procRoot, e.Name(), "ns", "net")
		id, err := netnsID(p)
		if err != nil {
			continue // gone, or a zombie
		}
		bnd, ok := capBnd(filepath.Join(procRoot, e.Name(), "status"))
		if !ok {
			continue
		}
		capable := bnd&(1<<capNetRaw|1<<capNetAdmin) != 0
		if ns, seen := out[id]; !seen {
			out[id] = netnsInfo{path: p, capable: capable}
		} else if capable && !ns.capable {
			ns.capable = true
			out[id] = ns
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
