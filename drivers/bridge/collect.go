package bridge

import (
	"context"
	"fmt"
	"strings"

	"github.com/netmgr/netmgr/drivers"
)

var _ drivers.Collector = (*Driver)(nil)

// Collect implements drivers.Collector. It deletes the host ends of veths (HostIfPrefix) that no
// endpoint names: a sandbox deleted while another process held its namespace leaves its veth alive
// but cut off, and a create killed before its record leaves one too. And it deletes bridges that
// carry this driver's owner mark (the alias "netmgr:ID") under BridgePrefix but that no network
// names: a network create killed after making its bridge and before its record survived leaves one.
// A bridge with ports is left in place and reported as kept. The network lock of the name a bridge
// derives from is held meanwhile, so that a create of that network, which may adopt an existing
// bridge, does not lose it.
func (d *Driver) Collect(ctx context.Context, in drivers.CollectInput) (drivers.CollectResult, error) {
	var res drivers.CollectResult
	h := d.env.HostHandle
	res.Links, res.Errors = drivers.CollectVeths(d.env, d.log, in, HostIfPrefix)

	named := drivers.OptionValues(in.Networks, "bridge")
	ports := drivers.PortsByMaster(in.Links)
	for _, l := range in.Links {
		a := l.Attrs()
		if !MarkedBridge(l) || named[a.Name] {
			continue
		}
		// Ports as listed, including veths deleted above: such a bridge goes at the next gc.
		if p := ports[a.Index]; len(p) > 0 {
			d.log.Warn("gc: bridge marked as netmgr's that no network names has ports; left in place", "ifname", a.Name, "ports", p)
			res.Kept = append(res.Kept, a.Name)
			continue
		}
		release := func() {}
		if nw, ok := strings.CutPrefix(a.Name, BridgePrefix); ok && DefaultBridgeName(nw) == a.Name && in.Hold != nil {
			var held bool
			if release, held = in.Hold(nw); !held {
				continue
			}
		}
		// Read the records again: a create may have recorded a network on this bridge since.
		if in.Named != nil && !in.Named(ctx, "bridge", a.Name) {
			if err := h.LinkDel(l); err == nil {
				d.log.Warn("gc: bridge no network names removed", "ifname", a.Name, "alias", a.Alias)
				res.Devices = append(res.Devices, a.Name)
			} else if !drivers.IsLinkNotFound(err) {
				res.Errors = append(res.Errors, fmt.Errorf("delete bridge %s: %w", a.Name, err))
			}
		}
		release()
	}
	return res, nil
}
