package datapath

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// AttachedInKernel asks the kernel, not the Datapath's own bookkeeping, whether both programs are
// attached to the interface's tcx hooks. A link detached behind the agent's back (for example with
// bpftool) shows here as false while Attached still lists the interface; the agent's drift check uses
// this to repair it.
func (d *Datapath) AttachedInKernel(ifindex int) (bool, error) {
	for _, h := range []struct {
		hook ebpf.AttachType
		prog *ebpf.Program
	}{
		{ebpf.AttachTCXIngress, d.objs.PeFromPod},
		{ebpf.AttachTCXEgress, d.objs.PeToPod},
	} {
		info, err := h.prog.Info()
		if err != nil {
			return false, fmt.Errorf("program info: %w", err)
		}
		want, ok := info.ID()
		if !ok {
			return false, fmt.Errorf("program id unavailable")
		}
		res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: h.hook})
		if err != nil {
			return false, fmt.Errorf("query tcx programs of ifindex %d: %w", ifindex, err)
		}
		found := false
		for _, p := range res.Programs {
			if p.ID == want {
				found = true
				break
			}
		}
		if !found {
			return false, nil
		}
	}
	return true, nil
}

// RepairPins pins again every map and link whose pin was removed from the pin directory (the
// objects live on while the Datapath holds them, but a restarted agent could not adopt them). It
// returns what it re-pinned.
func (d *Datapath) RepairPins() ([]string, error) {
	if d.pinDir == "" {
		return nil, nil
	}
	var repaired []string
	maps := map[string]*ebpf.Map{
		"policy": d.objs.Policy, "ipcache": d.objs.Ipcache, "endpoints": d.objs.Endpoints,
		"conntrack": d.objs.Conntrack, "counters": d.objs.Counters, "flows": d.objs.Flows,
	}
	for name, m := range maps {
		path := filepath.Join(d.pinDir, name)
		if _, err := os.Stat(path); err == nil {
			continue
		}
		// The handle still remembers the old pin path and would treat Pin as a no-op: forget it first
		// (unpinning a path that is gone is not an error).
		if err := m.Unpin(); err != nil {
			return repaired, fmt.Errorf("forget the old pin of map %s: %w", name, err)
		}
		if err := m.Pin(path); err != nil {
			return repaired, fmt.Errorf("pin map %s again: %w", name, err)
		}
		repaired = append(repaired, "map "+name)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for key, l := range d.links {
		path := filepath.Join(d.pinDir, linksDir, key.pinName())
		if _, err := os.Stat(path); err == nil {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return repaired, err
		}
		if err := l.Unpin(); err != nil {
			return repaired, fmt.Errorf("forget the old pin of link %s: %w", key.pinName(), err)
		}
		if err := l.Pin(path); err != nil {
			return repaired, fmt.Errorf("pin link %s again: %w", key.pinName(), err)
		}
		repaired = append(repaired, "link "+key.pinName())
	}
	slices.Sort(repaired)
	return repaired, nil
}

// IPCacheMap is the IP cache map, for programs that share its key and value layout (the socket-level
// HTTP programs look peers up in it). The Datapath still owns it.
func (d *Datapath) IPCacheMap() *ebpf.Map { return d.objs.Ipcache }
