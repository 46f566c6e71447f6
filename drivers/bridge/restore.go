package bridge

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

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

// RestoreEndpoint implements drivers.EndpointRestorer. A host end that is off the bridge (the bridge
// was re-created: a new bridge has no ports) is put back on it and set up. A host end that is gone was
// deleted, and its sandbox end with it (a veth pair lives and dies as one): the pair is made again by
// Attach, with the recorded names, MAC, addresses and routes.
func (d *Driver) RestoreEndpoint(ctx context.Context, n *drivers.Network, ep *drivers.Endpoint, sb *sandbox.NetNS) (bool, error) {
	if ep.HostName == "" {
		return false, nil
	}
	hh := d.env.HostHandle
	br, err := hh.LinkByName(n.Options["bridge"])
	if err != nil {
		return false, fmt.Errorf("restore %s: bridge %s: %w", ep.Sandbox, n.Options["bridge"], err)
	}
	host, err := hh.LinkByName(ep.HostName)
	if drivers.IsLinkNotFound(err) {
		sh, err := sb.Handle()
		if err != nil {
			return false, fmt.Errorf("restore %s: %w", ep.Sandbox, err)
		}
		if _, err := sh.LinkByName(ep.IfName); err == nil {
			return false, fmt.Errorf("restore %s: %w: %s in the sandbox is not the endpoint's veth (its host end %s is gone); remove it and run gc again",
				ep.Sandbox, drivers.ErrExists, ep.IfName, ep.HostName)
		}
		if err := d.Attach(ctx, n, ep, sb); err != nil {
			return false, err
		}
		d.log.Debug("veth re-created", "sandbox", ep.Sandbox, "ifname", ep.IfName, "host_ifname", ep.HostName)
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("restore %s: find %s: %w", ep.Sandbox, ep.HostName, err)
	}
	if host.Type() != "veth" {
		return false, fmt.Errorf("restore %s: %w: %s is a %s, not the endpoint's veth", ep.Sandbox, drivers.ErrExists, ep.HostName, host.Type())
	}
	changed := false
	if host.Attrs().MasterIndex != br.Attrs().Index {
		if err := hh.LinkSetMasterByIndex(host, br.Attrs().Index); err != nil {
			if errors.Is(err, unix.EXFULL) {
				return false, fmt.Errorf("restore %s: %w: bridge %s has reached the kernel's limit of 1024 ports", ep.Sandbox, drivers.ErrFull, n.Options["bridge"])
			}
			return false, fmt.Errorf("restore %s: add %s to bridge %s: %w", ep.Sandbox, ep.HostName, n.Options["bridge"], err)
		}
		if boolOpt(n, "hairpin", true) {
			if err := hh.LinkSetHairpin(host, true); err != nil {
				return false, fmt.Errorf("restore %s: hairpin on %s: %w", ep.Sandbox, ep.HostName, err)
			}
		}
		changed = true
	}
	if host.Attrs().Flags&net.FlagUp == 0 {
		if err := hh.LinkSetUp(host); err != nil {
			return false, fmt.Errorf("restore %s: bring up %s: %w", ep.Sandbox, ep.HostName, err)
		}
		changed = true
	}
	if changed {
		d.log.Debug("host end back on its bridge", "sandbox", ep.Sandbox, "host_ifname", ep.HostName, "bridge", n.Options["bridge"])
	}
	return changed, nil
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
