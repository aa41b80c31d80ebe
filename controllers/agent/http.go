package agent

import (
	"errors"
	"fmt"
	"slices"

	"github.com/portcullis-dev/portcullis/internal/l7"
	"github.com/portcullis-dev/portcullis/internal/lowering"
)

// httpState is what the agent last wrote to the socket-level HTTP maps, so that it can remove what is
// no longer desired. After a restart it starts empty: keys left from before stay until rewritten,
// and a judged port with no rule set for a peer denies (fail closed).
type httpState struct {
	ports map[lowering.HTTPPort]bool
	rules map[l7.RuleKey]l7.RuleSet
}

// convergeHTTP makes the HTTP rule sets and judged ports equal to the lowering's. Rule sets are
// written before ports, so that a port is never judged before its rules exist; stale ports are removed
// before stale rule sets for the same reason.
func (r *Reconciler) convergeHTTP(low lowering.Result) (changed int, err error) {
	h := r.opts.L7
	if h == nil {
		return 0, nil
	}
	if r.http.rules == nil {
		r.http = httpState{ports: map[lowering.HTTPPort]bool{}, rules: map[l7.RuleKey]l7.RuleSet{}}
	}
	wantRules := map[l7.RuleKey]l7.RuleSet{}
	origins := map[l7.RuleKey]map[string][]string{}
	for _, rs := range low.HTTPRuleSets {
		k := l7.RuleKey{EndpointID: rs.EndpointID, PeerIdentity: uint32(rs.PeerIdentity), Port: rs.Port, Egress: rs.Egress}
		wantRules[k] = l7.RuleSet{Rules: rs.Rules, Audit: rs.Audit}
		origins[k] = rs.Origins
	}
	if r.opts.Flows != nil {
		r.opts.Flows.setHTTPOrigins(origins)
	}
	wantPorts := map[lowering.HTTPPort]bool{}
	for _, p := range low.HTTPPorts {
		wantPorts[p] = true
	}
	var errs []error
	for k, rules := range wantRules {
		if have, ok := r.http.rules[k]; ok && have.Audit == rules.Audit && slices.Equal(have.Rules, rules.Rules) {
			continue
		}
		if err := h.SetRuleSet(k, rules); err != nil {
			errs = append(errs, err)
			continue
		}
		r.http.rules[k] = rules
		changed++
	}
	for p := range wantPorts {
		if r.http.ports[p] {
			continue
		}
		set := h.SetPort
		if p.Egress {
			set = h.SetEgressPort
		}
		if err := set(p.Addr, p.Port, p.EndpointID); err != nil {
			errs = append(errs, err)
			continue
		}
		r.http.ports[p] = true
		changed++
	}
	for p := range r.http.ports {
		if wantPorts[p] {
			continue
		}
		del := h.DeletePort
		if p.Egress {
			del = h.DeleteEgressPort
		}
		if err := del(p.Addr, p.Port); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(r.http.ports, p)
		changed++
	}
	for k := range r.http.rules {
		if _, ok := wantRules[k]; ok {
			continue
		}
		if err := h.DeleteRules(k); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(r.http.rules, k)
		changed++
	}
	if err := errors.Join(errs...); err != nil {
		return changed, fmt.Errorf("converge HTTP rules: %w", err)
	}
	return changed, nil
}
