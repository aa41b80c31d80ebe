package datapath

import (
	"fmt"

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
