package bridge

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netmgr/netmgr/drivers"
	"github.com/netmgr/netmgr/sandbox"
)

// Name is the driver's registry name.
const Name = "bridge"

// HostIfPrefix starts the name of every host-side veth this driver creates; Collect relies on it.
const HostIfPrefix = "nmv"

// BridgePrefix starts every bridge name this driver derives.
const BridgePrefix = "nm-"

const defaultMTU = 1500

func init() { drivers.Register(Name, New) }

// Driver implements drivers.Driver for Linux bridges.
type Driver struct {
	env drivers.Env
	log *slog.Logger
}

// New returns a bridge driver working in env.Host.
func New(env drivers.Env) (drivers.Driver, error) {
	log, err := env.DriverLogger(Name)
	if err != nil {
		return nil, err
	}
	return &Driver{env: env, log: log}, nil
}

// "dns" (a boolean) is netmgr's embedded DNS server's switch (netmgr/dns); the driver only checks it.
var knownOpts = map[string]bool{"bridge": true, "masquerade": true, "hairpin": true, OptGatewayMode: true, "dns": true}

// OptGatewayMode is the option that says whether hosts that route the network's subnets via this
// host may open connections to its sandboxes, after Docker's gateway_mode_ipv4/ipv6:
// GatewayModeNAT (the default) lets in only published ports and replies; GatewayModeRouted lets in
// everything and makes masquerade default to false (masquerade=true with it is Docker's
// nat-unprotected).
const (
	OptGatewayMode    = "gateway_mode"
	GatewayModeNAT    = "nat"
	GatewayModeRouted = "routed"
)

// PrepareNetwork implements drivers.Driver.
func (d *Driver) PrepareNetwork(n *drivers.Network, existing []*drivers.Network) error {
	if len(n.Subnets) == 0 {
		return fmt.Errorf("%w: bridge network %q needs at least one subnet", drivers.ErrInvalid, n.Name)
	}
	if n.Options == nil {
		n.Options = map[string]string{}
	}
	for k, v := range n.Options {
		if !knownOpts[k] {
			return fmt.Errorf("%w: unknown bridge option %q (known: bridge, masquerade, hairpin, gateway_mode, dns)", drivers.ErrInvalid, k)
		}
		if k == OptGatewayMode {
			if v != GatewayModeNAT && v != GatewayModeRouted {
				return fmt.Errorf("%w: option %s=%q is not %s or %s", drivers.ErrInvalid, k, v, GatewayModeNAT, GatewayModeRouted)
			}
			if n.Internal {
				return fmt.Errorf("%w: option %s: an internal network has no gateway to the outside", drivers.ErrInvalid, k)
			}
		} else if k != "bridge" {
			on, err := strconv.ParseBool(v)
			if err != nil {
				return fmt.Errorf("%w: option %s=%q is not a boolean", drivers.ErrInvalid, k, v)
			}
			if k == "masquerade" && on && n.Internal {
				return fmt.Errorf("%w: option masquerade=true: an internal network's traffic never leaves it", drivers.ErrInvalid)
			}
		}
	}
	if n.Options["bridge"] == "" {
		n.Options["bridge"] = DefaultBridgeName(n.Name)
	}
	if err := drivers.CheckIfName("bridge", n.Options["bridge"]); err != nil {
		return err
	}
	for _, o := range existing {
		if o.Options["bridge"] == n.Options["bridge"] {
			return fmt.Errorf("%w: bridge %q is already used by network %q", drivers.ErrExists, n.Options["bridge"], o.Name)
		}
	}
	if n.MTU < 0 || n.MTU > 65535 || (n.MTU > 0 && n.MTU < 68) {
		return fmt.Errorf("%w: mtu %d is outside 68..65535", drivers.ErrInvalid, n.MTU)
	}
	if err := drivers.CheckIPv6MTU(n, n.MTU); err != nil {
		return err
	}
	return nil
}

// DefaultBridgeName derives a bridge name that fits IFNAMSIZ from a network name.
func DefaultBridgeName(network string) string {
	if name := BridgePrefix + network; len(name) <= drivers.MaxIfNameLen && drivers.CheckIfName("bridge", name) == nil {
		return name
	}
	sum := sha256.Sum256([]byte(network))
	return BridgePrefix + hex.EncodeToString(sum[:])[:drivers.MaxIfNameLen-len(BridgePrefix)]
}

func mtuOf(n *drivers.Network) int {
	if n.MTU > 0 {
		return n.MTU
	}
	return defaultMTU
}

func boolOpt(n *drivers.Network, k string, def bool) bool {
	if v, ok := n.Options[k]; ok {
		b, err := strconv.ParseBool(v)
		if err == nil {
			return b
		}
	}
	return def
}

// CreateNetwork implements drivers.Driver: the bridge with its gateway addresses, up, and forwarding on.
//
// The bridge is made with its owner mark in the one RTM_NEWLINK that creates it: the kernel ignores
// IFLA_IFALIAS on a create (it applies the alias only to an existing link), so the first message sets
// a MAC derived from the network's ID (ownerMAC), and the alias follows at once. A process killed in
// between leaves a bridge that DeleteNetwork still knows as its own, where an unmarked one would be
// taken for the user's and left behind for ever (FAULTS §7).
func (d *Driver) CreateNetwork(ctx context.Context, n *drivers.Network) (err error) {
	h := d.env.HostHandle
	name := n.Options["bridge"]
	created := false
	link, err := h.LinkByName(name)
	switch {
	case err == nil:
		if link.Type() != "bridge" {
			return fmt.Errorf("create bridge %s: %w: a %s link of that name exists", name, drivers.ErrExists, link.Type())
		}
		if err := drivers.CheckIPv6MTU(n, link.Attrs().MTU); err != nil {
			return fmt.Errorf("create bridge %s: %w (the MTU of the existing bridge)", name, err)
		}
		if link.Attrs().Alias == ownerAlias(n) {
			break
		}
		mine, err := d.unmarkedOwn(link, n, true)
		if err != nil {
			return fmt.Errorf("create bridge %s: %w", name, err)
		}
		if !mine {
			break // the user's bridge: use it, never delete it
		}
		if err := h.LinkSetAlias(link, ownerAlias(n)); err != nil {
			return fmt.Errorf("create bridge %s: mark it: %w", name, err)
		}
		created = true
		d.log.Info("adopted an unmarked bridge left by an interrupted create", "network", n.Name, "ifname", name)
	case drivers.IsLinkNotFound(err):
		br := newBridge(n)
		if err := h.LinkAdd(br); err != nil {
			return fmt.Errorf("create bridge %s: %w", name, err)
		}
		created = true
		d.log.Debug("bridge created", "network", n.Name, "ifname", name)
		if link, err = h.LinkByName(name); err != nil {
			_ = h.LinkDel(br)
			return fmt.Errorf("create bridge %s: %w", name, err)
		}
		// The alias is the mark people and DeleteNetwork read: DeleteNetwork removes only bridges so
		// marked (or still bearing ownerMAC alone), and leaves a bridge the user made
		// (--opt bridge=br0) in place.
		if err := h.LinkSetAlias(link, ownerAlias(n)); err != nil {
			_ = h.LinkDel(br)
			return fmt.Errorf("create bridge %s: mark it: %w", name, err)
		}
	default:
		return fmt.Errorf("create bridge %s: %w", name, err)
	}
	defer func() {
		if err != nil && created {
			if derr := h.LinkDel(link); derr != nil && !drivers.IsLinkNotFound(derr) {
				d.log.Warn("rollback: delete bridge", "ifname", name, "error", derr)
			}
		}
	}()
	for i, sn := range n.Subnets {
		gw := netip.PrefixFrom(n.Gateways[i], sn.Bits())
		addr := &netlink.Addr{IPNet: drivers.IPNet(gw)}
		if gw.Addr().Is6() {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := h.AddrReplace(link, addr); err != nil {
			return fmt.Errorf("set gateway %s on %s: %w", gw, name, err)
		}
	}
	if created && hasIPv6(n) {
		if err := d.noDAD(name); err != nil {
			return err
		}
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring up bridge %s: %w", name, err)
	}
	if err := d.enableForwarding(n); err != nil {
		return err
	}
	return nil
}

// newBridge is the link CreateNetwork asks the kernel for, in one RTM_NEWLINK: its MAC is the owner
// mark. Alias is set too, for a kernel that one day honours it on a create.
func newBridge(n *drivers.Network) *netlink.Bridge {
	return &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{
		Name: n.Options["bridge"], MTU: mtuOf(n), TxQLen: -1,
		HardwareAddr: ownerMAC(n), Alias: ownerAlias(n),
	}}
}

// ownerMAC is the MAC of a bridge netmgr made for n: locally administered, unicast, from a hash of
// the network's ID, so it marks the bridge as n's from its first message. A bridge keeps a MAC set
// this way when ports join (the kernel no longer takes the lowest port's).
func ownerMAC(n *drivers.Network) net.HardwareAddr {
	sum := sha256.Sum256([]byte("netmgr bridge " + n.ID))
	mac := net.HardwareAddr(sum[:6])
	mac[0] = mac[0]&^0x01 | 0x02
	return mac
}

// unmarkedOwn reports whether a bridge of n's name that lacks the owner alias is nonetheless n's: one
// that still bears ownerMAC (its create was interrupted before the alias was set). With legacy (only
// CreateNetwork asks: it runs when n is being created, or is re-run to restore it; DeleteNetwork
// cannot tell a rollback from a user's delete), it also takes a bridge that an older
// netmgr leaked the same way before ownerMAC existed: no alias, the name netmgr derives from the
// network name, no ports and no addresses but link-local ones and n's gateways. A bridge that has
// ports or addresses of the user's, or whose name is not the derived one (--opt bridge=br0), is
// never taken. (A bridge the user made with netmgr's own derived name, nm-<network>, and left empty
// looks the same as a leaked one; the nm- prefix is netmgr's.)
func (d *Driver) unmarkedOwn(link netlink.Link, n *drivers.Network, legacy bool) (bool, error) {
	a := link.Attrs()
	if a.Alias != "" || link.Type() != "bridge" {
		return false, nil
	}
	if bytes.Equal(a.HardwareAddr, ownerMAC(n)) {
		return true, nil
	}
	if !legacy || a.Name != DefaultBridgeName(n.Name) {
		return false, nil
	}
	h := d.env.HostHandle
	links, err := drivers.LinkList(h)
	if err != nil {
		return false, fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		if l.Attrs().MasterIndex == a.Index {
			return false, nil
		}
	}
	addrs, err := drivers.AddrList(h, link, netlink.FAMILY_ALL)
	if err != nil {
		return false, fmt.Errorf("list addresses of %s: %w", a.Name, err)
	}
	gws := map[netip.Prefix]bool{}
	for i, sn := range n.Subnets {
		gws[netip.PrefixFrom(n.Gateways[i], sn.Bits())] = true
	}
	for _, ad := range addrs {
		ip, ok := netip.AddrFromSlice(ad.IP)
		if !ok {
			return false, nil
		}
		ones, _ := ad.Mask.Size()
		if ip.Unmap().IsLinkLocalUnicast() || gws[netip.PrefixFrom(ip.Unmap(), ones)] {
			continue
		}
		return false, nil
	}
	return true, nil
}

// enableForwarding switches on IP forwarding in the host namespace for the families the network
// uses (drivers.EnableForwarding says how IPv6 forwarding keeps router advertisements accepted).
func (d *Driver) enableForwarding(n *drivers.Network) error {
	return drivers.EnableForwarding(d.env, d.log, n.Subnets)
}

// noDAD turns duplicate address detection off on a bridge netmgr made, before it comes up
// (drivers.NoDAD says why).
func (d *Driver) noDAD(bridge string) error {
	if err := drivers.NoDAD(d.env, bridge); err != nil {
		return fmt.Errorf("create bridge %s: %w", bridge, err)
	}
	return nil
}

func hasIPv6(n *drivers.Network) bool {
	for _, sn := range n.Subnets {
		if sn.Addr().Is6() {
			return true
		}
	}
	return false
}

// DeleteNetwork implements drivers.Driver.
func (d *Driver) DeleteNetwork(ctx context.Context, n *drivers.Network) error {
	name := n.Options["bridge"]
	link, err := d.env.HostHandle.LinkByName(name)
	if drivers.IsLinkNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete bridge %s: %w", name, err)
	}
	if link.Type() != "bridge" {
		return nil // not ours any more
	}
	mine := link.Attrs().Alias == ownerAlias(n)
	if !mine {
		if mine, err = d.unmarkedOwn(link, n, false); err != nil {
			return fmt.Errorf("delete bridge %s: %w", name, err)
		}
	}
	if !mine {
		// Someone else's bridge that the network used: take back only the gateway addresses.
		for i, sn := range n.Subnets {
			gw := netip.PrefixFrom(n.Gateways[i], sn.Bits())
			if err := d.env.HostHandle.AddrDel(link, &netlink.Addr{IPNet: drivers.IPNet(gw)}); err != nil &&
				!errors.Is(err, unix.EADDRNOTAVAIL) && !drivers.IsLinkNotFound(err) {
				return fmt.Errorf("remove gateway %s from %s: %w", gw, name, err)
			}
		}
		return nil
	}
	if err := d.env.HostHandle.LinkDel(link); err != nil && !drivers.IsLinkNotFound(err) {
		return fmt.Errorf("delete bridge %s: %w", name, err)
	}
	return nil
}

// ownerAliasPrefix starts the alias of every bridge netmgr made.
const ownerAliasPrefix = drivers.OwnerAliasPrefix

// ownerAlias is the interface alias of a bridge netmgr made for n.
func ownerAlias(n *drivers.Network) string { return drivers.OwnerAlias(n) }

// HostIfName derives the host-side veth name of an endpoint from its ID.
func HostIfName(endpointID string) string { return drivers.HostIfName(HostIfPrefix, endpointID) }

// PrepareEndpoint implements drivers.Driver.
func (d *Driver) PrepareEndpoint(n *drivers.Network, ep *drivers.Endpoint) error {
	if err := drivers.CheckIfName("interface", ep.IfName); err != nil {
		return err
	}
	if ep.MAC != "" {
		if _, err := drivers.ParseMAC(ep.MAC); err != nil {
			return err
		}
	}
	ep.HostName = HostIfName(ep.ID)
	// The sandbox reaches the world through the bridge's gateway addresses that netmgr offers.
	ep.Routes = drivers.DefaultRoutes(ep.Gateways)
	if ep.MTU == 0 {
		ep.MTU = mtuOf(n)
	}
	return nil
}

// Attach implements drivers.Driver: a veth pair with its host end on the bridge (drivers.AttachVeth).
func (d *Driver) Attach(ctx context.Context, n *drivers.Network, ep *drivers.Endpoint, sb *sandbox.NetNS) error {
	return drivers.AttachVeth(d.env, d.log, n.Options["bridge"], boolOpt(n, "hairpin", true), ep, sb)
}

// Detach implements drivers.Driver (drivers.DetachVeth: the host end is only set down when the
// namespace is going, and deleted otherwise).
func (d *Driver) Detach(ctx context.Context, n *drivers.Network, ep *drivers.Endpoint, sb *sandbox.NetNS, opts drivers.DetachOptions) error {
	return drivers.DetachVeth(d.env, ep, sb, opts)
}

// Firewall implements drivers.Firewaller: the bridge is the network's one host interface, and its
// sandboxes can be targets of published ports.
func (d *Driver) Firewall(n *drivers.Network) (drivers.FirewallSpec, bool) {
	routed := n.Options[OptGatewayMode] == GatewayModeRouted
	return drivers.FirewallSpec{
		HostIfaces:  []string{n.Options["bridge"]},
		Masquerade:  boolOpt(n, "masquerade", !routed) && !n.Internal,
		Routed:      routed && !n.Internal,
		PortTargets: true,
	}, true
}

// DefaultPool is where bridge networks created without a subnet get one, a /24 at a time, as
// Podman does.
var DefaultPool = netip.MustParsePrefix("10.89.0.0/16")

// DefaultSubnet implements drivers.DefaultSubnetter: a bridge network always has a subnet.
func (d *Driver) DefaultSubnet(*drivers.Network) (netip.Prefix, int) { return DefaultPool, 24 }
