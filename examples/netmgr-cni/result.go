package main

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/sandbox"
)

// buildResult describes the attachment the way the spec asks: the host end and the container
// interface (with its sandbox path), each address with the index of its interface and the gateway
// its default route goes through, the default routes, and the configuration's DNS. A prevResult (netmgr-cni placed after
// another interface-creating plugin) is kept and extended.
func buildResult(c *config, n *netmgr.Network, sb *netmgr.Sandbox, args *skel.CmdArgs) (*types100.Result, error) {
	r := &types100.Result{CNIVersion: types100.ImplementedSpecVersion}
	if c.conf.PrevResult != nil {
		prev, err := types100.NewResultFromResult(c.conf.PrevResult)
		if err != nil {
			return nil, fmt.Errorf("%w: convert prevResult: %v", netmgr.ErrInvalid, err)
		}
		r = prev
	}
	var at *netmgr.Attachment
	for i := range sb.Attachments {
		if sb.Attachments[i].Network == c.conf.Name {
			at = &sb.Attachments[i]
		}
	}
	if at == nil {
		return nil, fmt.Errorf("sandbox %s has no attachment to network %q", sb.Name, c.conf.Name)
	}
	if at.HostInterface != "" {
		hi := &types100.Interface{Name: at.HostInterface}
		if l, err := netlink.LinkByName(at.HostInterface); err == nil {
			hi.Mac = l.Attrs().HardwareAddr.String()
		}
		r.Interfaces = append(r.Interfaces, hi)
	}
	r.Interfaces = append(r.Interfaces, &types100.Interface{Name: at.Interface, Mac: at.MAC, Sandbox: args.Netns})
	idx := len(r.Interfaces) - 1
	for _, a := range at.Addrs {
		ipc := &types100.IPConfig{Interface: types100.Int(idx), Address: ipNet(a)}
		// The gateway is named only where this interface routes through it: a second attachment in a
		// namespace that has its default route of the family already has none (see drivers.ConfigureInterface).
		for i, sn := range n.Subnets {
			if sn.Contains(a.Addr()) && i < len(n.Gateways) && slices.Contains(at.Gateways, n.Gateways[i]) {
				ipc.Gateway = n.Gateways[i].AsSlice()
			}
		}
		r.IPs = append(r.IPs, ipc)
	}
	for _, g := range at.Gateways {
		dst := net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
		if g.Is6() {
			dst = net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
		}
		r.Routes = append(r.Routes, &types.Route{Dst: dst, GW: g.AsSlice()})
	}
	if !c.conf.DNS.IsEmpty() {
		r.DNS = c.conf.DNS
	} else if ns, ok := networkDNS(n, at); ok {
		r.DNS = types.DNS{Nameservers: []string{ns.String()}}
	}
	return r, nil
}

// networkDNS is the network's DNS server for this attachment, when there is one: netmgr/dns listens
// on the gateways of every network whose dns option is not false, on the host's own interfaces (a
// bridge or overlay network; a macvlan or cni network's gateway is someone else's). An IPv4 gateway
// the attachment routes through comes first.
func networkDNS(n *netmgr.Network, at *netmgr.Attachment) (netip.Addr, bool) {
	if v, ok := n.Options["dns"]; ok {
		if on, err := strconv.ParseBool(v); err == nil && !on {
			return netip.Addr{}, false
		}
	}
	if n.Driver == "macvlan" || n.Driver == "cni" {
		return netip.Addr{}, false
	}
	var best netip.Addr
	for _, g := range n.Gateways {
		if !g.IsValid() || !slices.Contains(at.Gateways, g) && len(at.Gateways) > 0 {
			continue
		}
		if !best.IsValid() || g.Is4() && !best.Is4() {
			best = g
		}
	}
	return best, best.IsValid()
}

func ipNet(p netip.Prefix) net.IPNet {
	return net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// checkAttachment compares the kernel with the record: the container interface exists in the netns
// CHECK names, is up, has the recorded MAC address, and carries every recorded address and default
// route; the host end exists, is up and is a port of the network's bridge; and a prevResult, if any,
// reports the recorded addresses for the interface.
func checkAttachment(c *config, n *netmgr.Network, sb *netmgr.Sandbox, args *skel.CmdArgs) error {
	var at *netmgr.Attachment
	for i := range sb.Attachments {
		if sb.Attachments[i].Network == c.conf.Name {
			at = &sb.Attachments[i]
		}
	}
	if at == nil {
		return checkFailed("container %s: no attachment to network %q in the record", args.ContainerID, c.conf.Name)
	}
	if !sameNetNS(sb.NetNS, args.Netns) {
		return checkFailed("container %s interface %s was added in netns %s, not %s", args.ContainerID, args.IfName, sb.NetNS, args.Netns)
	}
	ns, err := sandbox.Open(args.Netns)
	if err != nil {
		return types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("check: %v", err), "")
	}
	defer ns.Close()
	h, err := ns.NewHandle()
	if err != nil {
		return types.NewError(types.ErrInternal, fmt.Sprintf("check: %v", err), "")
	}
	defer h.Close()
	link, err := h.LinkByName(at.Interface)
	if err != nil {
		return checkFailed("interface %s is missing from netns %s", at.Interface, args.Netns)
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		return checkFailed("interface %s in netns %s is down", at.Interface, args.Netns)
	}
	if mac := link.Attrs().HardwareAddr.String(); at.MAC != "" && !strings.EqualFold(mac, at.MAC) {
		return checkFailed("interface %s in netns %s has MAC address %s, not its own %s", at.Interface, args.Netns, mac, at.MAC)
	}
	addrs, err := h.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return types.NewError(types.ErrInternal, fmt.Sprintf("check: list addresses of %s: %v", at.Interface, err), "")
	}
	var have []netip.Prefix
	for _, a := range addrs {
		if p, ok := prefixOf(a.IPNet); ok {
			have = append(have, p)
		}
	}
	for _, want := range at.Addrs {
		if !slices.Contains(have, want) {
			return checkFailed("interface %s in netns %s lacks its address %s (has %v)", at.Interface, args.Netns, want, have)
		}
	}
	for _, g := range at.Gateways {
		fam := unix.AF_INET
		if g.Is6() {
			fam = unix.AF_INET6
		}
		routes, err := h.RouteList(link, fam)
		if err != nil {
			return types.NewError(types.ErrInternal, fmt.Sprintf("check: list routes of %s: %v", at.Interface, err), "")
		}
		found := false
		for _, rt := range routes {
			gw, _ := netip.AddrFromSlice(rt.Gw)
			if (rt.Dst == nil || isDefault(rt.Dst)) && gw.Unmap() == g {
				found = true
			}
		}
		if !found {
			return checkFailed("netns %s has no default route via %s on %s", args.Netns, g, at.Interface)
		}
	}
	if at.HostInterface != "" {
		hl, err := netlink.LinkByName(at.HostInterface)
		if err != nil {
			return checkFailed("host interface %s of container %s is missing", at.HostInterface, args.ContainerID)
		}
		if hl.Attrs().Flags&net.FlagUp == 0 {
			return checkFailed("host interface %s of container %s is down", at.HostInterface, args.ContainerID)
		}
		if bridge := n.Options["bridge"]; bridge != "" {
			br, err := netlink.LinkByName(bridge)
			if err != nil {
				return checkFailed("bridge %s of network %q is missing", bridge, n.Name)
			}
			if hl.Attrs().MasterIndex != br.Attrs().Index {
				return checkFailed("host interface %s of container %s is not a port of bridge %s", at.HostInterface, args.ContainerID, bridge)
			}
		}
	}
	if c.conf.PrevResult != nil {
		prev, err := types100.NewResultFromResult(c.conf.PrevResult)
		if err != nil {
			return invalidConf("check: convert prevResult: %v", err)
		}
		for _, ipc := range prev.IPs {
			if ipc.Interface == nil || *ipc.Interface >= len(prev.Interfaces) {
				continue
			}
			intf := prev.Interfaces[*ipc.Interface]
			if intf.Name != at.Interface || intf.Sandbox == "" {
				continue
			}
			p, ok := prefixOf(&ipc.Address)
			if ok && !slices.Contains(at.Addrs, p) {
				return checkFailed("prevResult reports %s on %s, which netmgr did not assign (it assigned %v)", p, at.Interface, at.Addrs)
			}
		}
	}
	return nil
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

func isDefault(n *net.IPNet) bool {
	ones, _ := n.Mask.Size()
	return ones == 0
}
