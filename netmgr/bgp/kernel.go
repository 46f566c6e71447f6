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
func (k *kernel) sync(learned map[netip.Prefix]netip.Addr, settled bool) (int, error) {
	type hop struct {
		gw  netip.Addr
		dev int
	}
	want := map[netip.Prefix]hop{}
	var errs []error
	for pfx, nh := range learned {
		if better, err := k.otherRoute(pfx); err != nil {
			errs = append(errs, err)
			continue
		} else if better {
			continue
		}
		gw, dev, ok := k.resolve(nh)
		if !ok {
			continue
		}
		want[pfx] = hop{gw, dev}
	}
	n := 0
	for _, f := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := k.h.RouteListFiltered(f, &netlink.Route{Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return 0, fmt.Errorf("list routes: %w", err)
		}
		for _, r := range rs {
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

// otherRoute reports whether the main table has a route to exactly pfx made by someone else.
func (k *kernel) otherRoute(pfx netip.Prefix) (bool, error) {
	f := netlink.FAMILY_V4
	if pfx.Addr().Is6() {
		f = netlink.FAMILY_V6
	}
	dst := &net.IPNet{IP: pfx.Addr().AsSlice(), Mask: net.CIDRMask(pfx.Bits(), pfx.Addr().BitLen())}
	rs, err := k.h.RouteListFiltered(f, &netlink.Route{Dst: dst, Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return false, fmt.Errorf("list routes to %s: %w", pfx, err)
	}
	for _, r := range rs {
		if r.Protocol != RouteProtocol && prefixOf(r.Dst) == pfx {
			return true, nil
		}
	}
	return false, nil
}

// resolve is the gateway and interface by which the host forwards to nh: nh itself on a connected
// segment, else the gateway of its route. False when nh is this host's or unreachable.
func (k *kernel) resolve(nh netip.Addr) (netip.Addr, int, bool) {
	rs, err := k.h.RouteGet(nh.AsSlice())
	if err != nil || len(rs) == 0 {
		return netip.Addr{}, 0, false
	}
	r := rs[0]
	if r.Type != unix.RTN_UNICAST {
		return netip.Addr{}, 0, false
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
