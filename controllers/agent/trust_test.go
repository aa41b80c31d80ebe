package agent

import (
	"context"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/portcullis-dev/portcullis/internal/netns"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("privileged test cannot run: not root (CI=true)")
		}
		t.Skip("needs root")
	}
}

// A network namespace is trusted for judging at source while every process in it has a bounding set
// without CAP_NET_RAW and CAP_NET_ADMIN, and stops being trusted when one with them joins.
func TestPrivilegedTrustFollowsTheBoundingSetsOfANamespacesProcesses(t *testing.T) {
	requireRoot(t)
	ns, id := testNetns(t, "pcl-trust-")
	trusted := func() bool {
		info, ok := scanNetns("/proc")[id]
		return ok && !info.capable
	}
	// A namespace nobody is in is not listed (its cookie could not be read from a process).
	if trusted() {
		t.Fatal("an empty namespace is trusted")
	}
	startProcess(t, "setpriv", "--bounding-set", "-net_raw,-net_admin", "--", "nsenter", "--net=/run/netns/"+ns, "--", "sleep", "60")
	waitTrust(t, trusted, true, "a namespace whose only process cannot gain CAP_NET_RAW or CAP_NET_ADMIN")
	startProcess(t, "nsenter", "--net=/run/netns/"+ns, "--", "sleep", "60")
	waitTrust(t, trusted, false, "a namespace with a process that can hold CAP_NET_RAW")
	var self syscall.Stat_t
	if err := syscall.Stat("/proc/self/ns/net", &self); err != nil {
		t.Fatal(err)
	}
	if info := scanNetns("/proc")[nsID{uint64(self.Dev), self.Ino}]; !info.capable {
		t.Fatal("the node's own namespace is trusted")
	}
}

// testNetns creates a network namespace for the test (removed when it ends) and returns its name
// and identity.
func testNetns(t *testing.T, prefix string) (string, nsID) {
	t.Helper()
	ns := prefix + strconv.Itoa(os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del: %v: %s", err, out)
		}
	})
	var st syscall.Stat_t
	if err := syscall.Stat("/run/netns/"+ns, &st); err != nil {
		t.Fatal(err)
	}
	return ns, nsID{uint64(st.Dev), st.Ino}
}

// startProcess starts argv, killed (by its PID) when the test ends.
func startProcess(t *testing.T, argv ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	if err := cmd.Start(); err != nil {
		t.Fatalf("%v: %v", argv, err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() {
		_ = syscall.Kill(pid, syscall.SIGKILL) // only the process this test started, by its PID
		_ = cmd.Wait()
	})
	return cmd
}

func waitTrust(t *testing.T, trusted func() bool, want bool, what string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for trusted() != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s: trusted = %v, want %v", what, !want, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fakeKernel records what a TrustScanner asks of the kernel.
type fakeKernel struct {
	trusted map[uint64]bool
	resets  []string
}

func (f *fakeKernel) SetTrustedNetns(c map[uint64]bool) error { f.trusted = c; return nil }
func (f *fakeKernel) ResetAtSource(p string) error            { f.resets = append(f.resets, p); return nil }

// A trusted namespace that gets a capable process is untrusted at once, and its connections judged
// at source are reset only if that process is still there one scan later.
func TestPrivilegedTrustScannerResetsOnlyAPersistentLossOfTrust(t *testing.T) {
	requireRoot(t)
	ns, id := testNetns(t, "pcl-trust2-")
	cookie, err := netns.Cookie("/run/netns/" + ns)
	if err != nil {
		t.Fatal(err)
	}
	k := &fakeKernel{}
	s := &TrustScanner{l7: k, proc: "/proc", trusted: -1, lost: map[nsID]int{}, cookies: map[nsID]uint64{}}
	ctx := context.Background()
	startProcess(t, "setpriv", "--bounding-set", "-net_raw,-net_admin", "--", "nsenter", "--net=/run/netns/"+ns, "--", "sleep", "60")
	waitTrust(t, func() bool { s.scan(ctx); return k.trusted[cookie] }, true, "the restricted namespace")

	// A capable process that comes and goes between two scans: untrusted, not reset.
	transient := startProcess(t, "nsenter", "--net=/run/netns/"+ns, "--", "sleep", "60")
	waitTrust(t, func() bool { s.scan(ctx); return k.trusted[cookie] }, false, "with a capable process")
	_ = syscall.Kill(transient.Process.Pid, syscall.SIGKILL)
	_ = transient.Wait()
	waitTrust(t, func() bool { s.scan(ctx); return k.trusted[cookie] }, true, "once the capable process is gone")
	if len(k.resets) != 0 {
		t.Fatalf("reset %v after a capable process that did not stay", k.resets)
	}

	// One that stays: reset at the second scan that finds it.
	startProcess(t, "nsenter", "--net=/run/netns/"+ns, "--", "sleep", "60")
	waitTrust(t, func() bool { s.scan(ctx); return k.trusted[cookie] }, false, "with a capable process that stays")
	if len(k.resets) != 0 {
		t.Fatalf("reset %v at the first scan", k.resets)
	}
	s.scan(ctx)
	if len(k.resets) != 1 {
		t.Fatalf("resets %v, want one at the second scan", k.resets)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(k.resets[0], &st); err != nil || (nsID{uint64(st.Dev), st.Ino}) != id {
		t.Fatalf("reset %s, not the namespace that lost its trust", k.resets[0])
	}
	s.scan(ctx)
	if len(k.resets) != 1 {
		t.Fatalf("resets %v: want a single reset", k.resets)
	}
}
