package netmgr

import (
	"context"
	"sort"

	"github.com/vishvananda/netlink"

	"github.com/netmgr/netmgr/drivers"
)

// collectLeftovers has every driver that implements drivers.Collector remove its own host-side
// leftovers that no record names (host ends of veths, bridges, shims): the drivers of recorded
// networks and every registered one, since the networks that made a leftover may have no record left.
// links were listed before the records were read; inUse are the host interfaces endpoint records name.
func (m *Manager) collectLeftovers(ctx context.Context, rep *Report, links []netlink.Link, nets []*networkRecord, inUse map[string]bool) {
	byDriver := map[string][]*drivers.Network{}
	for _, n := range nets {
		byDriver[n.Driver] = append(byDriver[n.Driver], n.driverNetwork())
	}
	names := map[string]bool{}
	for _, n := range m.driverNames() {
		names[n] = true
	}
	for n := range byDriver {
		names[n] = true
	}
	sorted := make([]string, 0, len(names))
	for n := range names {
		sorted = append(sorted, n)
	}
	sort.Strings(sorted)
	hold := func(network string) (func(), bool) {
		l, err := m.tryLock("network-" + network)
		if err != nil {
			return nil, false
		}
		return func() { l.Unlock(!m.networkKnown(context.WithoutCancel(ctx), network)) }, true
	}
	named := func(ctx context.Context, key, v string) bool {
		fresh, err := m.networkRecords(ctx)
		if err != nil {
			return true
		}
		for _, n := range fresh {
			if n.Options[key] == v {
				return true
			}
		}
		return false
	}
	for _, name := range sorted {
		drv, err := m.driver(name)
		if err != nil {
			if len(byDriver[name]) > 0 {
				rep.Errors = append(rep.Errors, err.Error())
			} else {
				m.log.Debug("gc: driver not available to collect its leftovers", "driver", name, "error", err)
			}
			continue
		}
		c, ok := drv.(drivers.Collector)
		if !ok {
			continue
		}
		res, err := c.Collect(ctx, drivers.CollectInput{Links: links, Networks: byDriver[name], InUse: inUse, Hold: hold, Named: named})
		rep.Links = append(rep.Links, res.Links...)
		rep.Bridges = append(rep.Bridges, res.Devices...)
		rep.Unowned = append(rep.Unowned, res.Kept...)
		for _, e := range res.Errors {
			rep.Errors = append(rep.Errors, e.Error())
		}
		if err != nil {
			rep.Errors = append(rep.Errors, err.Error())
		}
	}
}
