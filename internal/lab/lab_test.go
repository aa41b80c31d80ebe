package lab

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// helperEnv makes the test binary act as the lab helper (serve, probe) when the lab re-executes it.
const helperEnv = "PORTCULLIS_LAB_TEST_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		if err := Main(os.Args[1:]); err != nil {
			fmt.Fprintln(os.Stderr, "lab helper:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// requirePrivileged skips a test when not root, and fails it instead under CI.
func requirePrivileged(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("privileged test cannot run: not root (CI=true requires it)")
	}
	t.Skip("privileged test: needs root")
}

const testTopology = `
nodes:
- name: node-a
  podCIDRv4: 10.0.1.0/24
  podCIDRv6: fd00:10:1::/64
- name: node-b
  podCIDRv4: 10.0.2.0/24
  podCIDRv6: fd00:10:2::/64
namespaces:
- name: production
  labels: {env: prod}
pods:
- {namespace: production, name: client, node: node-a, labels: {app: client}, ports: [{name: echo, port: 5353, protocol: UDP}]}
- namespace: production
  name: web
  node: node-a
  labels: {app: web}
  ports: [{name: http, port: 8080}, {name: echo, port: 5353, protocol: UDP}]
- namespace: production
  name: api
  node: node-b
  labels: {app: api}
  ipv4: 10.0.2.42
  ports: [{name: http, port: 8080}, {name: metrics, port: 9090}, {name: echo, port: 5353, protocol: UDP}]
externalHosts:
- name: world
  ipv4: 198.51.100.10
  ipv6: 2001:db8:100::10
`

// testOptions returns options with a prefix of the test's own, so that concurrent runs never meet, and
// the test binary as the helper.
func testOptions(t *testing.T) Options {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return Options{
		Prefix:     fmt.Sprintf("pt%04x-", rand.IntN(1<<16)),
		Binary:     exe,
		BinaryArgs: []string{},
		Env:        []string{helperEnv + "=1"},
	}
}

// upLab brings up the test topology and registers its removal.
func upLab(t *testing.T, opts Options) *Lab {
	t.Helper()
	topo, err := ParseTopology([]byte(testTopology))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	l, err := Up(ctx, topo, opts)
	t.Cleanup(func() { _ = Cleanup(opts.Prefix) })
	if err != nil {
		t.Fatalf("Up: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Down(); err != nil {
			t.Errorf("Down: %v", err)
		}
	})
	t.Logf("lab %s up in %v", opts.Prefix, time.Since(start).Round(time.Millisecond))
	return l
}

func mustIPs(t *testing.T, l *Lab, ref string) Addresses {
	t.Helper()
	a, err := l.PodIPs(ref)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestPrivilegedPodsReachEachOtherAndTheWorldOverBothFamilies(t *testing.T) {
	requirePrivileged(t)
	l := upLab(t, testOptions(t))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	type route struct {
		name     string
		from, to string
		tcpPort  int
	}
	routes := []route{
		{"same node", "production/client", "production/web", 8080},
		{"cross node", "production/client", "production/api", 9090},
		{"cross node back", "production/api", "production/web", 8080},
		{"pod to external host", "production/web", "world", 443},
		{"external host to pod", "world", "production/api", 8080},
	}
	for _, r := range routes {
		to := mustIPs(t, l, r.to)
		for _, ip := range []string{to.IPv4.String(), to.IPv6.String()} {
			t.Run(r.name+" "+ip, func(t *testing.T) {
				path := fmt.Sprintf("/probe/%s/%d", strings.ReplaceAll(r.name, " ", "-"), rand.Int())
				ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
				defer cancel()
				resp, err := l.HTTP(ctx, r.from, ip, r.tcpPort, http.MethodPost, path, http.Header{"X-Test": {"1"}})
				if err != nil {
					t.Fatalf("HTTP: %v", err)
				}
				want := fmt.Sprintf("endpoint=%s method=POST path=%s", r.to, path)
				if resp.Status != http.StatusOK || !strings.Contains(resp.Body, want) {
					t.Fatalf("got %d %q, want 200 with %q", resp.Status, resp.Body, want)
				}
				// The server recorded the request, with the client's own address as the source.
				reqs, err := l.Requests(r.to)
				if err != nil {
					t.Fatal(err)
				}
				from := mustIPs(t, l, r.from)
				var found bool
				for _, q := range reqs {
					if q.Path == path {
						found = true
						src := from.IPv4.String()
						if strings.Contains(ip, ":") {
							src = "[" + from.IPv6.String() + "]"
						}
						if !strings.HasPrefix(q.Remote, src+":") || q.Method != http.MethodPost || q.Header.Get("X-Test") != "1" || q.Port != r.tcpPort {
							t.Errorf("recorded %+v, want a POST from %s on port %d", q, src, r.tcpPort)
						}
					}
				}
				if !found {
					t.Errorf("server of %s did not record %s", r.to, path)
				}

				payload := []byte("hello " + path)
				echo, err := l.UDPEcho(ctx, r.from, ip, 5353, payload)
				if err != nil {
					t.Fatalf("UDPEcho: %v", err)
				}
				if string(echo) != string(payload) {
					t.Fatalf("echo %q, want %q", echo, payload)
				}
			})
		}
	}

	t.Run("refused, timeout and unreachable are told apart", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		_, err := l.HTTP(ctx, "production/client", "production/web", 81, "GET", "/", nil)
		if !errors.Is(err, ErrRefused) {
			t.Errorf("closed port: got %v, want ErrRefused", err)
		}
		_, err = l.UDPEcho(ctx, "production/client", "production/web", 81, []byte("x"))
		if !errors.Is(err, ErrRefused) {
			t.Errorf("closed UDP port: got %v, want ErrRefused", err)
		}
		// A silent drop on the way: a blackhole route in node-b for an address of its range.
		nodeNS := filepath.Base(mustString(t)(l.NodeNetns("node-b")))
		if out, err := exec.Command("ip", "-n", nodeNS, "route", "add", "blackhole", "10.0.2.99/32").CombinedOutput(); err != nil {
			t.Fatalf("add blackhole: %v: %s", err, out)
		}
		short, cancel := context.WithTimeout(ctx, 700*time.Millisecond)
		_, err = l.HTTP(short, "production/client", "10.0.2.99", 80, "GET", "/", nil)
		cancel()
		if !errors.Is(err, ErrTimeout) {
			t.Errorf("dropped SYN: got %v, want ErrTimeout", err)
		}
		// No route at all in the pod's node: the node answers ICMP unreachable.
		_, err = l.HTTP(ctx, "production/client", "203.0.113.1", 80, "GET", "/", nil)
		if !errors.Is(err, ErrUnreachable) {
			t.Errorf("unrouted address: got %v, want ErrUnreachable", err)
		}
	})
}

func mustString(t *testing.T) func(string, error) string {
	return func(s string, err error) string {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
}

func TestPrivilegedPodPlumbingIsWhatTheAgentExpects(t *testing.T) {
	requirePrivileged(t)
	l := upLab(t, testOptions(t))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	for _, ref := range l.Pods() {
		t.Run(ref, func(t *testing.T) {
			ep := l.plan.byRef[ref]
			nodeNS := filepath.Base(mustString(t)(l.NodeNetns(ep.node.Name)))
			ifc, err := l.HostInterface(ref)
			if err != nil {
				t.Fatal(err)
			}
			ips := mustIPs(t, l, ref)
			// The node's route to each pod address leaves through the host-side veth.
			for _, ip := range []string{ips.IPv4.String(), ips.IPv6.String()} {
				out, err := exec.Command("ip", "-n", nodeNS, "-o", "route", "get", ip).CombinedOutput()
				if err != nil {
					t.Fatalf("route get %s: %v: %s", ip, err, out)
				}
				if !strings.Contains(string(out), " dev "+ifc.Name+" ") {
					t.Errorf("route to %s in %s: %s, want dev %s", ip, nodeNS, out, ifc.Name)
				}
			}
			// Stdout only: ip may warn on stderr about peer namespaces another lab is deleting.
			out, err := exec.Command("ip", "-n", nodeNS, "-o", "link", "show", "dev", ifc.Name).Output()
			if err != nil || !strings.HasPrefix(string(out), strconv.Itoa(ifc.Index)+": ") {
				t.Errorf("ifindex of %s: %v %s, want %d", ifc.Name, err, out, ifc.Index)
			}

			// A command run in the pod sees the pod's addresses and runs in the pod's cgroup.
			cg := mustString(t)(l.PodCgroup(ref))
			out, err = l.Exec(ctx, ref, "sh", "-c", "ip -o addr show dev eth0; cat /proc/self/cgroup")
			if err != nil {
				t.Fatal(err)
			}
			rel := strings.TrimPrefix(cg, l.opts.CgroupRoot[:strings.LastIndex(l.opts.CgroupRoot, "/")])
			for _, want := range []string{ips.IPv4.String() + "/32", ips.IPv6.String() + "/128", "0::" + rel} {
				if !strings.Contains(string(out), want) {
					t.Errorf("exec output lacks %q:\n%s", want, out)
				}
			}

			// The server runs in the pod's cgroup and network namespace.
			pids, err := cgroupPIDs(cg)
			if err != nil || len(pids) != 1 {
				t.Fatalf("processes in %s: %v %v, want the server", cg, pids, err)
			}
			nsIno, err := netnsInode(mustString(t)(l.PodNetns(ref)))
			if err != nil {
				t.Fatal(err)
			}
			if got := pidsInNetns(map[uint64]bool{nsIno: true}); len(got) != 1 || got[0] != pids[0] {
				t.Errorf("processes in the pod's network namespace: %v, want the server %d", got, pids[0])
			}

			// InPod switches only this thread, and back.
			before, _ := os.Readlink("/proc/thread-self/ns/net")
			var inside string
			if err := l.InPod(ref, func() error {
				inside, _ = os.Readlink("/proc/thread-self/ns/net")
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			after, _ := os.Readlink("/proc/thread-self/ns/net")
			if inside != fmt.Sprintf("net:[%d]", nsIno) || before == inside || after != before {
				t.Errorf("InPod namespaces: before %s inside %s after %s, want inside net:[%d]", before, inside, after, nsIno)
			}
		})
	}

	for _, node := range []string{"node-a", "node-b"} {
		for _, dir := range []string{mustString(t)(l.NodeCgroup(node)), mustString(t)(l.NodeBPFFS(node))} {
			if st, err := os.Stat(dir); err != nil || !st.IsDir() {
				t.Errorf("node %s: %s: %v", node, dir, err)
			}
		}
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(mustString(t)(l.NodeBPFFS("node-a")), &st); err != nil || st.Type != 0xcafe4a11 {
		t.Errorf("node bpffs directory is not on bpffs: %v type %x", err, st.Type)
	}

	// The request target reaches the server exactly as sent.
	const target = "/v1/invoices/42?full=1&x=%2F"
	if _, err := l.HTTP(ctx, "production/client", "production/api", 8080, "GET", target, nil); err != nil {
		t.Fatal(err)
	}
	reqs, err := l.Requests("production/api")
	if err != nil || len(reqs) == 0 || reqs[len(reqs)-1].Path != target {
		t.Errorf("recorded %+v (%v), want the path %s", reqs, err, target)
	}

	objs := l.Objects()
	if len(objs.Namespaces) != 1 || len(objs.Nodes) != 2 || len(objs.Pods) != 3 {
		t.Fatalf("objects: %d namespaces, %d nodes, %d pods", len(objs.Namespaces), len(objs.Nodes), len(objs.Pods))
	}
	api := objs.Pods[2]
	if api.Spec.NodeName != "node-b" || api.Status.PodIP != "10.0.2.42" || len(api.Status.PodIPs) != 2 ||
		api.Spec.Containers[0].Ports[1].Name != "metrics" || api.Status.Phase != "Running" {
		t.Errorf("pod object: %+v", api)
	}
}

// snapshot lists what a lab with prefix has left on the machine.
func leftoversOf(t *testing.T, opts Options, pids []int) []string {
	t.Helper()
	ps, err := opts.resolve()
	if err != nil {
		t.Fatal(err)
	}
	found := ps.leftovers()
	if _, err := os.Stat(ps.stateDir); err == nil {
		found = append(found, ps.stateDir)
	}
	out, err := exec.Command("ip", "-o", "link", "show").CombinedOutput()
	if err != nil {
		t.Fatalf("ip link: %v: %s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, ": pcl") || strings.Contains(line, ": "+opts.Prefix) {
			found = append(found, "root link "+line)
		}
	}
	for _, pid := range pids {
		if data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && !strings.Contains(string(data), ") Z ") {
			found = append(found, fmt.Sprintf("process %d", pid))
		}
	}
	return found
}

func serverPIDs(l *Lab) []int {
	var pids []int
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.procs {
		pids = append(pids, s.cmd.Process.Pid)
	}
	return pids
}

func TestPrivilegedDownAndCleanupLeaveNothingBehind(t *testing.T) {
	requirePrivileged(t)

	t.Run("down", func(t *testing.T) {
		opts := testOptions(t)
		l := upLab(t, opts)
		pids := serverPIDs(l)
		if len(pids) != 4 {
			t.Fatalf("%d servers, want 4", len(pids))
		}
		if err := l.Down(); err != nil {
			t.Fatal(err)
		}
		if err := l.Down(); err != nil {
			t.Fatalf("second Down: %v", err)
		}
		if left := leftoversOf(t, opts, pids); len(left) > 0 {
			t.Errorf("left behind: %v", left)
		}
	})

	for _, step := range []string{"netns", "fabric", "pods", "servers-half"} {
		t.Run("failed Up at "+step, func(t *testing.T) {
			opts := testOptions(t)
			opts.failAt = step
			topo, err := ParseTopology([]byte(testTopology))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = Cleanup(opts.Prefix) })
			_, err = Up(context.Background(), topo, opts)
			if err == nil || !strings.Contains(err.Error(), "injected failure") {
				t.Fatalf("Up: %v, want the injected failure", err)
			}
			if left := leftoversOf(t, opts, nil); len(left) > 0 {
				t.Errorf("left behind: %v", left)
			}
		})
	}

	t.Run("cleanup after a crash", func(t *testing.T) {
		opts := testOptions(t)
		l := upLab(t, opts)
		pids := serverPIDs(l)
		// Leave a stray process in a pod as a crashed test would, then forget the lab.
		stray := exec.Command("sleep", "60")
		if err := l.startIn(l.plan.byRef["production/web"], stray); err != nil {
			t.Fatal(err)
		}
		go func() { _ = stray.Wait() }()
		pids = append(pids, stray.Process.Pid)

		topo, _ := ParseTopology([]byte(testTopology))
		if _, err := Up(context.Background(), topo, opts); !errors.Is(err, ErrExists) {
			t.Errorf("second Up with the same prefix: %v, want ErrExists", err)
		}
		if err := Cleanup(opts.Prefix); err != nil {
			t.Fatal(err)
		}
		if left := leftoversOf(t, opts, pids); len(left) > 0 {
			t.Errorf("left behind: %v", left)
		}
	})
}
