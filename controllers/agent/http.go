package agent

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/portcullis-dev/portcullis/internal/l7"
	"github.com/portcullis-dev/portcullis/internal/lowering"
)

// convergeHTTP makes the kernel's HTTP rule sets and judged ports equal to the lowering's. It compares
// with the kernel itself (l7.Converge), so the drift check repairs rule sets and ports changed,
// removed or added behind the agent's back, as it does for the L3/L4 maps.
func (r *Reconciler) convergeHTTP(ctx context.Context, low lowering.Result) (changed int, err error) {
	h := r.opts.L7
	if h == nil {
		return 0, nil
	}
	rules := map[l7.RuleKey]l7.RuleSet{}
	origins := map[l7.RuleKey]map[string][]string{}
	for _, rs := range low.HTTPRuleSets {
		k := l7.RuleKey{EndpointID: rs.EndpointID, PeerIdentity: uint32(rs.PeerIdentity), Port: rs.Port, Egress: rs.Egress}
		rules[k] = l7.RuleSet{Rules: rs.Rules, Audit: rs.Audit}
		origins[k] = rs.Origins
	}
	if r.opts.Flows != nil {
		r.opts.Flows.setHTTPOrigins(origins)
	}
	ports := make([]l7.Port, 0, len(low.HTTPPorts))
	var judged []netip.Addr
	for _, p := range low.HTTPPorts {
		ports = append(ports, l7.Port{Addr: p.Addr, Port: p.Port, EndpointID: p.EndpointID, Egress: p.Egress})
		if !p.Egress {
			judged = append(judged, p.Addr)
		}
	}
	// The judging before TCP first goes where ports are about to be judged (a connection accepted
	// once its port is judged is then judged before TCP), and leaves where none is left after: when
	// the converge changed nothing, the first sync already saw the ports as they stay.
	if r.opts.BeforeTCP != nil {
		r.opts.BeforeTCP.Sync(ctx, judged...)
	}
	changed, err = h.Converge(ports, rules)
	if r.opts.BeforeTCP != nil && (changed > 0 || err != nil) {
		r.opts.BeforeTCP.Sync(ctx)
	}
	if err != nil {
		return changed, fmt.Errorf("converge HTTP rules: %w", err)
	}
	return changed, nil
}
