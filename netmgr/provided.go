package netmgr

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	"github.com/netmgr/netmgr/drivers"
	"github.com/netmgr/netmgr/netmgr/store"
)

// providesAddresses reports whether drv assigns the addresses of n's endpoints itself
// (drivers.AddressProvider), which keeps netmgr's IPAM out of that network.
func providesAddresses(drv drivers.Driver, n *networkRecord) bool {
	ap, ok := drv.(drivers.AddressProvider)
	return ok && ap.ProvidesAddresses(n.driverNetwork())
}

// adoptAttached copies into eps[0] what Attach decided: the MAC, the default routes it set (a driver
// leaves out a family whose default route the namespace has already, see drivers.ConfigureInterface),
// and for a network whose driver provides the addresses, the addresses and host interface it
// reported. eps[1:] are the sandbox's endpoints still to attach: a default route the driver reported
// wins over theirs, which netmgr planned before it could know.
func adoptAttached(eps []endpointRecord, de *drivers.Endpoint, ns *netState) {
	e := &eps[0]
	e.MAC, e.Gateways, e.Routes = de.MAC, de.Gateways, de.Routes
	if !providesAddresses(ns.drv, ns.rec) {
		return
	}
	e.Addrs, e.HostName = de.Addrs, de.HostName
	for i := 1; i < len(eps); i++ {
		var keep []netip.Addr
		for _, g := range eps[i].Gateways {
			if !hasDefaultRoute(eps[:1], g.Is4()) {
				keep = append(keep, g)
			}
		}
		eps[i].Gateways = keep
		var routes []drivers.Route
		for _, r := range eps[i].Routes {
			if !r.IsDefault() || !hasDefaultRoute(eps[:1], r.Dst.Addr().Is4()) {
				routes = append(routes, r)
			}
		}
		eps[i].Routes = routes
	}
}

// providedAllocations returns the writes that record the addresses drivers provided to the sandbox's
// endpoints as its allocations, committed with the attached sandbox record. netmgr's own allocations
// were written before the kernel was touched and need none. eps[i] is on nets[i].
func providedAllocations(sandboxName string, eps []endpointRecord, nets []*netState) []store.Op {
	var ops []store.Op
	for i, e := range eps {
		if i >= len(nets) || !providesAddresses(nets[i].drv, nets[i].rec) {
			continue
		}
		for _, a := range e.Addrs {
			ops = append(ops, store.Put(ipamKey(e.Network, a.Addr()), []byte(sandboxName)))
		}
	}
	return ops
}

// refuseAttaching returns ErrInUse if a sandbox record has an endpoint on the network. It backs the
// allocation check of DeleteNetwork for networks whose driver provides the addresses: those are
// recorded only once attached, so an attach in flight shows in the sandbox record alone.
func (m *Manager) refuseAttaching(ctx context.Context, network string) error {
	recs, err := m.sandboxRecords(ctx)
	if err != nil {
		return err
	}
	var names []string
	for _, r := range recs {
		for _, e := range r.Endpoints {
			if e.Network == network {
				names = append(names, r.Name)
				break
			}
		}
	}
	if len(names) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %d sandbox(es) attached (%s); remove them first", ErrInUse, len(names), strings.Join(names, ", "))
}
