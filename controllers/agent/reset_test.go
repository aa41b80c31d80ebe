package agent

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/portcullis-dev/portcullis/internal/l7"
)

// fakeResetKernel counts sweeps and serves a denied-connections count the test sets.
type fakeResetKernel struct {
	mu      sync.Mutex
	denied  uint64
	sweeps  int
	holding bool
}

func (f *fakeResetKernel) ResetDenied(string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sweeps++
	return nil
}

func (f *fakeResetKernel) Holding() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.holding
}

func (f *fakeResetKernel) SweepCount() (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.denied, nil
}

func (f *fakeResetKernel) swept() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sweeps
}

// A deny that reported no request (only the kernel's denied-connections counter moved) is swept
// within a period, once; without one, periods pass without a sweep.
func TestResetterSweepsWhenTheKernelDeniedWithoutAnEvent(t *testing.T) {
	k := &fakeResetKernel{denied: 7}
	r := newResetter(k, "")
	r.namespaces = func(string) []string { return []string{"/proc/1/ns/net"} }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- r.run(ctx, 5*time.Millisecond) }()
	defer func() {
		cancel()
		<-done
	}()

	time.Sleep(50 * time.Millisecond) // ten periods
	if n := k.swept(); n != 0 {
		t.Fatalf("%d sweeps with nothing denied since the start, want 0", n)
	}
	k.mu.Lock()
	k.denied = 8
	k.mu.Unlock()
	deadline := time.Now().Add(5 * time.Second)
	for k.swept() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no sweep after the kernel denied a connection")
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	if n := k.swept(); n != 1 {
		t.Fatalf("%d sweeps for one deny, want 1", n)
	}
	r.Notify(l7.ResponseReset) // a deny answered with a reset: swept at once
	deadline = time.Now().Add(5 * time.Second)
	for k.swept() < 2 {
		if time.Now().After(deadline) {
			t.Fatal("no sweep after Notify")
		}
		time.Sleep(time.Millisecond)
	}
}
