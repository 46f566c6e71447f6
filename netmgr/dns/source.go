package dns

import (
	"context"
	"net/netip"
	"strconv"

	"github.com/netmgr/netmgr/netmgr"
)

// ManagerSource reads networks and sandboxes from a Manager: every network of this node (a local
// one it owns, or a cluster network it joined, with this node's gateways) whose dns option is not
// false, and every sandbox of this node with its addresses and aliases on them.
type ManagerSource struct{ M *netmgr.Manager }

// DNSEnabled reports whether a network's options leave DNS on (the default).
func DNSEnabled(opts map[string]string) bool {
	v, ok := opts[OptDNS]
	if !ok {
		return true
	}
	on, err := strconv.ParseBool(v)
	return err != nil || on
}

// Hosts implements HostSource.
func (s ManagerSource) Hosts(ctx context.Context) ([]Net, []Host, error) {
	nets, err := s.M.Networks(ctx)
	if err != nil {
		return nil, nil, err
	}
	var joined map[string]*netmgr.Joined
	var out []Net
	for _, n := range nets {
		if !DNSEnabled(n.Options) {
			continue
		}
		dn := Net{Name: n.Name, Internal: n.Internal}
		switch {
		case n.Scope == "global":
			if joined == nil {
				js, err := s.M.JoinedNetworks(ctx)
				if err != nil {
					return nil, nil, err
				}
				joined = map[string]*netmgr.Joined{}
				for _, j := range js {
					joined[j.Network] = j
				}
			}
			j := joined[n.Name]
			if j == nil {
				continue // not on this node
			}
			dn.Subnets, dn.Gateways, dn.Spans = j.View.Subnets, j.View.Gateways, true
		case n.Node == "" || n.Node == s.M.Node():
			dn.Subnets, dn.Gateways = n.Subnets, n.Gateways
		default:
			continue // another host's local network
		}
		var gws []netip.Addr
		for _, g := range dn.Gateways {
			if g.IsValid() && !g.IsUnspecified() {
				gws = append(gws, g.Unmap())
			}
		}
		dn.Gateways = gws
		if len(dn.Gateways) > 0 {
			out = append(out, dn)
		}
	}
	sbs, err := s.M.Sandboxes(ctx)
	if err != nil {
		return nil, nil, err
	}
	hosts := make([]Host, 0, len(sbs))
	for _, sb := range sbs {
		h := Host{Name: sb.Name, Aliases: sb.Aliases, Addrs: map[string][]netip.Addr{}}
		for _, a := range sb.Attachments {
			for _, p := range []netip.Prefix{a.IPv4, a.IPv6} {
				if p.IsValid() {
					h.Addrs[a.Network] = append(h.Addrs[a.Network], p.Addr().Unmap())
				}
			}
		}
		hosts = append(hosts, h)
	}
	return out, hosts, nil
}
