package bridge

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/netmgr/netmgr/drivers"
	"github.com/netmgr/netmgr/sandbox"
)

var (
	_ drivers.NetworkRestorer  = (*Driver)(nil)
	_ drivers.EndpointRestorer = (*Driver)(nil)
	_ drivers.UsageReporter    = (*Driver)(nil)
)

// RestoreNetwork implements drivers.NetworkRestorer: when the bridge is missing, down or lacks a
// gateway address, it runs CreateNetwork and reports true.
func (d *Driver) RestoreNetwork(ctx context.Context, n *drivers.Network) (bool, error) {
	if d.bridgeIntact(n) {
		return false, nil
	}
	if err := d.CreateNetwork(ctx, n); err != nil {
		return false, err
	}
	return true, nil
}

// bridgeIntact reports whether n's bridge exists, is up and carries every gateway of n.
func (d *Driver) bridgeIntact(n *drivers.Network) bool {
	h := d.env.HostHandle
	link, err := h.LinkByName(n.Options["bridge"])
	if err != nil || link.Type() != "bridge" || link.Attrs().Flags&net.FlagUp == 0 {
		return false
	}
	addrs, err := h.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return false
	}
	have := map[netip.Addr]bool{}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			have[ip.Unmap()] = true
		}
	}
	for _, gw := range n.Gateways {
		if !have[gw] {
			return false
		}
	}
	return true
}

// RestoreEndpoint implements drivers.EndpointRestorer (drivers.RestoreVeth: a host end off the
// bridge is put back on it, a veth pair deleted by hand is made again).
func (d *Driver) RestoreEndpoint(ctx context.Context, n *drivers.Network, ep *drivers.Endpoint, sb *sandbox.NetNS) (bool, error) {
	return drivers.RestoreVeth(d.env, d.log, n.Options["bridge"], boolOpt(n, "hairpin", true), ep, sb)
}

// MarkedBridge reports whether l is a bridge that this driver made for some network: a derived name
// (BridgePrefix) and the owner alias. gc removes such bridges when no network names them.
func MarkedBridge(l netlink.Link) bool {
	return l.Type() == "bridge" && strings.HasPrefix(l.Attrs().Name, BridgePrefix) &&
		strings.HasPrefix(l.Attrs().Alias, ownerAliasPrefix)
}

// NetworkUsers implements drivers.UsageReporter: the ports of n's bridge. On a bridge this driver made
// for n every port is a user; on someone else's bridge (--opt bridge=NAME) only the host ends of
// netmgr's endpoints are.
func (d *Driver) NetworkUsers(ctx context.Context, n *drivers.Network) ([]string, error) {
	h := d.env.HostHandle
	br, err := h.LinkByName(n.Options["bridge"])
	if drivers.IsLinkNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("bridge %s: %w", n.Options["bridge"], err)
	}
	if br.Type() != "bridge" {
		return nil, nil
	}
	ours := br.Attrs().Alias == ownerAlias(n)
	// A dump interrupted by a concurrent change may miss ports; this answer decides whether a bridge
	// is deleted, so it is asked again rather than trusted.
	links, err := drivers.LinkList(h)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var users []string
	for _, l := range links {
		a := l.Attrs()
		if a.MasterIndex == br.Attrs().Index && (ours || strings.HasPrefix(a.Name, HostIfPrefix)) {
			users = append(users, a.Name)
		}
	}
	return users, nil
}
