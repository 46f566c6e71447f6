package bridge

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netmgr/netmgr/drivers"
	"github.com/netmgr/netmgr/netmgr/firewall"
	"github.com/netmgr/netmgr/sandbox"
)

// Name is the driver's registry name.
const Name = "bridge"

// HostIfPrefix starts the name of every host-side veth this driver creates; gc relies on it.
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
	if env.Host == nil || env.HostHandle == nil {
		return nil, fmt.Errorf("bridge driver: %w: no host namespace", drivers.ErrInvalid)
	}
	log := env.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Driver{env: env, log: log.With("driver", Name)}, nil
}

var knownOpts = map[string]bool{"bridge": true, "masquerade": true, "hairpin": true, OptGatewayMode: true}

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
			return fmt.Errorf("%w: unknown bridge option %q (known: bridge, masquerade, hairpin, gateway_mode)", drivers.ErrInvalid, k)
		}
		if k == OptGatewayMode {
			if v != GatewayModeNAT && v != GatewayModeRouted {
				return fmt.Errorf("%w: option %s=%q is not %s or %s", drivers.ErrInvalid, k, v, GatewayModeNAT, GatewayModeRouted)
			}
			if n.Internal {
				return fmt.Errorf("%w: option %s: an internal network has no gateway to the outside", drivers.ErrInvalid, k)
			}
		} else if k != "bridge" {
			if _, err := strconv.ParseBool(v); err != nil {
				return fmt.Errorf("%w: option %s=%q is not a boolean", drivers.ErrInvalid, k, v)
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
	case drivers.IsLinkNotFound(err):
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtuOf(n), TxQLen: -1}}
		if err := h.LinkAdd(br); err != nil {
			return fmt.Errorf("create bridge %s: %w", name, err)
		}
		created = true
		d.log.Debug("bridge created", "network", n.Name, "ifname", name)
		if link, err = h.LinkByName(name); err != nil {
			_ = h.LinkDel(br)
			return fmt.Errorf("create bridge %s: %w", name, err)
		}
		// The alias marks the bridge as made by netmgr for this network: DeleteNetwork removes only
		// bridges so marked, and leaves a bridge the user made (--opt bridge=br0) in place.
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
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring up bridge %s: %w", name, err)
	}
	if err := d.enableForwarding(n); err != nil {
		return err
	}
	return nil
}

// enableForwarding switches on IP forwarding in the host namespace for the families the network uses.
func (d *Driver) enableForwarding(n *drivers.Network) error {
	var keys []string
	for _, sn := range n.Subnets {
		if sn.Addr().Is4() {
			keys = append(keys, "/proc/sys/net/ipv4/ip_forward")
		} else {
			keys = append(keys, "/proc/sys/net/ipv6/conf/all/forwarding")
		}
	}
	return d.env.Host.Do(func() error {
		for _, k := range keys {
			if b, err := os.ReadFile(k); err == nil && len(b) > 0 && b[0] == '1' {
				continue
			}
			if err := os.WriteFile(k, []byte("1"), 0o644); err != nil {
				return fmt.Errorf("enable forwarding: %w", err)
			}
		}
		return nil
	})
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
	if link.Attrs().Alias != ownerAlias(n) {
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

// ownerAlias is the interface alias of a bridge netmgr made for n.
func ownerAlias(n *drivers.Network) string { return "netmgr:" + n.ID }

// HostIfName derives the host-side veth name of an endpoint from its ID.
func HostIfName(endpointID string) string {
	sum := sha256.Sum256([]byte(endpointID))
	return HostIfPrefix + hex.EncodeToString(sum[:])[:drivers.MaxIfNameLen-len(HostIfPrefix)]
}

// PrepareEndpoint implements drivers.Driver.
func (d *Driver) PrepareEndpoint(n *drivers.Network, ep *drivers.Endpoint) error {
	if err := drivers.CheckIfName("interface", ep.IfName); err != nil {
		return err
	}
	if ep.MAC != "" {
		if _, err := net.ParseMAC(ep.MAC); err != nil {
			return fmt.Errorf("%w: mac %q: %v", drivers.ErrInvalid, ep.MAC, err)
		}
	}
	ep.HostName = HostIfName(ep.ID)
	if ep.MTU == 0 {
		ep.MTU = mtuOf(n)
	}
	return nil
}

// Attach implements drivers.Driver.
func (d *Driver) Attach(ctx context.Context, n *drivers.Network, ep *drivers.Endpoint, sb *sandbox.NetNS) (err error) {
	hh := d.env.HostHandle
	br, err := hh.LinkByName(n.Options["bridge"])
	if err != nil {
		return fmt.Errorf("attach %s: bridge %s: %w", ep.Sandbox, n.Options["bridge"], err)
	}
	sh, err := sb.Handle()
	if err != nil {
		return fmt.Errorf("attach %s: %w", ep.Sandbox, err)
	}

	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: ep.IfName, MTU: ep.MTU, TxQLen: -1},
		PeerName:      ep.HostName,
		PeerNamespace: netlink.NsFd(d.env.Host.Fd()),
	}
	if ep.MAC != "" {
		veth.HardwareAddr, _ = net.ParseMAC(ep.MAC)
	}
	if err := sh.LinkAdd(veth); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("attach %s: %w: interface %s or %s exists", ep.Sandbox, drivers.ErrExists, ep.IfName, ep.HostName)
		}
		return fmt.Errorf("attach %s: create veth %s: %w", ep.Sandbox, ep.IfName, err)
	}
	d.log.Debug("veth created", "sandbox", ep.Sandbox, "ifname", ep.IfName, "host_ifname", ep.HostName)
	defer func() {
		if err != nil {
			// Deleting one end deletes both; the sandbox side is enough even if the host side moved.
			if l, lerr := sh.LinkByName(ep.IfName); lerr == nil {
				if derr := sh.LinkDel(l); derr != nil {
					d.log.Warn("rollback: delete veth", "sandbox", ep.Sandbox, "ifname", ep.IfName, "error", derr)
				}
			}
		}
	}()

	host, err := hh.LinkByName(ep.HostName)
	if err != nil {
		return fmt.Errorf("attach %s: find %s: %w", ep.Sandbox, ep.HostName, err)
	}
	if err := hh.LinkSetMasterByIndex(host, br.Attrs().Index); err != nil {
		if errors.Is(err, unix.EXFULL) {
			return fmt.Errorf("attach %s: %w: bridge %s has reached the kernel's limit of 1024 ports; put further sandboxes on another network", ep.Sandbox, drivers.ErrFull, n.Options["bridge"])
		}
		return fmt.Errorf("attach %s: add %s to bridge %s: %w", ep.Sandbox, ep.HostName, n.Options["bridge"], err)
	}
	if boolOpt(n, "hairpin", true) {
		if err := hh.LinkSetHairpin(host, true); err != nil {
			return fmt.Errorf("attach %s: hairpin on %s: %w", ep.Sandbox, ep.HostName, err)
		}
	}
	if err := hh.LinkSetUp(host); err != nil {
		return fmt.Errorf("attach %s: bring up %s: %w", ep.Sandbox, ep.HostName, err)
	}

	link, err := drivers.ConfigureInterface(sh, ep)
	if err != nil {
		return err
	}
	ep.MAC = link.Attrs().HardwareAddr.String()
	return nil
}

// Detach implements drivers.Driver. When the namespace is going, the veth dies with it: the kernel
// batches that teardown, which costs about a twentieth of deleting the veth here (20 ms measured).
// The host end is only set down (0.2 ms), so that if some process still holds the namespace, its
// address, which netmgr is about to free, can no longer be reached on the bridge. Otherwise the host
// end is deleted, which removes both ends.
func (d *Driver) Detach(ctx context.Context, n *drivers.Network, ep *drivers.Endpoint, sb *sandbox.NetNS, opts drivers.DetachOptions) error {
	if ep.HostName == "" {
		return nil
	}
	link, err := d.env.HostHandle.LinkByName(ep.HostName)
	if drivers.IsLinkNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("detach %s: find %s: %w", ep.Sandbox, ep.HostName, err)
	}
	if opts.NamespaceGoing && sb != nil {
		if err := d.env.HostHandle.LinkSetDown(link); err != nil && !drivers.IsLinkNotFound(err) {
			return fmt.Errorf("detach %s: set %s down: %w", ep.Sandbox, ep.HostName, err)
		}
		return nil
	}
	if err := d.env.HostHandle.LinkDel(link); err != nil && !drivers.IsLinkNotFound(err) {
		return fmt.Errorf("detach %s: delete %s: %w", ep.Sandbox, ep.HostName, err)
	}
	return nil
}

// Firewall implements drivers.Firewaller.
func (d *Driver) Firewall(n *drivers.Network) (firewall.Network, bool) {
	routed := n.Options[OptGatewayMode] == GatewayModeRouted
	return firewall.Network{
		Name:       n.Name,
		Bridge:     n.Options["bridge"],
		Subnets:    n.Subnets,
		Internal:   n.Internal,
		Masquerade: boolOpt(n, "masquerade", !routed) && !n.Internal,
		Routed:     routed && !n.Internal,
	}, true
}
