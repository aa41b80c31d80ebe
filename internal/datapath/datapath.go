// Package datapath loads the Portcullis L3/L4 dataplane (bpf/portcullis.c) into the kernel, attaches it
// to pods' host-side veth interfaces with tcx, and converges its maps to a desired state.
//
// A Datapath owns its maps and programs; nothing lives in package-level variables. With a pin directory
// on bpffs, maps are pinned by name and tcx links per interface, so enforcement continues while the agent
// restarts and a new agent adopts what the old one left (Load with the same Options.PinDir).
//
// Order matters for the caller: converge an endpoint (so that the programs know it) before attaching to
// its interface; programs attached to an interface the endpoint map does not know pass every packet.
package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// Default map sizes, used for the zero values in Options.
const (
	DefaultPolicyMaxEntries    = 131072
	DefaultIPCacheMaxEntries   = 65536
	DefaultEndpointMaxEntries  = 4096
	DefaultConntrackMaxEntries = 131072
	DefaultCounterMaxEntries   = 16384
	DefaultRingBufferBytes     = 1 << 18
)

// Options configure Load. The zero value loads unpinned maps of the default sizes.
type Options struct {
	// PinDir is a directory on a bpffs mount (for example /sys/fs/bpf/portcullis). When set, every map is
	// pinned there by its name and every tcx link under PinDir/links; pins that exist are adopted.
	// A pinned map whose type, key, value or size differs from this build makes Load fail: remove the
	// pin directory (dropping conntrack state) to start afresh.
	PinDir string
	// Map sizes; zero means the Default* constant. Changing a size of a pinned map requires a fresh pin
	// directory.
	PolicyMaxEntries    uint32
	IPCacheMaxEntries   uint32
	EndpointMaxEntries  uint32
	ConntrackMaxEntries uint32
	CounterMaxEntries   uint32
	// RingBufferBytes is the flow event ring buffer size: a power of two, multiple of the page size.
	RingBufferBytes uint32
}

// Datapath is a loaded dataplane: its maps, its two programs, and the tcx links it manages.
// Its methods are safe for concurrent use.
type Datapath struct {
	objs   portcullisObjects
	pinDir string

	mu    sync.Mutex
	links map[linkKey]link.Link
}

type linkKey struct {
	ifindex int
	hook    ebpf.AttachType
}

func (k linkKey) pinName() string {
	hook := "ingress"
	if k.hook == ebpf.AttachTCXEgress {
		hook = "egress"
	}
	return fmt.Sprintf("%d-%s", k.ifindex, hook)
}

const linksDir = "links"

// bpffsMagic is BPF_FS_MAGIC from include/uapi/linux/magic.h.
const bpffsMagic = 0xcafe4a11

// Load loads the programs and creates their maps, or adopts the maps pinned in opts.PinDir, and adopts
// the tcx links pinned there. It needs CAP_BPF and CAP_NET_ADMIN (or root).
func Load(opts Options) (*Datapath, error) {
	return load(opts, false)
}

// LoadPinned is Load for an existing pin directory: it fails when any map is not pinned in dir
// instead of creating it, so a tool or a restarted agent never silently starts from empty maps.
func LoadPinned(dir string, opts Options) (*Datapath, error) {
	if dir == "" {
		return nil, errors.New("load pinned datapath: empty pin directory")
	}
	opts.PinDir = dir
	return load(opts, true)
}

func load(opts Options, mustExist bool) (_ *Datapath, err error) {
	// A no-op on kernels with memcg accounting of BPF memory (5.11+); needed before that.
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("remove memlock rlimit: %w", err)
	}
	spec, err := loadPortcullis()
	if err != nil {
		return nil, fmt.Errorf("parse embedded BPF object: %w", err)
	}
	sizes := map[string]uint32{
		portcullisMapPolicy:    orDefault(opts.PolicyMaxEntries, DefaultPolicyMaxEntries),
		portcullisMapIpcache:   orDefault(opts.IPCacheMaxEntries, DefaultIPCacheMaxEntries),
		portcullisMapEndpoints: orDefault(opts.EndpointMaxEntries, DefaultEndpointMaxEntries),
		portcullisMapConntrack: orDefault(opts.ConntrackMaxEntries, DefaultConntrackMaxEntries),
		portcullisMapCounters:  orDefault(opts.CounterMaxEntries, DefaultCounterMaxEntries),
		portcullisMapFlows:     orDefault(opts.RingBufferBytes, DefaultRingBufferBytes),
	}
	for name, size := range sizes {
		ms, ok := spec.Maps[name]
		if !ok {
			return nil, fmt.Errorf("embedded BPF object has no map %q", name)
		}
		ms.MaxEntries = size
	}

	var collOpts ebpf.CollectionOptions
	if opts.PinDir != "" {
		if err := checkBPFFS(opts.PinDir, mustExist); err != nil {
			return nil, err
		}
		for name, ms := range spec.Maps {
			if _, ours := sizes[name]; !ours {
				continue
			}
			if mustExist {
				if _, err := os.Stat(filepath.Join(opts.PinDir, name)); err != nil {
					return nil, fmt.Errorf("load pinned datapath: map %q is not pinned in %s: %w", name, opts.PinDir, err)
				}
			}
			ms.Pinning = ebpf.PinByName
		}
		collOpts.Maps.PinPath = opts.PinDir
	}

	d := &Datapath{pinDir: opts.PinDir, links: map[linkKey]link.Link{}}
	if err := spec.LoadAndAssign(&d.objs, &collOpts); err != nil {
		return nil, explainLoadError(err, opts.PinDir)
	}
	defer func() {
		if err != nil {
			d.Close()
		}
	}()
	if opts.PinDir != "" {
		if err := d.adoptLinks(); err != nil {
			return nil, err
		}
	}
	return d, nil
}

func orDefault(v, def uint32) uint32 {
	if v == 0 {
		return def
	}
	return v
}

// checkBPFFS makes sure dir exists (creating it unless mustExist) and is on a bpffs mount, because
// pinning anywhere else fails with an obscure EPERM.
func checkBPFFS(dir string, mustExist bool) error {
	if !mustExist {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("create pin directory %s (is bpffs mounted? mount -t bpf bpf /sys/fs/bpf): %w", dir, err)
		}
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("pin directory %s: %w", dir, err)
	}
	if uint32(st.Type) != bpffsMagic {
		return fmt.Errorf("pin directory %s is not on a bpffs mount (mount -t bpf bpf /sys/fs/bpf)", dir)
	}
	return nil
}

func explainLoadError(err error, pinDir string) error {
	var ve *ebpf.VerifierError
	switch {
	case errors.As(err, &ve):
		// %+v keeps the whole verifier log; the default keeps only its last lines.
		return fmt.Errorf("load BPF programs: verifier rejected them: %+v: %w", ve, err)
	case errors.Is(err, ebpf.ErrMapIncompatible):
		return fmt.Errorf("load BPF maps: a map pinned in %s does not match this build (type, key, value or size changed); remove the pin directory to start afresh: %w", pinDir, err)
	case errors.Is(err, unix.EPERM), errors.Is(err, ebpf.ErrNotSupported):
		return fmt.Errorf("load BPF programs and maps: needs root or CAP_BPF+CAP_NET_ADMIN and a kernel with BPF, BTF and tcx (Linux 6.6+): %w", err)
	}
	return fmt.Errorf("load BPF programs and maps: %w", err)
}

// adoptLinks takes over the tcx links a previous agent pinned, so that Attach replaces their program
// in place (no window without enforcement) and Detach can remove them.
func (d *Datapath) adoptLinks() error {
	dir := filepath.Join(d.pinDir, linksDir)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read pinned links in %s: %w", dir, err)
	}
	for _, e := range entries {
		key, ok := parseLinkPin(e.Name())
		if !ok {
			continue
		}
		l, err := link.LoadPinnedLink(filepath.Join(dir, e.Name()), nil)
		if err != nil {
			return fmt.Errorf("adopt pinned link %s: %w", filepath.Join(dir, e.Name()), err)
		}
		d.links[key] = l
	}
	return nil
}

func parseLinkPin(name string) (linkKey, bool) {
	idx, hook, ok := strings.Cut(name, "-")
	if !ok {
		return linkKey{}, false
	}
	ifindex, err := strconv.Atoi(idx)
	if err != nil || ifindex <= 0 {
		return linkKey{}, false
	}
	switch hook {
	case "ingress":
		return linkKey{ifindex, ebpf.AttachTCXIngress}, true
	case "egress":
		return linkKey{ifindex, ebpf.AttachTCXEgress}, true
	}
	return linkKey{}, false
}

// Attach enforces on the host-side veth with the given ifindex (in the caller's network namespace):
// the pod-egress program on its tcx ingress hook and the pod-ingress program on its tcx egress hook,
// both at the head of the tcx chain so that no earlier program can pass a packet past them. When a link
// already exists (adopted after a restart, or attached before), its program is replaced atomically.
// With a pin directory the links are pinned and outlive the process.
func (d *Datapath) Attach(ifindex int) error {
	if ifindex <= 0 {
		return fmt.Errorf("attach: invalid ifindex %d", ifindex)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, h := range []struct {
		hook ebpf.AttachType
		prog *ebpf.Program
	}{
		{ebpf.AttachTCXIngress, d.objs.PeFromPod},
		{ebpf.AttachTCXEgress, d.objs.PeToPod},
	} {
		key := linkKey{ifindex, h.hook}
		if err := d.attachOne(key, h.prog); err != nil {
			return err
		}
	}
	return nil
}

func (d *Datapath) attachOne(key linkKey, prog *ebpf.Program) error {
	if l, ok := d.links[key]; ok {
		if err := l.Update(prog); err == nil {
			return nil
		}
		// The interface is gone (the link is defunct) or the link was detached behind our back:
		// forget it and attach afresh.
		d.dropLink(key, l)
	}
	l, err := link.AttachTCX(link.TCXOptions{
		Interface: key.ifindex,
		Program:   prog,
		Attach:    key.hook,
		Anchor:    link.Head(),
	})
	if err != nil {
		return fmt.Errorf("attach tcx %s to ifindex %d: %w", key.pinName(), key.ifindex, err)
	}
	if d.pinDir != "" {
		dir := filepath.Join(d.pinDir, linksDir)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			l.Close()
			return fmt.Errorf("create link pin directory: %w", err)
		}
		if err := l.Pin(filepath.Join(dir, key.pinName())); err != nil {
			l.Close()
			return fmt.Errorf("pin tcx link %s: %w", key.pinName(), err)
		}
	}
	d.links[key] = l
	return nil
}

// dropLink unpins and closes a link, which detaches it once nothing else holds it.
func (d *Datapath) dropLink(key linkKey, l link.Link) error {
	delete(d.links, key)
	var errs []error
	if d.pinDir != "" {
		if err := l.Unpin(); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("unpin link %s: %w", key.pinName(), err))
		}
	}
	if err := l.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close link %s: %w", key.pinName(), err))
	}
	return errors.Join(errs...)
}

// Detach removes both programs from the interface and their pins. Detaching an interface that has no
// links is not an error.
func (d *Datapath) Detach(ifindex int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for _, hook := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
		key := linkKey{ifindex, hook}
		if l, ok := d.links[key]; ok {
			if err := d.dropLink(key, l); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("detach ifindex %d: %w", ifindex, err)
	}
	return nil
}

// Attached returns the ifindexes this Datapath holds links for (attached or adopted).
func (d *Datapath) Attached() []int {
	d.mu.Lock()
	defer d.mu.Unlock()
	seen := map[int]bool{}
	var out []int
	for k := range d.links {
		if !seen[k.ifindex] {
			seen[k.ifindex] = true
			out = append(out, k.ifindex)
		}
	}
	return out
}

// Close releases the Datapath's file descriptors. Pinned maps and links stay in the kernel and keep
// enforcing; links that are not pinned detach.
func (d *Datapath) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for key, l := range d.links {
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close link %s: %w", key.pinName(), err))
		}
		delete(d.links, key)
	}
	if err := d.objs.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close BPF objects: %w", err))
	}
	return errors.Join(errs...)
}

// Unpin removes the map pins from the pin directory (after Detach of every interface, to retire the
// dataplane completely). The maps live on while this Datapath holds them.
func (d *Datapath) Unpin() error {
	if d.pinDir == "" {
		return nil
	}
	var errs []error
	for _, m := range []*ebpf.Map{d.objs.Policy, d.objs.Ipcache, d.objs.Endpoints, d.objs.Conntrack, d.objs.Counters, d.objs.Flows} {
		if err := m.Unpin(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("unpin maps in %s: %w", d.pinDir, err)
	}
	return nil
}
