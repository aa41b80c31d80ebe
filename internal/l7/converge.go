package l7

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/cilium/ebpf"
)

// Port is a judged port: ingress, connections accepted on (Addr, Port); egress, connections Addr
// opens to server port Port.
type Port struct {
	Addr       netip.Addr
	Port       uint16
	EndpointID uint32
	Egress     bool
}

// Converge makes the kernel's judged ports and rule sets exactly ports and rules. It reads the
// kernel, not a record of its own writes, so it also repairs drift: entries changed, removed, or
// added by someone else (an added rule set or port would open or close traffic the policy does not
// say), and the SOCKHASH programs and l7_config Load set up. Rule sets are written before ports, so that a port is never judged before its rules exist,
// and unwanted ports are deleted before unwanted rule sets. Rule lists are compiled once and reused
// while they stay wanted. It returns the number of entries written or deleted; on error the
// entries it could not converge stay as they were (the others are converged).
func (l *L7) Converge(ports []Port, rules map[RuleKey]RuleSet) (changed int, err error) {
	var errs []error
	memo := make(map[string][]CompiledRule, len(rules))
	for k, rs := range rules {
		text := strings.Join(rs.Rules, "\n")
		compiled, ok := memo[text]
		if !ok {
			if compiled, ok = l.compiledMemo(text); !ok {
				if compiled, err = CompileRules(rs.Rules); err != nil {
					errs = append(errs, fmt.Errorf("l7 rules for %+v: %w", k, err))
					continue
				}
			}
			memo[text] = compiled
		}
		wrote, err := l.setCompiled(k, compiled, rs.Audit)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if wrote {
			changed++
		}
	}
	l.mu.Lock()
	l.compiled = memo
	n, err := l.repairTablesLocked()
	l.mu.Unlock()
	changed += n
	if err != nil {
		errs = append(errs, err)
	}

	n, err = l.repairAttachments()
	changed += n
	if err != nil {
		errs = append(errs, err)
	}
	n, err = l.repairUpgrades()
	changed += n
	if err != nil {
		errs = append(errs, err)
	}

	wantPorts := map[httpL7PortKey]httpL7PortValue{}
	var wantBits uint32
	for _, p := range ports {
		wantPorts[portKey(p.Addr, p.Port, p.Egress)] = httpL7PortValue{EndpointId: p.EndpointID}
		wantBits |= portBit(p.Egress)
	}
	// The guards look up the ports of a direction while l7_ports may hold one: its bit is set
	// before the ports are written and cleared only once they are all gone.
	if err := l.setPortBits(wantBits, true); err != nil {
		errs = append(errs, err)
	} else {
		n, err = syncMap(l.objs.L7Ports, wantPorts, "l7 port")
		changed += n
		if err != nil {
			errs = append(errs, err)
		} else if err := l.setPortBits(wantBits, false); err != nil {
			errs = append(errs, err)
		}
	}

	var rk httpL7RulesetKey
	var rv httpL7Ruleset
	var staleRules []RuleKey
	rit := l.objs.L7Rulesets.Iterate()
	for rit.Next(&rk, &rv) {
		key := RuleKey{EndpointID: rk.EndpointId, PeerIdentity: rk.PeerIdentity, Port: rk.Port, Egress: rk.Direction != 0}
		if _, ok := rules[key]; !ok {
			staleRules = append(staleRules, key)
		}
	}
	if err := rit.Err(); err != nil {
		errs = append(errs, fmt.Errorf("list l7 rule sets: %w", err))
	}
	for _, k := range staleRules {
		if err := l.DeleteRules(k); err != nil {
			errs = append(errs, err)
			continue
		}
		changed++
	}
	return changed, errors.Join(errs...)
}

// sfUpgrade is L7_SF_UPGRADE (bpf/l7.h): the connection waits for the answer to its WebSocket
// upgrade.
const sfUpgrade = 16

// repairUpgrades recounts the connections waiting for the answer to a WebSocket upgrade when
// l7_upgrades says there are any. The programs keep it exact as connections arm, get their answer
// and close, but a connection whose close the programs never saw (its cgroup's sock_ops detached
// first) would keep it above 0 for good, and the guards would look up every segment's connection.
// The recount can race with a program arming or disarming; a count left wrong by one is put right
// at the next converge, and the guards treat a count below zero as zero.
func (l *L7) repairUpgrades() (int, error) {
	var n uint64
	if err := l.objs.L7Upgrades.Lookup(uint32(0), &n); err != nil {
		return 0, fmt.Errorf("read l7 upgrades: %w", err)
	}
	if n == 0 {
		return 0, nil
	}
	server, err := countUpgrading[uint64](l.objs.L7State, "l7 connections")
	if err != nil {
		return 0, err
	}
	client, err := countUpgrading[httpL7Tuple](l.objs.L7EgressState, "l7 client connections")
	if err != nil {
		return 0, err
	}
	waiting := server + client
	if waiting == n {
		return 0, nil
	}
	if err := l.objs.L7Upgrades.Update(uint32(0), waiting, ebpf.UpdateAny); err != nil {
		return 0, fmt.Errorf("write l7 upgrades: %w", err)
	}
	return 1, nil
}

// countUpgrading counts the connections of a state map (keys K: socket cookies or 4-tuples) that
// wait for the answer to a WebSocket upgrade.
func countUpgrading[K any](m *ebpf.Map, what string) (uint64, error) {
	var k K
	var st httpL7SockState
	var n uint64
	it := m.Iterate()
	for it.Next(&k, &st) {
		if st.Flags&sfUpgrade != 0 {
			n++
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("list %s: %w", what, err)
	}
	return n, nil
}

// syncMap makes the hash map m hold exactly want: entries missing or different are written, others
// deleted. It returns how many entries it changed; what names the entries in errors.
func syncMap[K comparable, V comparable](m *ebpf.Map, want map[K]V, what string) (int, error) {
	var errs []error
	changed := 0
	for k, v := range want {
		var have V
		if err := m.Lookup(&k, &have); err == nil && have == v {
			continue
		}
		if err := m.Update(&k, &v, ebpf.UpdateAny); err != nil {
			errs = append(errs, fmt.Errorf("set %s %v: %w", what, k, err))
			continue
		}
		changed++
	}
	var k K
	var v V
	var stale []K
	it := m.Iterate()
	for it.Next(&k, &v) {
		if _, ok := want[k]; !ok {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		errs = append(errs, fmt.Errorf("list %ss: %w", what, err))
	}
	for _, k := range stale {
		if err := m.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("delete %s %v: %w", what, k, err))
			continue
		}
		changed++
	}
	return changed, errors.Join(errs...)
}

func (l *L7) compiledMemo(text string) ([]CompiledRule, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c, ok := l.compiled[text]
	return c, ok
}

// repairTablesLocked rewrites the DFA tables and header requirements this process interned whose
// kernel copy differs from what it wrote (a cell changed behind its back could make a path rule
// accept more). It returns the number of tables rewritten.
func (l *L7) repairTablesLocked() (int, error) {
	var errs []error
	n := 0
	{
		for id, want := range l.tab.dfaWant {
			var desc httpL7Dfa
			same, err := l.cellsEqual(want.desc.Base, want.cells)
			if err != nil {
				return n, err
			}
			if same && l.objs.L7Dfas.Lookup(id, &desc) == nil && desc == want.desc {
				continue
			}
			if err := l.writeCells(want.desc.Base, want.cells); err != nil {
				errs = append(errs, fmt.Errorf("repair dfa %d: %w", id, err))
				continue
			}
			if err := l.objs.L7Dfas.Update(id, &want.desc, ebpf.UpdateAny); err != nil {
				errs = append(errs, fmt.Errorf("repair dfa %d: %w", id, err))
				continue
			}
			n++
		}
	}
	for id, want := range l.tab.hdrWant {
		var got httpL7Header
		if l.objs.L7Headers.Lookup(id, &got) == nil && got == want {
			continue
		}
		if err := l.objs.L7Headers.Update(id, &want, ebpf.UpdateAny); err != nil {
			errs = append(errs, fmt.Errorf("repair header requirement %d: %w", id, err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}
