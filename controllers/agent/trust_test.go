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
	ns := "pcl-trust-" + strconv.Itoa(os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del: %v: %s", err, out)
		}
	})
	var nsStat syscall.Stat_t
	if err := syscall.Stat("/run/netns/"+ns, &nsStat); err != nil {
		t.Fatal(err)
	}
	start := func(argv ...string) {
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
	}
	trusted := func() bool {
		for _, p := range trustedNetns("/proc") {
			var st syscall.Stat_t
			if syscall.Stat(p, &st) == nil && st.Ino == nsStat.Ino && st.Dev == nsStat.Dev {
				return true
			}
		}
		return false
	}
	// A namespace nobody is in is not listed (its cookie could not be read from a process).
	if trusted() {
		t.Fatal("an empty namespace is trusted")
	}
	start("setpriv", "--bounding-set", "-net_raw,-net_admin", "--", "nsenter", "--net=/run/netns/"+ns, "--", "sleep", "60")
	waitTrust(t, trusted, true, "a namespace whose only process cannot gain CAP_NET_RAW or CAP_NET_ADMIN")
	start("nsenter", "--net=/run/netns/"+ns, "--", "sleep", "60")
	waitTrust(t, trusted, false, "a namespace with a process that can hold CAP_NET_RAW")
	for _, p := range trustedNetns("/proc") {
		var st, self syscall.Stat_t
		if syscall.Stat(p, &st) == nil && syscall.Stat("/proc/self/ns/net", &self) == nil && st.Ino == self.Ino {
			t.Fatal("the node's own namespace is trusted")
		}
	}
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
	ns := "pcl-trust2-" + strconv.Itoa(os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del: %v: %s", err, out)
		}
	})
	cookie, err := netns.Cookie("/run/netns/" + ns)
	if err != nil {
		t.Fatal(err)
	}
	var nsStat syscall.Stat_t
	if err := syscall.Stat("/run/netns/"+ns, &nsStat); err != nil {
		t.Fatal(err)
	}
	start := func(argv ...string) *exec.Cmd {
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
	k := &fakeKernel{}
	s := &TrustScanner{l7: k, proc: "/proc", trusted: -1, lost: map[nsID]int{}}
	ctx := context.Background()
	start("setpriv", "--bounding-set", "-net_raw,-net_admin", "--", "nsenter", "--net=/run/netns/"+ns, "--", "sleep", "60")
	waitTrust(t, func() bool { s.scan(ctx); return k.trusted[cookie] }, true, "the restricted namespace")

	// A capable process that comes and goes between two scans: untrusted, not reset.
	transient := start("nsenter", "--net=/run/netns/"+ns, "--", "sleep", "60")
	waitTrust(t, func() bool { s.scan(ctx); return k.trusted[cookie] }, false, "with a capable process")
	_ = syscall.Kill(transient.Process.Pid, syscall.SIGKILL)
	_ = transient.Wait()
	waitTrust(t, func() bool { s.scan(ctx); return k.trusted[cookie] }, true, "once the capable process is gone")
	if len(k.resets) != 0 {
		t.Fatalf("reset %v after a capable process that did not stay", k.resets)
	}

	// One that stays: reset at the second scan that finds it.
	start("nsenter", "--net=/run/netns/"+ns, "--", "sleep", "60")
	waitTrust(t, func() bool { s.scan(ctx); return k.trusted[cookie] }, false, "with a capable process that stays")
	if len(k.resets) != 0 {
		t.Fatalf("reset %v at the first scan", k.resets)
	}
	s.scan(ctx)
	if len(k.resets) != 1 {
		t.Fatalf("resets %v, want one at the second scan", k.resets)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(k.resets[0], &st); err != nil || st.Ino != nsStat.Ino {
		t.Fatalf("reset %s, not the namespace that lost its trust", k.resets[0])
	}
	s.scan(ctx)
	if len(k.resets) != 1 {
		t.Fatalf("resets %v: want a single reset", k.resets)
	}
}
