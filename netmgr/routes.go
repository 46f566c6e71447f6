package netmgr

import (
	"context"
	"errors"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netmgr/netmgr/drivers"
	"github.com/netmgr/netmgr/sandbox"
)

// Default routes. A sandbox has at most one default route per family, held by one of its endpoints.
// The Manager decides only which endpoint may hold a family's route: it offers an endpoint its
// network's gateway of each family that no other endpoint routes (gatewayOffer, at create, attach and
// when a detach moves the route). How the endpoint routes it is its driver's decision
// (drivers.Endpoint.Routes, from PrepareEndpoint): a bridge routes via the offered gateway, a routed
// driver via an on-link link-local next hop. Whether an endpoint holds a family's route is read from
// its recorded Routes (endpointRecord.defaultRoutes).

// gatewayOffer is the gateways offered to an endpoint on network n as default routes: n's gateway of
// each family that none of others routes already; none off an internal network.
func gatewayOffer(n *networkRecord, others []endpointRecord) []netip.Addr {
	if n.Internal {
		return nil
	}
	var out []netip.Addr
	for j, sn := range n.Subnets {
		if j < len(n.Gateways) && n.Gateways[j].IsValid() && !hasDefaultRoute(others, sn.Addr().Is4()) {
			out = append(out, n.Gateways[j])
		}
	}
	return out
}

// defaultRoutes returns the endpoint's default routes: those of its recorded Routes, or for a record
// without Routes (an older netmgr's, or a driver that left them to the gateways), one via each of its
// Gateways, as drivers.ConfigureInterface reads them.
func (e *endpointRecord) defaultRoutes() []drivers.Route {
	if e.Routes == nil {
		return drivers.DefaultRoutes(e.Gateways)
	}
	var out []drivers.Route
	for _, r := range e.Routes {
		if r.IsDefault() {
			out = append(out, r)
		}
	}
	return out
}

// hasDefaultRoute reports whether one of eps holds the default route of a family.
func hasDefaultRoute(eps []endpointRecord, v4 bool) bool {
	for i := range eps {
		for _, r := range eps[i].defaultRoutes() {
			if r.Dst.Addr().Is4() == v4 {
				return true
			}
		}
	}
	return false
}

// addRoute records a route set on the endpoint after its attach (a moved default route): in Routes,
// so that a restore sets it as it was set (on-link included), and its next hop in Gateways, for the
// Attachment and the CNI result. A record without Routes gets its gateways' routes spelled out first.
func (e *endpointRecord) addRoute(r drivers.Route) {
	if e.Routes == nil {
		e.Routes = drivers.DefaultRoutes(e.Gateways)
	}
	e.Routes = append(e.Routes, r)
	if r.IsDefault() && r.Gw.IsValid() {
		e.Gateways = append(e.Gateways, r.Gw)
	}
}

// moveDefaultRoutes gives the default route of each family that the dropped endpoint held to the first
// remaining endpoint that its driver routes that family through when offered it, as Docker does on a
// network disconnect, so that the sandbox keeps its way out. keep's records are updated to match.
func (m *Manager) moveDefaultRoutes(ctx context.Context, name string, drop *endpointRecord, keep []endpointRecord, sb *sandbox.NetNS) {
	var h *netlink.Handle // opened once, only if a route is to move
	defer func() {
		if h != nil {
			h.Close()
		}
	}()
	for _, old := range drop.defaultRoutes() {
		v4 := old.Dst.Addr().Is4()
		if hasDefaultRoute(keep, v4) {
			continue // another endpoint has that family's route already
		}
		for i := range keep {
			e := &keep[i]
			route, ok := m.offeredDefaultRoute(ctx, name, e, keep, v4)
			if !ok {
				continue
			}
			if h == nil {
				var err error
				if h, err = sb.NewHandle(); err != nil {
					m.log.Warn("cannot move the default route", "sandbox", name, "error", err)
					return
				}
			}
			link, err := h.LinkByName(e.IfName)
			if err == nil {
				err = h.RouteAdd(drivers.NetlinkRoute(link.Attrs().Index, route))
			}
			if err != nil && !errors.Is(err, unix.EEXIST) {
				m.log.Warn("cannot move the default route", "sandbox", name, "interface", e.IfName, "gateway", route.Gw, "error", err)
				continue
			}
			if err == nil {
				e.addRoute(route)
				m.log.Info("default route moved", "sandbox", name, "interface", e.IfName, "gateway", route.Gw, "onlink", route.OnLink)
			}
			break
		}
	}
}

// offeredDefaultRoute is the default route of a family that the endpoint's driver chooses when offered
// its network's gateways (gatewayOffer against the sandbox's other endpoints), as at attach: the
// driver's PrepareEndpoint, which touches no kernel, is asked again on a copy of the endpoint. A
// driver that leaves Routes empty gets the routes via the offered gateways.
func (m *Manager) offeredDefaultRoute(ctx context.Context, sandboxName string, e *endpointRecord, eps []endpointRecord, v4 bool) (drivers.Route, bool) {
	nrec, err := m.endpointNetwork(ctx, e.Network)
	if err != nil {
		if e.Net == nil {
			return drivers.Route{}, false
		}
		nrec = e.Net.record(e.Network) // the network's record is gone: the endpoint's copy of it
	}
	offer := gatewayOffer(nrec, eps)
	if len(offer) == 0 {
		return drivers.Route{}, false
	}
	de := e.driverEndpoint(sandboxName)
	de.Gateways, de.Routes = offer, nil
	if drv, err := m.driver(nrec.Driver); err != nil {
		// A driver this program does not have cannot be asked: the route via the gateway, as
		// ConfigureInterface sets it for a driver that leaves the routes to the gateways.
		m.log.Debug("default route moved without asking the driver", "sandbox", sandboxName, "network", e.Network, "error", err)
	} else if err := drv.PrepareEndpoint(nrec.driverNetwork(), de); err != nil {
		m.log.Warn("cannot move the default route: the driver refuses the endpoint", "sandbox", sandboxName, "network", e.Network, "error", err)
		return drivers.Route{}, false
	}
	routes := de.Routes
	if routes == nil {
		routes = drivers.DefaultRoutes(offer)
	}
	for _, r := range routes {
		if r.IsDefault() && r.Dst.Addr().Is4() == v4 {
			return r, true
		}
	}
	return drivers.Route{}, false
}
