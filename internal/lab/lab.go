package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-logr/logr"
)

// DefaultPrefix is the default name prefix of the lab's network namespaces and directories.
const DefaultPrefix = "pcl-"

// DefaultBPFFSRoot is the bpffs directory under which each lab keeps its nodes' directories.
const DefaultBPFFSRoot = "/sys/fs/bpf/portcullis-lab"

// gatewayMAC is the MAC address of every host-side pod veth. Pods hold static neighbour entries for both
// gateways with it (for IPv4 this stands in for Calico's proxy ARP); the host side also owns fe80::1 and
// answers NDP for it.
const gatewayMAC = "ee:ee:ee:ee:ee:ee"

// The link-local gateways every pod routes through (as Calico does).
var (
	GatewayIPv4 = netip.MustParseAddr("169.254.1.1")
	GatewayIPv6 = netip.MustParseAddr("fe80::1")
)

// ErrExists is returned by Up when resources of a lab with the same prefix are still present; Cleanup
// removes them.
var ErrExists = errors.New("a lab with this prefix already exists")

var prefixRE = regexp.MustCompile(`^[a-z][a-z0-9]{0,9}-$`)

// Options configure Up. The zero value is usable from the portcullis binary.
type Options struct {
	// Prefix starts the name of every network namespace of the lab and names its cgroup and bpffs
	// directories: a lowercase letter, up to 9 more letters or digits, and a final "-". Default "pcl-".
	// Labs with different prefixes coexist.
	Prefix string
	// Binary is the program run as each pod's server and as the probe behind HTTP and UDPEcho, with
	// BinaryArgs before the "serve" or "probe" argument; it must dispatch them to ServeMain and ProbeMain
	// (Main does). Default: the running executable, with BinaryArgs ["lab"] (portcullis lab serve ...).
	Binary string
	// BinaryArgs come between Binary and the "serve" or "probe" argument. Default ["lab"] when Binary is
	// empty, none otherwise.
	BinaryArgs []string
	// Env is added to the environment of the servers and probes.
	Env []string
	// CgroupRoot is the cgroup v2 directory under which each lab keeps its cgroups. Default:
	// <cgroup v2 mount>/portcullis-lab.
	CgroupRoot string
	// BPFFSRoot is the bpffs directory under which each lab keeps its node directories. Default
	// DefaultBPFFSRoot; bpffs is mounted at /sys/fs/bpf first if it is not mounted.
	BPFFSRoot string
	// StateDir holds the servers' request and output logs. Default /run/portcullis-lab/<prefix name>.
	// Down removes it.
	StateDir string
	// Log receives progress messages; the zero value discards them.
	Log logr.Logger

	// failAt makes Up fail at the named step; for tests of the clean-up after a partial Up.
	failAt string
}

// paths are the directories and names a lab with a given prefix uses.
type paths struct {
	prefix    string
	cgroupDir string // <cgroup root>/<name>
	bpffsDir  string // <bpffs root>/<name>
	stateDir  string
}

func (o *Options) resolve() (paths, error) {
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if !prefixRE.MatchString(o.Prefix) {
		return paths{}, fmt.Errorf("prefix %q: want a lowercase letter, up to 9 letters or digits and a final '-'", o.Prefix)
	}
	name := strings.TrimSuffix(o.Prefix, "-")
	if o.CgroupRoot == "" {
		root, err := cgroup2Root()
		if err != nil {
			return paths{}, err
		}
		o.CgroupRoot = filepath.Join(root, "portcullis-lab")
	}
	if o.BPFFSRoot == "" {
		o.BPFFSRoot = DefaultBPFFSRoot
	}
	if o.StateDir == "" {
		o.StateDir = filepath.Join("/run/portcullis-lab", name)
	}
	if o.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return paths{}, fmt.Errorf("find the lab binary: %w", err)
		}
		o.Binary = exe
		if o.BinaryArgs == nil {
			o.BinaryArgs = []string{"lab"}
		}
	}
	return paths{
		prefix:    o.Prefix,
		cgroupDir: filepath.Join(o.CgroupRoot, name),
		bpffsDir:  filepath.Join(o.BPFFSRoot, name),
		stateDir:  o.StateDir,
	}, nil
}

func (p paths) fabricNetns() string             { return p.prefix + "fabric" }
func (p paths) nodeNetns(node string) string    { return p.prefix + "n-" + node }
func (p paths) podNetns(ns, name string) string { return p.prefix + "p-" + ns + "." + name }
func (p paths) extNetns(name string) string     { return p.prefix + "x-" + name }
func (p paths) nodeCgroup(node string) string   { return filepath.Join(p.cgroupDir, node) }
func (p paths) nodeBPFFS(node string) string    { return filepath.Join(p.bpffsDir, node) }

// ownsNetns tells whether a network namespace name belongs to the lab with this prefix.
func (p paths) ownsNetns(name string) bool {
	rest, ok := strings.CutPrefix(name, p.prefix)
	if !ok {
		return false
	}
	return rest == "fabric" || strings.HasPrefix(rest, "n-") || strings.HasPrefix(rest, "p-") || strings.HasPrefix(rest, "x-")
}

// Lab is a running simulated cluster network. Its methods are safe for concurrent use.
type Lab struct {
	topo  *Topology
	plan  *plan
	opts  Options
	paths paths

	mu       sync.Mutex
	procs    map[string]*server // by endpoint ref
	downOnce sync.Once
	downErr  error
}

// Endpoint state for one running server.
type server struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// Up builds the lab's network for topo and starts a server in every pod and external host; ctx bounds the
// start only. On error it removes whatever it had created. It fails with ErrExists when a lab with the same
// prefix is present. topo must not be changed afterwards.
func Up(ctx context.Context, topo *Topology, opts Options) (*Lab, error) {
	p, err := topo.plan()
	if err != nil {
		return nil, err
	}
	ps, err := opts.resolve()
	if err != nil {
		return nil, err
	}
	if leftovers := ps.leftovers(); len(leftovers) > 0 {
		return nil, fmt.Errorf("%w: prefix %q: %s (remove with Cleanup or `portcullis lab clean`)", ErrExists, ps.prefix, strings.Join(leftovers, ", "))
	}
	l := &Lab{topo: topo, plan: p, opts: opts, paths: ps, procs: map[string]*server{}}
	if err := l.up(ctx); err != nil {
		if derr := l.Down(); derr != nil {
			err = errors.Join(err, fmt.Errorf("clean up after the failed start: %w", derr))
		}
		return nil, err
	}
	return l, nil
}

// leftovers names the resources of a lab with this prefix that exist now.
func (p paths) leftovers() []string {
	var found []string
	if entries, err := os.ReadDir(netnsDir); err == nil {
		for _, e := range entries {
			if p.ownsNetns(e.Name()) {
				found = append(found, filepath.Join(netnsDir, e.Name()))
			}
		}
	}
	for _, d := range []string{p.cgroupDir, p.bpffsDir} {
		if _, err := os.Stat(d); err == nil {
			found = append(found, d)
		}
	}
	return found
}

func (l *Lab) step(name string) error {
	l.opts.Log.V(1).Info("lab step", "step", name, "prefix", l.paths.prefix)
	if l.opts.failAt == name {
		return fmt.Errorf("injected failure at step %q", name)
	}
	return nil
}

func (l *Lab) up(ctx context.Context) error {
	p, ps := l.plan, l.paths

	// Directories: state, cgroups and bpffs.
	if err := l.step("dirs"); err != nil {
		return err
	}
	if err := os.MkdirAll(ps.stateDir, 0o755); err != nil {
		return fmt.Errorf("create state directory: %w", err)
	}
	if err := ensureBPFFS(); err != nil {
		return err
	}
	for _, dir := range []string{ps.cgroupDir, ps.bpffsDir} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("create lab directory: %w", err)
		}
	}
	for _, np := range p.nodes {
		for _, dir := range []string{ps.nodeCgroup(np.node.Name), ps.nodeBPFFS(np.node.Name)} {
			if err := os.Mkdir(dir, 0o755); err != nil {
				return fmt.Errorf("create node %s directory: %w", np.node.Name, err)
			}
		}
		for _, ep := range np.pods {
			if err := os.Mkdir(l.cgroupOf(ep), 0o755); err != nil {
				return fmt.Errorf("create pod %s cgroup: %w", ep.ref, err)
			}
		}
	}
	if len(p.externals) > 0 {
		if err := os.Mkdir(filepath.Join(ps.cgroupDir, "_external"), 0o755); err != nil {
			return fmt.Errorf("create external hosts' cgroup: %w", err)
		}
		for _, ep := range p.externals {
			if err := os.Mkdir(l.cgroupOf(ep), 0o755); err != nil {
				return fmt.Errorf("create external host %s cgroup: %w", ep.ref, err)
			}
		}
	}

	// Network namespaces, all in one ip run, then the sysctls that must precede any link.
	if err := l.step("netns"); err != nil {
		return err
	}
	all := []string{ps.fabricNetns()}
	for _, np := range p.nodes {
		all = append(all, ps.nodeNetns(np.node.Name))
	}
	for _, ep := range p.pods {
		all = append(all, l.netnsOf(ep))
	}
	for _, ep := range p.externals {
		all = append(all, l.netnsOf(ep))
	}
	var lines []string
	for _, ns := range all {
		lines = append(lines, "netns add "+ns)
	}
	if err := ipBatch(ctx, "", lines); err != nil {
		return err
	}
	// New links take the "default" settings: no duplicate address detection, so that IPv6 addresses
	// work at once. Nodes forward both families.
	base := [][2]string{
		{"net/ipv6/conf/all/accept_dad", "0"}, {"net/ipv6/conf/default/accept_dad", "0"},
		{"net/ipv6/conf/all/disable_ipv6", "0"}, {"net/ipv6/conf/default/disable_ipv6", "0"},
	}
	forward := append(slices.Clone(base), [2]string{"net/ipv4/ip_forward", "1"}, [2]string{"net/ipv6/conf/all/forwarding", "1"})
	for _, ns := range all {
		kv := base
		if strings.HasPrefix(ns, ps.prefix+"n-") {
			kv = forward
		}
		if err := writeSysctls(filepath.Join(netnsDir, ns), kv); err != nil {
			return fmt.Errorf("network namespace %s: %w", ns, err)
		}
	}

	// The fabric: a bridge with one veth per node and external host.
	if err := l.step("fabric"); err != nil {
		return err
	}
	lines = []string{
		"link set lo up",
		"link add br0 type bridge mcast_snooping 0",
		"link set br0 up",
	}
	attach := func(port, peerNetns string) {
		lines = append(lines,
			fmt.Sprintf("link add %s type veth peer name eth0 netns %s", port, peerNetns),
			fmt.Sprintf("link set %s master br0", port),
			fmt.Sprintf("link set %s up", port))
	}
	for i, np := range p.nodes {
		attach(fmt.Sprintf("n%d", i), ps.nodeNetns(np.node.Name))
	}
	for i, ep := range p.externals {
		attach(fmt.Sprintf("x%d", i), l.netnsOf(ep))
	}
	if err := ipBatch(ctx, ps.fabricNetns(), lines); err != nil {
		return err
	}

	// Nodes: fabric addresses, routes to the other nodes' pods and to the external hosts, and one veth
	// and one /32 and /128 route per local pod.
	if err := l.step("nodes"); err != nil {
		return err
	}
	for _, np := range p.nodes {
		lines = []string{
			"link set lo up",
			"link set eth0 up",
			fmt.Sprintf("addr add %s/%d dev eth0", np.fabric4, p.fabric4.Bits()),
			fmt.Sprintf("addr add %s/%d dev eth0 nodad", np.fabric6, p.fabric6.Bits()),
		}
		for _, other := range p.nodes {
			if other == np {
				continue
			}
			lines = append(lines,
				fmt.Sprintf("route add %s via %s dev eth0", other.node.PodCIDRv4, other.fabric4),
				fmt.Sprintf("route add %s via %s dev eth0", other.node.PodCIDRv6, other.fabric6))
		}
		for _, x := range p.externals {
			lines = append(lines,
				fmt.Sprintf("route add %s/32 via %s dev eth0", x.ipv4, x.fabric4),
				fmt.Sprintf("route add %s/128 via %s dev eth0", x.ipv6, x.fabric6))
		}
		for _, ep := range np.pods {
			lines = append(lines,
				fmt.Sprintf("link add %s address %s type veth peer name eth0 netns %s", ep.hostIf, gatewayMAC, l.netnsOf(ep)),
				fmt.Sprintf("link set %s up", ep.hostIf),
				fmt.Sprintf("addr add %s/64 dev %s nodad", GatewayIPv6, ep.hostIf),
				fmt.Sprintf("route add %s/32 dev %s scope link", ep.ipv4, ep.hostIf),
				fmt.Sprintf("route add %s/128 dev %s", ep.ipv6, ep.hostIf))
		}
		if err := ipBatch(ctx, ps.nodeNetns(np.node.Name), lines); err != nil {
			return err
		}
	}

	// Pods: addresses as /32 and /128, a default route via the link-local gateway.
	if err := l.step("pods"); err != nil {
		return err
	}
	for _, ep := range p.pods {
		lines = []string{
			"link set lo up",
			"link set eth0 up",
			fmt.Sprintf("addr add %s/32 dev eth0", ep.ipv4),
			fmt.Sprintf("addr add %s/128 dev eth0 nodad", ep.ipv6),
			fmt.Sprintf("neigh replace %s lladdr %s dev eth0 nud permanent", GatewayIPv4, gatewayMAC),
			fmt.Sprintf("neigh replace %s lladdr %s dev eth0 nud permanent", GatewayIPv6, gatewayMAC),
			fmt.Sprintf("route add %s/32 dev eth0 scope link", GatewayIPv4),
			fmt.Sprintf("route add 0.0.0.0/0 via %s dev eth0", GatewayIPv4),
			fmt.Sprintf("route add ::/0 via %s dev eth0", GatewayIPv6),
		}
		if err := ipBatch(ctx, l.netnsOf(ep), lines); err != nil {
			return err
		}
	}

	// External hosts: a fabric address, their world address, routes to the pods via their nodes.
	for _, x := range p.externals {
		lines = []string{
			"link set lo up",
			"link set eth0 up",
			fmt.Sprintf("addr add %s/%d dev eth0", x.fabric4, p.fabric4.Bits()),
			fmt.Sprintf("addr add %s/%d dev eth0 nodad", x.fabric6, p.fabric6.Bits()),
			fmt.Sprintf("addr add %s/32 dev eth0", x.ipv4),
			fmt.Sprintf("addr add %s/128 dev eth0 nodad", x.ipv6),
		}
		// Traffic from the host, replies included, leaves from its world address, never its fabric one.
		for _, np := range p.nodes {
			lines = append(lines,
				fmt.Sprintf("route add %s via %s dev eth0 src %s", np.node.PodCIDRv4, np.fabric4, x.ipv4),
				fmt.Sprintf("route add %s via %s dev eth0 src %s", np.node.PodCIDRv6, np.fabric6, x.ipv6))
		}
		for _, other := range p.externals {
			if other != x {
				lines = append(lines,
					fmt.Sprintf("route add %s/32 via %s dev eth0 src %s", other.ipv4, other.fabric4, x.ipv4),
					fmt.Sprintf("route add %s/128 via %s dev eth0 src %s", other.ipv6, other.fabric6, x.ipv6))
			}
		}
		if err := ipBatch(ctx, l.netnsOf(x), lines); err != nil {
			return err
		}
	}

	// Servers, started together and then awaited.
	if err := l.step("servers"); err != nil {
		return err
	}
	type started struct {
		ep    *endpointPlan
		ready *os.File
	}
	var waits []started
	eps := append(append([]*endpointPlan{}, p.pods...), p.externals...)
	for i, ep := range eps {
		if i == 1 {
			if err := l.step("servers-half"); err != nil {
				return err
			}
		}
		ready, err := l.startServer(ep)
		if err != nil {
			return err
		}
		waits = append(waits, started{ep, ready})
	}
	var errs []error
	for _, w := range waits {
		if err := l.awaitReady(ctx, w.ep, w.ready); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (l *Lab) netnsOf(ep *endpointPlan) string {
	if ep.isExtern {
		return l.paths.extNetns(ep.ref)
	}
	return l.paths.podNetns(ep.pod.Namespace, ep.pod.Name)
}

func (l *Lab) cgroupOf(ep *endpointPlan) string {
	if ep.isExtern {
		return filepath.Join(l.paths.cgroupDir, "_external", ep.ref)
	}
	return filepath.Join(l.paths.nodeCgroup(ep.node.Name), ep.pod.Namespace+"."+ep.pod.Name)
}

func (l *Lab) requestLog(ep *endpointPlan) string {
	return filepath.Join(l.paths.stateDir, strings.ReplaceAll(ep.ref, "/", "_")+".requests.jsonl")
}

func (l *Lab) serverLog(ep *endpointPlan) string {
	return filepath.Join(l.paths.stateDir, strings.ReplaceAll(ep.ref, "/", "_")+".server.log")
}

// startServer starts ep's server in its namespace and cgroup and returns the read end of its readiness pipe.
func (l *Lab) startServer(ep *endpointPlan) (*os.File, error) {
	args := append([]string{}, l.opts.BinaryArgs...)
	args = append(args, "serve", "--name", ep.ref, "--requests", l.requestLog(ep), "--ready-fd", "3",
		"--parent-pid", strconv.Itoa(os.Getpid()))
	for _, pt := range ep.ports {
		args = append(args, "--"+strings.ToLower(string(pt.Protocol)), strconv.Itoa(pt.Port))
	}
	logf, err := os.OpenFile(l.serverLog(ep), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("server log of %s: %w", ep.ref, err)
	}
	defer logf.Close()
	rd, wr, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("readiness pipe: %w", err)
	}
	defer wr.Close()
	cmd := exec.Command(l.opts.Binary, args...)
	cmd.Env = append(os.Environ(), l.opts.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{wr}
	if err := l.startIn(ep, cmd); err != nil {
		rd.Close()
		return nil, fmt.Errorf("start server of %s: %w", ep.ref, err)
	}
	srv := &server{cmd: cmd, done: make(chan struct{})}
	l.mu.Lock()
	l.procs[ep.ref] = srv
	l.mu.Unlock()
	go func() {
		_ = cmd.Wait()
		close(srv.done)
	}()
	return rd, nil
}

// awaitReady waits until ep's server reports that every port listens.
func (l *Lab) awaitReady(ctx context.Context, ep *endpointPlan, ready *os.File) error {
	defer ready.Close()
	_ = ready.SetReadDeadline(time.Now().Add(15 * time.Second))
	if dl, ok := ctx.Deadline(); ok {
		_ = ready.SetReadDeadline(dl)
	}
	line, err := bufio.NewReader(ready).ReadString('\n')
	if err == nil && strings.TrimSpace(line) == "ready" {
		return nil
	}
	out, _ := os.ReadFile(l.serverLog(ep))
	return fmt.Errorf("server of %s did not start: %v: %s", ep.ref, err, strings.TrimSpace(string(out)))
}

// startIn starts cmd inside ep's network namespace (forked from a thread switched into it) and cgroup
// (placed there by clone3 before it runs), so that it never runs a single instruction elsewhere.
func (l *Lab) startIn(ep *endpointPlan, cmd *exec.Cmd) error {
	if err := restrict(cmd); err != nil {
		return err
	}
	cg, err := os.Open(l.cgroupOf(ep))
	if err != nil {
		return fmt.Errorf("open cgroup: %w", err)
	}
	defer cg.Close()
	var deathSig syscall.Signal
	if cmd.SysProcAttr != nil {
		deathSig = cmd.SysProcAttr.Pdeathsig
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		UseCgroupFD: true,
		CgroupFD:    int(cg.Fd()),
		Setpgid:     true,
		Pdeathsig:   deathSig,
	}
	return inNetns(filepath.Join(netnsDir, l.netnsOf(ep)), cmd.Start)
}

// restrict makes cmd run as a process of a Pod Security Standard "restricted" pod would as far as
// the network goes: CAP_NET_RAW and CAP_NET_ADMIN out of its bounding set (setpriv execs the
// command), so that it can never hold them. Agents judge the HTTP requests of such pods' clients at
// their own socket (--http-judge-at-source).
func restrict(cmd *exec.Cmd) error {
	sp, err := exec.LookPath("setpriv")
	if err != nil {
		return fmt.Errorf("setpriv (util-linux; hack/setup.sh installs it): %w", err)
	}
	cmd.Args = append([]string{sp, "--bounding-set", RestrictedBoundingSet, "--", cmd.Path}, cmd.Args[1:]...)
	cmd.Path = sp
	return nil
}

// RestrictedBoundingSet is setpriv's --bounding-set argument for lab pods' processes.
const RestrictedBoundingSet = "-net_raw,-net_admin"

// Down stops every process the lab started and removes its network namespaces (and with them every link),
// cgroups, bpffs directories and state directory. It is idempotent and safe after a partial Up.
func (l *Lab) Down() error {
	l.downOnce.Do(func() {
		l.mu.Lock()
		procs := l.procs
		l.procs = map[string]*server{}
		l.mu.Unlock()
		for _, s := range procs {
			_ = s.cmd.Process.Signal(syscall.SIGTERM)
		}
		timeout := time.After(3 * time.Second)
		for _, s := range procs {
			select {
			case <-s.done:
			case <-timeout:
				_ = s.cmd.Process.Kill()
				<-s.done
			}
		}
		l.downErr = cleanup(l.paths)
	})
	return l.downErr
}

// Cleanup removes every resource of a lab with the given prefix, for example one left behind by a crashed
// run: it kills, by PID, the processes in the lab's cgroups and network namespaces, deletes its network
// namespaces, cgroups, bpffs directories and default state directory. Nothing of a lab with another prefix
// is touched. It uses the default cgroup and bpffs roots of Options.
func Cleanup(prefix string) error {
	opts := Options{Prefix: prefix}
	ps, err := opts.resolve()
	if err != nil {
		return err
	}
	return cleanup(ps)
}

func cleanup(ps paths) error {
	var errs []error
	// Processes first: a process keeps its network namespace alive and its cgroup busy.
	if err := killCgroupTree(ps.cgroupDir, 5*time.Second); err != nil {
		errs = append(errs, err)
	}
	var names []string
	inodes := map[uint64]bool{}
	if entries, err := os.ReadDir(netnsDir); err == nil {
		for _, e := range entries {
			if ps.ownsNetns(e.Name()) {
				names = append(names, e.Name())
				if ino, err := netnsInode(filepath.Join(netnsDir, e.Name())); err == nil {
					inodes[ino] = true
				}
			}
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		pids := pidsInNetns(inodes)
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			errs = append(errs, fmt.Errorf("processes %v in the lab's network namespaces did not exit", pids))
			break
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, name := range names {
		if err := deleteNetns(name); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(ps.bpffsDir); err != nil {
		errs = append(errs, fmt.Errorf("remove bpffs directory: %w", err))
	}
	if err := os.RemoveAll(ps.stateDir); err != nil {
		errs = append(errs, fmt.Errorf("remove state directory: %w", err))
	}
	// The shared parents go when the last lab has gone.
	for _, parent := range []string{filepath.Dir(ps.cgroupDir), filepath.Dir(ps.bpffsDir), filepath.Dir(ps.stateDir)} {
		if err := os.Remove(parent); err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTEMPTY) && !errors.Is(err, syscall.EEXIST) && !errors.Is(err, syscall.EBUSY) {
			errs = append(errs, fmt.Errorf("remove %s: %w", parent, err))
		}
	}
	return errors.Join(errs...)
}

// Topology returns the topology the lab was built from.
func (l *Lab) Topology() *Topology { return l.topo }

// Prefix returns the lab's name prefix.
func (l *Lab) Prefix() string { return l.paths.prefix }

func (l *Lab) endpoint(ref string) (*endpointPlan, error) {
	ep, ok := l.plan.byRef[ref]
	if !ok {
		return nil, fmt.Errorf("no pod or external host %q in the lab (pods are named namespace/name)", ref)
	}
	return ep, nil
}

func (l *Lab) node(name string) (*nodePlan, error) {
	np, ok := l.plan.nodeByName[name]
	if !ok {
		return nil, fmt.Errorf("no node %q in the lab", name)
	}
	return np, nil
}

// Addresses are the IPv4 and IPv6 addresses of a pod or external host.
type Addresses struct {
	// IPv4 is the IPv4 address.
	IPv4 netip.Addr
	// IPv6 is the IPv6 address.
	IPv6 netip.Addr
}

// PodIPs returns the addresses of a pod ("namespace/name") or an external host (its name).
func (l *Lab) PodIPs(ref string) (Addresses, error) {
	ep, err := l.endpoint(ref)
	if err != nil {
		return Addresses{}, err
	}
	return Addresses{IPv4: ep.ipv4, IPv6: ep.ipv6}, nil
}

// NodeIPs returns a node's fabric addresses (its InternalIPs).
func (l *Lab) NodeIPs(node string) (Addresses, error) {
	np, err := l.node(node)
	if err != nil {
		return Addresses{}, err
	}
	return Addresses{IPv4: np.fabric4, IPv6: np.fabric6}, nil
}

// NodeNetns returns the path of a node's network namespace file (/run/netns/<prefix>n-<node>), for
// setns or `nsenter --net=`.
func (l *Lab) NodeNetns(node string) (string, error) {
	if _, err := l.node(node); err != nil {
		return "", err
	}
	return filepath.Join(netnsDir, l.paths.nodeNetns(node)), nil
}

// PodNetns returns the path of a pod's or external host's network namespace file.
func (l *Lab) PodNetns(ref string) (string, error) {
	ep, err := l.endpoint(ref)
	if err != nil {
		return "", err
	}
	return filepath.Join(netnsDir, l.netnsOf(ep)), nil
}

// NodeCgroup returns a node's cgroup v2 directory; its pods' cgroups are below it.
func (l *Lab) NodeCgroup(node string) (string, error) {
	if _, err := l.node(node); err != nil {
		return "", err
	}
	return l.paths.nodeCgroup(node), nil
}

// PodCgroup returns the cgroup v2 directory of a pod or external host.
func (l *Lab) PodCgroup(ref string) (string, error) {
	ep, err := l.endpoint(ref)
	if err != nil {
		return "", err
	}
	return l.cgroupOf(ep), nil
}

// NodeBPFFS returns a node's bpffs directory, where its agent pins maps and links.
func (l *Lab) NodeBPFFS(node string) (string, error) {
	if _, err := l.node(node); err != nil {
		return "", err
	}
	return l.paths.nodeBPFFS(node), nil
}

// Interface names a network interface in a node's network namespace.
type Interface struct {
	// Name is the interface name.
	Name string
	// Index is the interface index in the node's network namespace.
	Index int
}

// HostInterface returns the host-side veth of a pod in its node's network namespace: the interface the
// node's route to the pod's IPv4 address leaves through.
func (l *Lab) HostInterface(ref string) (Interface, error) {
	ep, err := l.endpoint(ref)
	if err != nil {
		return Interface{}, err
	}
	if ep.isExtern {
		return Interface{}, fmt.Errorf("%s is an external host, not a pod", ref)
	}
	var ifc Interface
	err = inNetns(filepath.Join(netnsDir, l.paths.nodeNetns(ep.node.Name)), func() error {
		i, err := net.InterfaceByName(ep.hostIf)
		if err != nil {
			return fmt.Errorf("host interface of %s: %w", ref, err)
		}
		ifc = Interface{Name: i.Name, Index: i.Index}
		return nil
	})
	return ifc, err
}

// Pods returns the references ("namespace/name") of the lab's pods, in topology order.
func (l *Lab) Pods() []string {
	out := make([]string, 0, len(l.plan.pods))
	for _, ep := range l.plan.pods {
		out = append(out, ep.ref)
	}
	return out
}
