package bgp

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// kernel installs learned routes in the host namespace's main table, marked RouteProtocol.
type kernel struct {
	h   *netlink.Handle
	log *slog.Logger
}

// sync makes the kernel's RouteProtocol routes match learned, where no better route exists: a route
// to the same prefix from anyone else (the routed driver's host-gw route to a peer on this segment,
// the user's own) wins and the learned one is left out. A next hop this host reaches only through a
// gateway is resolved to that gateway (one step, as BIRD's recursive next hops). Routes from before a
// restart stay until settled (the sessions are back), so that a restart changes no forwarding.
// It returns how many learned routes are installed.
func (k *kernel) sync(learned map[netip.Prefix]learnedRoute, settled bool) (int, error) {
	type hop struct {
		gw  netip.Addr
		dev int
	}
	var errs []error
	// One dump of the main table per family: the prefixes others route, and our own routes.
	others := map[netip.Prefix]bool{}
	var ours []netlink.Route
	for _, f := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := k.h.RouteListFiltered(f, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return 0, fmt.Errorf("list routes: %w", err)
		}
		for _, r := range rs {
			switch {
			case r.Protocol == RouteProtocol:
				ours = append(ours, r)
			case r.Dst != nil: // a default route is no better route to a node subnet
				others[prefixOf(r.Dst)] = true
			}
		}
	}
	want := map[netip.Prefix]hop{}
	for pfx, l := range learned {
		if others[pfx] {
			continue
		}
		if gw, dev, ok := k.resolve(l); ok {
			want[pfx] = hop{gw, dev}
		}
	}
	n := 0
	for _, r := range ours {
		pfx := prefixOf(r.Dst)
		w, ok := want[pfx]
		gw, _ := netip.AddrFromSlice(r.Gw)
		if ok && w.gw == gw.Unmap() && w.dev == r.LinkIndex {
			delete(want, pfx)
			n++
			continue
		}
		if ok || settled {
			if err := k.h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("delete route %s: %w", pfx, err))
				continue
			}
			k.log.Info("bgp route removed", "prefix", pfx, "via", gw)
		} else {
			n++
		}
	}
	for pfx, w := range want {
		r := &netlink.Route{Dst: &net.IPNet{IP: pfx.Addr().AsSlice(), Mask: net.CIDRMask(pfx.Bits(), pfx.Addr().BitLen())},
			Gw: w.gw.AsSlice(), LinkIndex: w.dev, Protocol: RouteProtocol}
		if err := k.h.RouteReplace(r); err != nil {
			errs = append(errs, fmt.Errorf("route %s via %s: %w", pfx, w.gw, err))
			continue
		}
		n++
		k.log.Info("bgp route installed", "prefix", pfx, "via", w.gw)
	}
	return n, errors.Join(errs...)
}

// learnedRoute is a learned prefix's next hop and the peer it came from (whose interface a
// link-local next hop is on).
type learnedRoute struct {
	nh, peer netip.Addr
}

// resolve is the gateway and interface by which the host forwards to l's next hop: the next hop
// itself on a connected segment, else the gateway of its route; a link-local next hop (IPv6 from
// BIRD) on the interface towards the peer. False when it is this host's or unreachable.
func (k *kernel) resolve(l learnedRoute) (netip.Addr, int, bool) {
	nh, target := l.nh, l.nh
	if nh.IsLinkLocalUnicast() {
		if !l.peer.IsValid() {
			return netip.Addr{}, 0, false
		}
		target = l.peer
	}
	rs, err := k.h.RouteGet(target.AsSlice())
	if err != nil || len(rs) == 0 || rs[0].Type != unix.RTN_UNICAST {
		return netip.Addr{}, 0, false
	}
	r := rs[0]
	if nh.IsLinkLocalUnicast() {
		return nh, r.LinkIndex, true
	}
	if gw, ok := netip.AddrFromSlice(r.Gw); ok && !gw.IsUnspecified() {
		return gw.Unmap(), r.LinkIndex, true
	}
	return nh, r.LinkIndex, true
}

func prefixOf(n *net.IPNet) netip.Prefix {
	if n == nil {
		return netip.Prefix{}
	}
	a, _ := netip.AddrFromSlice(n.IP)
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones).Masked()
}

// nextHop6 is the address IPv6 prefixes are advertised by when the underlay is IPv4: the first
// global IPv6 address on the underlay's interface.
func (c *Controller) nextHop6(h *netlink.Handle, underlay netip.Addr) netip.Addr {
	if !underlay.Is4() {
		return netip.Addr{}
	}
	addrs, err := h.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return netip.Addr{}
	}
	for _, a := range addrs {
		if ip, _ := netip.AddrFromSlice(a.IP); ip.Unmap() != underlay {
			continue
		}
		l, err := h.LinkByIndex(a.LinkIndex)
		if err != nil {
			return netip.Addr{}
		}
		v6, err := h.AddrList(l, netlink.FAMILY_V6)
		if err != nil {
			return netip.Addr{}
		}
		for _, b := range v6 {
			if ip, ok := netip.AddrFromSlice(b.IP); ok && ip.IsGlobalUnicast() && !ip.IsLinkLocalUnicast() {
				return ip
			}
		}
	}
	return netip.Addr{}
}
