package macvlan

import (
	"context"
	"fmt"
	"strings"

	"github.com/netmgr/netmgr/drivers"
)

var _ drivers.Collector = (*Driver)(nil)

// Collect implements drivers.Collector: it deletes host shims (macvlan links named with ShimPrefix)
// that no network names, such as the shim of a network whose delete was interrupted after its record
// went, or of a state file lost. Shims named by the user (--opt shim_name=NAME) are never collected.
// The routes through a shim to pods die with it.
func (d *Driver) Collect(ctx context.Context, in drivers.CollectInput) (drivers.CollectResult, error) {
	var res drivers.CollectResult
	named := map[string]bool{}
	for _, n := range in.Networks {
		if on, _ := shimOn(n); on {
			named[n.Options[OptShimName]] = true
		}
	}
	for _, l := range in.Links {
		name := l.Attrs().Name
		if l.Type() != "macvlan" || !strings.HasPrefix(name, ShimPrefix) || named[name] {
			continue
		}
		// Read the records again: a create may have recorded a network with this shim since.
		if in.Named == nil || in.Named(ctx, OptShimName, name) {
			continue
		}
		if err := d.env.HostHandle.LinkDel(l); err != nil && !drivers.IsLinkNotFound(err) {
			res.Errors = append(res.Errors, fmt.Errorf("delete shim %s: %w", name, err))
			continue
		}
		d.log.Warn("gc: shim no network names deleted", "ifname", name)
		res.Devices = append(res.Devices, name)
	}
	return res, nil
}
