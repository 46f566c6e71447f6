package drivers

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ConfigureInterface gives the interface ep.IfName, already inside the sandbox that h is bound to,
// ep's addresses (IPv6 without duplicate address detection, whose wait made IPv6 pod setup take
// seconds elsewhere), brings it up and adds ep's routes through it. Routes nil means a default route
// via each of ep.Gateways (what a driver that leaves the routes to the network's gateways gets). It
// returns the link as it was found, for its index and MAC.
//
// A default route of a family whose default route the namespace has already is left out: each CNI
// attachment of a multi-network pod (Multus, nerdctl with two networks) is its own sandbox in the
// same namespace, and the first attachment's route stays the pod's. Afterwards ep.Routes holds the
// routes set and ep.Gateways the next hops of the default routes set, so that ep names the routes
// this interface has, for the record and the CNI result.
func ConfigureInterface(h *netlink.Handle, ep *Endpoint) (netlink.Link, error) {
	link, err := h.LinkByName(ep.IfName)
	if err != nil {
		return nil, fmt.Errorf("attach %s: find %s: %w", ep.Sandbox, ep.IfName, err)
	}
	for _, a := range ep.Addrs {
		addr := &netlink.Addr{IPNet: IPNet(a)}
		if a.Addr().Is6() {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := h.AddrAdd(link, addr); err != nil {
			return nil, fmt.Errorf("attach %s: add address %s to %s: %w", ep.Sandbox, a, ep.IfName, err)
		}
	}
	if err := h.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("attach %s: bring up %s: %w", ep.Sandbox, ep.IfName, err)
	}
	want := ep.Routes
	if want == nil {
		want = DefaultRoutes(ep.Gateways)
	}
	// New slices: ep's may share their arrays with the caller's record.
	var set []Route
	var gws []netip.Addr
	for _, r := range want {
		if r.IsDefault() {
			family := netlink.FAMILY_V4
			if r.Dst.Addr().Is6() {
				family = netlink.FAMILY_V6
			}
			has, err := hasDefaultRoute(h, family)
			if err != nil {
				return nil, fmt.Errorf("attach %s: list routes: %w", ep.Sandbox, err)
			}
			if has {
				continue
			}
		}
		if err := h.RouteAdd(NetlinkRoute(link.Attrs().Index, r)); err != nil {
			if r.IsDefault() && errors.Is(err, unix.EEXIST) {
				// Another attachment into this namespace added one meanwhile, or a default route of
				// another type (unreachable, blackhole) holds this metric: the namespace has its own.
				continue
			}
			return nil, fmt.Errorf("attach %s: route %s via %s: %w", ep.Sandbox, r.Dst, r.Gw, err)
		}
		set = append(set, r)
		if r.IsDefault() && r.Gw.IsValid() {
			gws = append(gws, r.Gw)
		}
	}
	ep.Routes, ep.Gateways = set, gws
	return link, nil
}

// hasDefaultRoute reports whether the main routing table of h's namespace has a unicast default route
// of family.
func hasDefaultRoute(h *netlink.Handle, family int) (bool, error) {
	routes, err := RetryDump(func() ([]netlink.Route, error) { return h.RouteList(nil, family) })
	if err != nil {
		return false, err
	}
	for _, r := range routes {
		if r.Type != unix.RTN_UNICAST {
			continue
		}
		if r.Dst == nil {
			return true, nil
		}
		if ones, _ := r.Dst.Mask.Size(); ones == 0 {
			return true, nil
		}
	}
	return false, nil
}

// IPNet converts a prefix to the net.IPNet netlink wants.
func IPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// IsLinkNotFound reports whether err says that a link is absent: drivers treat that as "already gone"
// in deletes and as "create it" in creates.
func IsLinkNotFound(err error) bool {
	if err == nil {
		return false
	}
	var lnf netlink.LinkNotFoundError
	return errors.As(err, &lnf) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT)
}

// NetlinkRoute is r as a netlink route on the interface of index link: via its gateway, or on the
// link (scope link) without one; on-link flagged when r says so.
func NetlinkRoute(link int, r Route) *netlink.Route {
	nr := &netlink.Route{LinkIndex: link, Dst: IPNet(r.Dst)}
	if r.Gw.IsValid() {
		nr.Gw = r.Gw.AsSlice()
	} else {
		nr.Scope = netlink.SCOPE_LINK
	}
	if r.OnLink {
		nr.Flags = int(netlink.FLAG_ONLINK)
	}
	return nr
}
