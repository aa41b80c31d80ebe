package l7

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/portcullis-dev/portcullis/internal/netns"
)

// netnsLinks is l7_fast attached in one network namespace: its cookie and a link per interface
// (by index).
type netnsLinks struct {
	cookie uint64
	links  map[int]link.Link
}

// AttachNetns attaches the judging before TCP (l7_fast, tcx ingress) to every interface of the
// network namespace at path (a pod's), then lists the namespace in l7_fast_netns: from then on the
// server connections sock_ops accepts there are judged before TCP when Options.JudgeBeforeTCP is
// set. Calling it again attaches to interfaces added since. A namespace with an interface that is
// neither loopback nor Ethernet (l7_fast reads an Ethernet header) is not listed, and an error says
// so; its connections stay judged at their socket. With a pin directory the links are pinned, and
// the next agent adopts them.
func (l *L7) AttachNetns(path string) error {
	cookie, err := netns.Cookie(filepath.Clean(path))
	if err != nil {
		return fmt.Errorf("attach l7_fast in %s: %w", path, err)
	}
	_, err = l.attachNetns(path, cookie, nil)
	return err
}

// SyncNetns is AttachNetns for a namespace that holds an address with a judged port (SetPort; judged
// is JudgedAddrs), and DetachNetns for one that holds none: l7_fast then looks only at the segments
// of pods with HTTP rules on their ingress. It reports whether l7_fast is attached there. cookie is
// the namespace's (netns.Cookie; a caller that syncs every second keeps it rather than enter the
// namespace once more to read it).
func (l *L7) SyncNetns(path string, cookie uint64, judged map[netip.Addr]bool) (bool, error) {
	return l.attachNetns(path, cookie, judged)
}

// JudgedAddrs is the set of local addresses with a port whose accepted connections are judged (the
// ingress entries of l7_ports), IPv4 addresses unmapped.
func (l *L7) JudgedAddrs() (map[netip.Addr]bool, error) {
	out := map[netip.Addr]bool{}
	var k httpL7PortKey
	var v httpL7PortValue
	it := l.objs.L7Ports.Iterate()
	for it.Next(&k, &v) {
		if k.Direction == 0 {
			out[netip.AddrFrom16(k.Addr).Unmap()] = true
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read l7 ports: %w", err)
	}
	return out, nil
}

// attachNetns attaches l7_fast in the namespace at path, whose cookie is cookie; with judged non-nil,
// only when one of the namespace's addresses is in it (and detaches it otherwise).
func (l *L7) attachNetns(path string, cookie uint64, judged map[netip.Addr]bool) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	path = filepath.Clean(path)
	nl := l.fast[cookie]
	if nl == nil {
		nl = &netnsLinks{cookie: cookie, links: map[int]link.Link{}}
	}
	var unsupported []string
	unjudged := false
	err := netns.Do(path, func() error {
		if judged != nil {
			addrs, err := net.InterfaceAddrs()
			if err != nil {
				return fmt.Errorf("addresses: %w", err)
			}
			unjudged = !slices.ContainsFunc(addrs, func(a net.Addr) bool {
				p, err := netip.ParsePrefix(a.String())
				return err == nil && judged[p.Addr().Unmap()]
			})
			if unjudged {
				return nil
			}
		}
		ifs, err := net.Interfaces()
		if err != nil {
			return err
		}
		for _, ifc := range ifs {
			if ifc.Flags&net.FlagLoopback == 0 && len(ifc.HardwareAddr) != 6 {
				unsupported = append(unsupported, ifc.Name)
				continue
			}
			if nl.links[ifc.Index] != nil {
				continue
			}
			lk, err := l.attachFastLink(cookie, ifc.Index)
			if err != nil {
				return fmt.Errorf("interface %s: %w", ifc.Name, err)
			}
			nl.links[ifc.Index] = lk
		}
		return nil
	})
	if unjudged {
		return false, l.detachFast(cookie)
	}
	l.fast[cookie] = nl
	if err != nil {
		return false, fmt.Errorf("attach l7_fast in %s: %w", path, err)
	}
	if len(unsupported) > 0 {
		return false, fmt.Errorf("attach l7_fast in %s: interfaces %v are neither Ethernet nor loopback: its connections stay judged at their socket", path, unsupported)
	}
	if err := l.objs.L7FastNetns.Update(cookie, uint32(1), ebpf.UpdateAny); err != nil {
		return false, fmt.Errorf("list %s for judging before TCP: %w", path, err)
	}
	return true, nil
}

// fastLinkPin is where the l7_fast link of one interface of one network namespace is pinned.
func (l *L7) fastLinkPin(cookie uint64, ifindex int) string {
	return filepath.Join(l.pinDir, "tcx-links", fmt.Sprintf("%016x-%d", cookie, ifindex))
}

// attachFastLink attaches l7_fast to the interface ifindex of the caller's network namespace (whose
// cookie is cookie), or updates the link an earlier agent pinned for it.
func (l *L7) attachFastLink(cookie uint64, ifindex int) (link.Link, error) {
	if l.pinDir == "" {
		return link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: l.objs.L7Fast, Attach: ebpf.AttachTCXIngress})
	}
	pin := l.fastLinkPin(cookie, ifindex)
	if lk, err := link.LoadPinnedLink(pin, nil); err == nil {
		if err := lk.Update(l.objs.L7Fast); err == nil {
			return lk, nil
		}
		_ = lk.Unpin()
		lk.Close()
	}
	lk, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: l.objs.L7Fast, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(pin), 0o700); err != nil {
		lk.Close()
		return nil, fmt.Errorf("tcx link pin directory: %w", err)
	}
	if err := lk.Pin(pin); err != nil {
		lk.Close()
		return nil, fmt.Errorf("pin tcx link: %w", err)
	}
	return lk, nil
}

// DetachNetns unlists the network namespace at path (new connections there are judged at their
// socket) and detaches l7_fast from its interfaces. For a namespace that is going away: a connection
// still judged before TCP there loses its judge, and the guard drops its data from then on.
func (l *L7) DetachNetns(path string) error {
	cookie, err := netns.Cookie(filepath.Clean(path))
	if err != nil {
		return fmt.Errorf("detach l7_fast in %s: %w", path, err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.detachFast(cookie)
}

// PruneNetns detaches l7_fast from the network namespaces AttachNetns attached it in that are not
// in alive (by cookie): namespaces whose pods are gone.
func (l *L7) PruneNetns(alive map[uint64]bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var errs []error
	for cookie := range l.fast {
		if !alive[cookie] {
			errs = append(errs, l.detachFast(cookie))
		}
	}
	// Pins an earlier agent left for namespaces that went away while no agent ran: once, on the
	// first prune (later pins are this agent's, unpinned by detachFast).
	if l.pinDir != "" && !l.prunedPins {
		l.prunedPins = true
		dir := filepath.Join(l.pinDir, "tcx-links")
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			var cookie uint64
			var ifindex int
			if _, err := fmt.Sscanf(e.Name(), "%016x-%d", &cookie, &ifindex); err != nil || alive[cookie] || l.fast[cookie] != nil {
				continue
			}
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func (l *L7) detachFast(cookie uint64) error {
	nl := l.fast[cookie]
	if nl == nil {
		return nil
	}
	var errs []error
	if err := l.objs.L7FastNetns.Delete(cookie); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, fmt.Errorf("unlist network namespace %d: %w", cookie, err))
	}
	for _, lk := range nl.links {
		if l.pinDir != "" {
			if err := lk.Unpin(); err != nil {
				errs = append(errs, err)
			}
		}
		if err := lk.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	delete(l.fast, cookie)
	return errors.Join(errs...)
}
