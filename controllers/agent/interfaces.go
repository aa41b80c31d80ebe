package agent

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"syscall"
	"unsafe"
)

// RouteInterfaces reads the main routing table of the calling thread's network namespace over
// netlink and returns, for every host route (/32 or /128), the index of its outgoing interface: a
// routed CNI (Calico, Cilium, the lab) gives each pod such a route via the host side of its veth. It
// needs no external command, so it works in a minimal container image.
func RouteInterfaces(context.Context) (map[netip.Addr]int, error) {
	raw, err := syscall.NetlinkRIB(syscall.RTM_GETROUTE, syscall.AF_UNSPEC)
	if err != nil {
		return nil, fmt.Errorf("dump routes: %w", err)
	}
	msgs, err := syscall.ParseNetlinkMessage(raw)
	if err != nil {
		return nil, fmt.Errorf("parse route dump: %w", err)
	}
	out := map[netip.Addr]int{}
	for i := range msgs {
		m := &msgs[i]
		if m.Header.Type != syscall.RTM_NEWROUTE || len(m.Data) < syscall.SizeofRtMsg {
			continue
		}
		rtm := (*syscall.RtMsg)(unsafe.Pointer(&m.Data[0]))
		host := (rtm.Family == syscall.AF_INET && rtm.Dst_len == 32) || (rtm.Family == syscall.AF_INET6 && rtm.Dst_len == 128)
		if !host || rtm.Table != syscall.RT_TABLE_MAIN {
			continue
		}
		attrs, err := syscall.ParseNetlinkRouteAttr(m)
		if err != nil {
			continue
		}
		var dst netip.Addr
		oif := 0
		for _, a := range attrs {
			switch a.Attr.Type {
			case syscall.RTA_DST:
				if ip, ok := netip.AddrFromSlice(a.Value); ok {
					dst = ip.Unmap()
				}
			case syscall.RTA_OIF:
				if len(a.Value) >= 4 {
					oif = int(binary.NativeEndian.Uint32(a.Value))
				}
			}
		}
		if dst.IsValid() && oif > 0 {
			out[dst] = oif
		}
	}
	return out, nil
}
