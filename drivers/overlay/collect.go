package overlay

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/netmgr/netmgr/drivers"
)

// Collect implements drivers.Collector. It deletes the host ends of this driver's veths
// (HostIfPrefix) that no endpoint names, and the VXLAN devices and bridges of this driver
// (VXLANPrefix, BridgePrefix, unmarked or marked as netmgr's) whose VNI no recorded overlay network
// has: a network deleted while this node was down, or a Join killed half way for a network gone
// since. A bridge with ports is left in place and reported as kept. Before a device goes, the store
// is asked again (in.Named) whether a network created since the list has its VNI.
func (d *Driver) Collect(ctx context.Context, in drivers.CollectInput) (drivers.CollectResult, error) {
	var res drivers.CollectResult
	res.Links, res.Errors = drivers.CollectVeths(d.env, d.log, in, HostIfPrefix)

	named := drivers.OptionValues(in.Networks, OptVNI)
	ports := drivers.PortsByMaster(in.Links)
	for _, l := range in.Links {
		a := l.Attrs()
		var vni string
		switch {
		case l.Type() == "vxlan" && strings.HasPrefix(a.Name, VXLANPrefix):
			vni = strings.TrimPrefix(a.Name, VXLANPrefix)
		case l.Type() == "bridge" && strings.HasPrefix(a.Name, BridgePrefix):
			vni = strings.TrimPrefix(a.Name, BridgePrefix)
		default:
			continue
		}
		if _, err := strconv.Atoi(vni); err != nil || named[vni] || (a.Alias != "" && !strings.HasPrefix(a.Alias, drivers.OwnerAliasPrefix)) {
			continue
		}
		if p := ports[a.Index]; len(p) > 0 {
			d.log.Warn("gc: overlay bridge that no network names has ports; left in place", "ifname", a.Name, "ports", p)
			res.Kept = append(res.Kept, a.Name)
			continue
		}
		if in.Named != nil && in.Named(ctx, OptVNI, vni) {
			continue
		}
		if err := d.env.HostHandle.LinkDel(l); err != nil {
			if !drivers.IsLinkNotFound(err) {
				res.Errors = append(res.Errors, fmt.Errorf("delete %s: %w", a.Name, err))
			}
			continue
		}
		d.log.Warn("gc: overlay device no network names removed", "ifname", a.Name, "alias", a.Alias)
		res.Devices = append(res.Devices, a.Name)
	}
	return res, nil
}
