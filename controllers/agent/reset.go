package agent

import (
	"bufio"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/portcullis-dev/portcullis/internal/l7"
)

// answerGrace is how long the kernel leaves a connection answered with 403 for its client to close
// (ANSWER_GRACE_NS in bpf/http.c); sweeps continue a little longer than that after a 403.
const answerGrace = 2 * time.Second

// Resetter resets denied HTTP connections with the kernel's l7_reset socket iterator, which must be
// read inside each pod's network namespace: at once after a denied request that could not be
// answered with 403 (the client would otherwise wait for its timeout), and, while connections
// answered with 403 may still be open, once a second (a client that ignores Connection: close is
// reset once the grace is over), once a second while an incomplete header block is held (one
// held longer than l7.Options.HoldMax is denied and reset), and within a second of a deny that
// reported no request (urgent data, a segment direct delivery could not cut: the kernel's
// denied-connections counter moved). The same iterator hands to their socket the connections judged
// before TCP whose segments came past l7_fast (its fast-unstamped counter moved): a sweep within a
// second. It is a manager Runnable.
type Resetter struct {
	l7         resetKernel
	cgroupRoot string
	kick       chan struct{}
	namespaces func(cgroupRoot string) []string // podNetns; a test's own list

	mu            sync.Mutex
	answeredUntil time.Time
	sweepCount    uint64 // l7.L7.SweepCount at the last sweep
}

// resetKernel is what the Resetter needs of *l7.L7.
type resetKernel interface {
	ResetDenied(netnsPath string) error
	Holding() bool
	SweepCount() (uint64, error)
}

// NewResetter returns a Resetter for the pods whose processes live under cgroupRoot (the cgroup the
// HTTP programs are attached to).
func NewResetter(l *l7.L7, cgroupRoot string) *Resetter {
	return newResetter(l, cgroupRoot)
}

func newResetter(k resetKernel, cgroupRoot string) *Resetter {
	r := &Resetter{l7: k, cgroupRoot: cgroupRoot, kick: make(chan struct{}, 1), namespaces: podNetns}
	r.sweepCount, _ = k.SweepCount()
	return r
}

// Notify tells the Resetter how a denied request was answered.
func (r *Resetter) Notify(resp l7.Response) {
	if resp == l7.ResponseForbidden {
		r.mu.Lock()
		r.answeredUntil = time.Now().Add(answerGrace + 2*time.Second)
		r.mu.Unlock()
		return
	}
	select {
	case r.kick <- struct{}{}:
	default: // a sweep is already due
	}
}

// Start sweeps until ctx ends.
func (r *Resetter) Start(ctx context.Context) error {
	return r.run(ctx, time.Second)
}

func (r *Resetter) run(ctx context.Context, period time.Duration) error {
	tick := time.NewTicker(period)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-r.kick:
			r.sweepCountMoved() // this sweep covers the denies counted so far
		case <-tick.C:
			moved := r.sweepCountMoved()
			r.mu.Lock()
			due := time.Now().Before(r.answeredUntil)
			r.mu.Unlock()
			if !due && !moved && !r.l7.Holding() {
				continue
			}
		}
		for _, ns := range r.namespaces(r.cgroupRoot) {
			if err := r.l7.ResetDenied(ns); err != nil {
				log.FromContext(ctx).V(1).Info("reset denied connections", "netns", ns, "error", err.Error())
			}
		}
	}
}

// sweepCountMoved reports whether the kernel denied a connection, or got a segment of a connection
// judged before TCP past l7_fast, since it was last asked (l7.L7.SweepCount).
func (r *Resetter) sweepCountMoved() bool {
	n, err := r.l7.SweepCount()
	if err != nil {
		return true // sweep: a sweep too many costs little
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	moved := n != r.sweepCount
	r.sweepCount = n
	return moved
}

// podNetns returns one /proc/PID/ns/net path for each network namespace that a process under
// cgroupRoot is in.
func podNetns(cgroupRoot string) []string {
	var out []string
	for _, ns := range podNamespaces(cgroupRoot) {
		out = append(out, ns.path)
	}
	return out
}

// podNS is one network namespace of podNamespaces: its identity and a path to it.
type podNS struct {
	id   nsID
	path string
}

// podNamespaces is podNetns with each namespace's identity.
func podNamespaces(cgroupRoot string) []podNS {
	seen := map[nsID]bool{}
	var out []podNS
	_ = filepath.WalkDir(cgroupRoot, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		f, err := os.Open(filepath.Join(path, "cgroup.procs"))
		if err != nil {
			return nil
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			p := "/proc/" + strings.TrimSpace(sc.Text()) + "/ns/net"
			id, err := netnsID(p)
			if err != nil {
				continue // the process is gone
			}
			if !seen[id] {
				seen[id] = true
				out = append(out, podNS{id, p})
			}
		}
		return nil
	})
	return out
}
