package datapath

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portcullis-dev/portcullis/internal/netns"
)

// ipCmd runs an iproute2 command and fails the test on error.
func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// newNetns creates a named network namespace that is deleted (with its interfaces) when the test ends.
func newNetns(t *testing.T, name string) {
	t.Helper()
	ipCmd(t, "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("delete netns %s: %v: %s", name, err, out)
		}
	})
}

// inNetns runs fn on a locked OS thread switched into the named network namespace. Sockets fn creates
// belong to that namespace for their whole life, whichever thread uses them later.
func inNetns(t *testing.T, name string, fn func()) {
	t.Helper()
	if err := netns.Do("/run/netns/"+name, func() error { fn(); return nil }); err != nil {
		t.Fatal(err)
	}
}

// mountBPFFS mounts a private bpffs for the test (the machine's /sys/fs/bpf may be absent or shared).
func mountBPFFS(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount bpffs %s: %v", dir, err)
		}
	})
	return dir
}

// echoTCP serves a TCP echo on ln until it is closed.
func echoTCP(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			io.Copy(c, c)
		}()
	}
}

// echoUDP echoes datagrams on pc until it is closed.
func echoUDP(pc net.PacketConn) {
	buf := make([]byte, 1500)
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		pc.WriteTo(buf[:n], addr)
	}
}

func tcpRoundTrip(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	buf := make([]byte, 4)
	_, err = io.ReadFull(c, buf)
	return err
}

func udpRoundTrip(addr string) error {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	buf := make([]byte, 4)
	_, err = c.Read(buf)
	return err
}

// Two namespaces joined by a veth pair stand for a pod and its node; the programs are attached with tcx
// to the node-side end, as the agent does.
func TestPrivilegedRealTrafficThroughVeth(t *testing.T) {
	requirePrivileged(t)
	suffix := fmt.Sprintf("%d", os.Getpid())
	pod, node := "pc-pod-"+suffix, "pc-node-"+suffix
	newNetns(t, pod)
	newNetns(t, node)
	ipCmd(t, "-n", pod, "link", "add", "eth0", "type", "veth", "peer", "name", "hveth", "netns", node)
	ipCmd(t, "-n", pod, "addr", "add", "10.99.0.1/24", "dev", "eth0")
	ipCmd(t, "-n", pod, "link", "set", "eth0", "up")
	ipCmd(t, "-n", pod, "link", "set", "lo", "up")
	ipCmd(t, "-n", node, "addr", "add", "10.99.0.2/24", "dev", "hveth")
	ipCmd(t, "-n", node, "link", "set", "hveth", "up")
	ipCmd(t, "-n", node, "link", "set", "lo", "up")

	var ifindex int
	inNetns(t, node, func() {
		iface, err := net.InterfaceByName("hveth")
		if err != nil {
			t.Fatalf("hveth: %v", err)
		}
		ifindex = iface.Index
	})

	const nodeID, podIdent = Identity(2001), Identity(1000)
	ep := Endpoint{ID: 7, Identity: podIdent, IngressEnforced: true, EgressEnforced: true}
	state := State{
		Endpoints: map[int]Endpoint{ifindex: ep},
		IPCache: map[netip.Prefix]Identity{
			netip.MustParsePrefix("10.99.0.1/32"): podIdent,
			netip.MustParsePrefix("10.99.0.2/32"): nodeID,
		},
		Policy: map[PolicyKey]PolicyEntry{
			{EndpointID: 7, Direction: Egress, PeerIdentity: nodeID, Protocol: ProtocolTCP, Port: 8080}: allow(11),
			{EndpointID: 7, Direction: Egress, PeerIdentity: nodeID, Protocol: ProtocolUDP, Port: 5353}: allow(12),
		},
	}

	pinDir := mountBPFFS(t) + "/portcullis"
	d, err := Load(Options{PinDir: pinDir})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			d.Detach(ifindex)
			d.Close()
		}
	})
	if _, err := d.Converge(state); err != nil {
		t.Fatalf("Converge: %v", err)
	}
	inNetns(t, node, func() {
		if err := d.Attach(ifindex); err != nil {
			t.Fatalf("Attach: %v", err)
		}
	})

	ctx, cancel := context.WithCancel(context.Background())
	var (
		flowsMu sync.Mutex
		flows   []Flow
		readErr error
		readers sync.WaitGroup
	)
	readers.Add(1)
	go func() {
		defer readers.Done()
		for f, err := range d.ReadFlows(ctx) {
			if err != nil {
				readErr = err
				return
			}
			flowsMu.Lock()
			flows = append(flows, f)
			flowsMu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); readers.Wait() })

	// Servers on the node side (8080 and 5353 allowed, 8081 and 5354 not) and one in the pod.
	var closers []io.Closer
	t.Cleanup(func() {
		for _, c := range closers {
			c.Close()
		}
	})
	inNetns(t, node, func() {
		for _, port := range []string{"8080", "8081"} {
			ln, err := net.Listen("tcp4", "10.99.0.2:"+port)
			if err != nil {
				t.Fatal(err)
			}
			closers = append(closers, ln)
			go echoTCP(ln)
		}
		for _, port := range []string{"5353", "5354"} {
			pc, err := net.ListenPacket("udp4", "10.99.0.2:"+port)
			if err != nil {
				t.Fatal(err)
			}
			closers = append(closers, pc)
			go echoUDP(pc)
		}
	})
	inNetns(t, pod, func() {
		ln, err := net.Listen("tcp4", "10.99.0.1:9090")
		if err != nil {
			t.Fatal(err)
		}
		closers = append(closers, ln)
		go echoTCP(ln)
	})

	type probe struct {
		name  string
		from  string
		try   func() error
		allow bool
	}
	probes := []probe{
		{"tcp to an allowed port", pod, func() error { return tcpRoundTrip("10.99.0.2:8080") }, true},
		{"tcp to another port", pod, func() error { return tcpRoundTrip("10.99.0.2:8081") }, false},
		{"udp to an allowed port", pod, func() error { return udpRoundTrip("10.99.0.2:5353") }, true},
		{"udp to another port", pod, func() error { return udpRoundTrip("10.99.0.2:5354") }, false},
		{"tcp into the pod under default-deny ingress", node, func() error { return tcpRoundTrip("10.99.0.1:9090") }, false},
	}
	check := func(phase string) {
		t.Helper()
		for _, p := range probes {
			var err error
			inNetns(t, p.from, func() { err = p.try() })
			if p.allow && err != nil {
				t.Errorf("%s: %s: want success, got %v", phase, p.name, err)
			}
			if !p.allow && err == nil {
				t.Errorf("%s: %s: want it blocked, it went through", phase, p.name)
			}
			var ne net.Error
			if !p.allow && err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
				t.Errorf("%s: %s: want a timeout (silent drop), got %v", phase, p.name, err)
			}
		}
	}
	check("attached")

	// The agent goes away: pinned links and maps keep enforcing.
	if err := d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	closed = true
	cancel()
	readers.Wait()
	if readErr != nil {
		t.Errorf("ReadFlows: %v", readErr)
	}
	check("agent stopped")

	// A new agent adopts maps and links: converging the same state changes nothing, and re-attaching
	// replaces the programs in place.
	d2, err := LoadPinned(pinDir, Options{})
	if err != nil {
		t.Fatalf("LoadPinned: %v", err)
	}
	t.Cleanup(func() { d2.Close() })
	if got := d2.Attached(); len(got) != 1 || got[0] != ifindex {
		t.Errorf("adopted links for %v, want [%d]", got, ifindex)
	}
	ch, err := d2.Converge(state)
	if err != nil {
		t.Fatalf("Converge after restart: %v", err)
	}
	if !ch.Empty() {
		t.Errorf("Converge after restart changed %v, want nothing", ch)
	}
	inNetns(t, node, func() {
		if err := d2.Attach(ifindex); err != nil {
			t.Fatalf("re-Attach: %v", err)
		}
	})
	check("agent restarted")

	// Detach removes enforcement and the link pins.
	if err := d2.Detach(ifindex); err != nil {
		t.Fatalf("Detach: %v", err)
	}
	if entries, _ := os.ReadDir(pinDir + "/links"); len(entries) != 0 {
		t.Errorf("link pins left after Detach: %v", entries)
	}
	var err8081 error
	inNetns(t, pod, func() { err8081 = tcpRoundTrip("10.99.0.2:8081") })
	if err8081 != nil {
		t.Errorf("after Detach: tcp to 8081: %v, want success", err8081)
	}
	if err := d2.Unpin(); err != nil {
		t.Errorf("Unpin: %v", err)
	}

	flowsMu.Lock()
	defer flowsMu.Unlock()
	var sawAllowed, sawDropped bool
	for _, f := range flows {
		if f.DstPort == 8080 && f.Verdict == Forwarded && f.Reason == ReasonAllowed && f.PolicyID == 11 &&
			f.Direction == Egress && f.SrcIdentity == podIdent && f.DstIdentity == nodeID && f.Ifindex == ifindex {
			sawAllowed = true
		}
		if f.DstPort == 8081 && f.Verdict == Dropped && f.Reason == ReasonNoPolicy && f.EndpointID == 7 {
			sawDropped = true
		}
	}
	if !sawAllowed || !sawDropped {
		t.Errorf("ReadFlows: allowed 8080 event %v, dropped 8081 event %v; flows %+v", sawAllowed, sawDropped, flows)
	}
}

func TestPrivilegedLoadExplainsMissingBPFFS(t *testing.T) {
	requirePrivileged(t)
	_, err := Load(Options{PinDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "not on a bpffs mount") {
		t.Fatalf("Load on a tmpfs pin dir: %v, want an error naming bpffs", err)
	}
	_, err = LoadPinned(mountBPFFS(t), Options{})
	if err == nil || !strings.Contains(err.Error(), "is not pinned") {
		t.Fatalf("LoadPinned on an empty bpffs: %v, want an error naming the missing pin", err)
	}
}

func TestPrivilegedConvergeWritesOnlyDifferences(t *testing.T) {
	d := mustLoad(t, Options{})
	state := State{
		Endpoints: map[int]Endpoint{loIfindex: enforcedEndpoint()},
		IPCache:   testIPCache(),
		Policy: map[PolicyKey]PolicyEntry{
			egressKey(idA, ProtocolTCP, 0):          allow(1),
			egressKey(IdentityAny, ProtocolTCP, 22): deny(2),
		},
	}
	ch, err := d.Converge(state)
	if err != nil {
		t.Fatal(err)
	}
	want := Changes{Endpoints: MapChanges{Added: 1}, IPCache: MapChanges{Added: 5}, Policy: MapChanges{Added: 3}}
	if ch != want {
		t.Errorf("first Converge: %v, want %v", ch, want)
	}
	if ch, err = d.Converge(state); err != nil || !ch.Empty() {
		t.Errorf("second Converge: %v, %v; want no changes", ch, err)
	}
	// Drift: someone deletes an entry and edits another; Converge repairs exactly that.
	if _, err := d.DeletePolicy(egressKey(idA, ProtocolTCP, 22)); err != nil {
		t.Fatal(err)
	}
	if _, err := d.SetIdentity(netip.MustParsePrefix("10.0.1.1/32"), 9); err != nil {
		t.Fatal(err)
	}
	ch, err = d.Converge(state)
	want = Changes{IPCache: MapChanges{Updated: 1}, Policy: MapChanges{Added: 1}}
	if err != nil || ch != want {
		t.Errorf("repairing Converge: %v, %v; want %v", ch, err, want)
	}
	// Removing the deny removes the derived entry too.
	delete(state.Policy, egressKey(IdentityAny, ProtocolTCP, 22))
	delete(state.IPCache, netip.MustParsePrefix("fd00:1::/64"))
	ch, err = d.Converge(state)
	// The endpoint changes too: without deny entries its egress no longer needs deny lookups.
	want = Changes{Endpoints: MapChanges{Updated: 1}, IPCache: MapChanges{Deleted: 1}, Policy: MapChanges{Deleted: 2}}
	if err != nil || ch != want {
		t.Errorf("shrinking Converge: %v, %v; want %v", ch, err, want)
	}
	got, err := d.Policy()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[egressKey(idA, ProtocolTCP, 0)] != allow(1) {
		t.Errorf("policy map %v, want only the allow", got)
	}
	ipc, err := d.IPCache()
	if err != nil {
		t.Fatal(err)
	}
	if ipc[netip.MustParsePrefix("10.0.2.0/24")] != idB || len(ipc) != 4 {
		t.Errorf("ip cache %v", ipc)
	}
	// Setters are idempotent.
	if _, err := d.SetEndpoint(loIfindex, enforcedEndpoint()); err != nil {
		t.Fatal(err)
	}
	if changed, err := d.SetEndpoint(loIfindex, enforcedEndpoint()); err != nil || changed {
		t.Errorf("SetEndpoint of the same value: changed=%v err=%v", changed, err)
	}
	if changed, err := d.SetPolicy(egressKey(idA, ProtocolTCP, 0), allow(1)); err != nil || changed {
		t.Errorf("SetPolicy of the same value: changed=%v err=%v", changed, err)
	}
}
