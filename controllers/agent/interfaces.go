package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
)

// RouteInterfaces reads the routing table of the agent's network namespace and returns, for every
// host route (/32 or /128), the index of its interface: a routed CNI (Calico, Cilium, the lab) gives
// each pod such a route via the host side of its veth.
func RouteInterfaces(ctx context.Context) (map[netip.Addr]int, error) {
	out := map[netip.Addr]int{}
	for _, family := range []string{"-4", "-6"} {
		raw, err := exec.CommandContext(ctx, "ip", "-j", family, "route", "show", "table", "main").Output()
		if err != nil {
			return nil, fmt.Errorf("ip %s route show: %w", family, err)
		}
		var routes []struct {
			Dst string `json:"dst"`
			Dev string `json:"dev"`
		}
		if err := json.Unmarshal(raw, &routes); err != nil {
			return nil, fmt.Errorf("parse ip route output: %w", err)
		}
		for _, r := range routes {
			if r.Dev == "" || r.Dst == "" || r.Dst == "default" {
				continue
			}
			dst := r.Dst
			if p, err := netip.ParsePrefix(dst); err == nil {
				if !p.IsSingleIP() {
					continue
				}
				dst = p.Addr().String()
			} else if strings.Contains(dst, "/") {
				continue
			}
			addr, err := netip.ParseAddr(dst)
			if err != nil {
				continue
			}
			ifc, err := net.InterfaceByName(r.Dev)
			if err != nil {
				continue
			}
			out[addr.Unmap()] = ifc.Index
		}
	}
	return out, nil
}
