package overlay

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netmgr/netmgr/drivers"
	"github.com/netmgr/netmgr/sandbox"
)

// Name is the driver's registry name.
const Name = "overlay"

// The driver's options (Network.Options) and the attribute its Join publishes.
const (
	OptVNI         = "vni"
	OptPort        = "port"
	OptNodePrefix  = "node-prefix"
	OptNodePrefix6 = "node-prefix6"
	OptMasquerade  = "masquerade"

	// AttrVTEPMAC is the NodeView attribute that carries the node's VTEP MAC, which SyncPeers on
	// the other nodes needs.
	AttrVTEPMAC = "vtep_mac"
)

// Defaults and limits.
const (
	DefaultPort        = 4789 // IANA's VXLAN port
	DefaultNodePrefix  = 24   // as Kubernetes' node-cidr-mask-size-ipv4
	DefaultNodePrefix6 = 64   // as Kubernetes' node-cidr-mask-size-ipv6
	// FirstVNI is where VNIs chosen at create start, as Docker swarm's do, leaving the low ones to
	// be given by hand.
	FirstVNI = 4096
	MaxVNI   = 1<<24 - 1

	// The encapsulation: outer IPv4 (20) or IPv6 (40) header, UDP (8), VXLAN (8), inner Ethernet (14).
	overhead4 = 50
	overhead6 = 70
)

// Name prefixes of the host-side interfaces this driver makes; Collect relies on them. Each
// network-level device is named by the network's VNI, unique in the cluster.
const (
	HostIfPrefix = "nmow" // host ends of the pods' veths
	BridgePrefix = "nmob" // the node's local bridge: nmob<VNI>
	VXLANPrefix  = "nmox" // the VXLAN device: nmox<VNI>
)

func init() { drivers.Register(Name, New) }

var (
	_ drivers.Allocator  = (*Driver)(nil)
	_ drivers.Joiner     = (*Driver)(nil)
	_ drivers.PeerSyncer = (*Driver)(nil)
	_ drivers.Firewaller = (*Driver)(nil)
	_ drivers.Collector  = (*Driver)(nil)

	_ drivers.EndpointRestorer = (*Driver)(nil)
)

// Driver implements drivers.Driver and the cluster abilities for VXLAN overlay networks.
type Driver struct {
	env drivers.Env
	log *slog.Logger
}

// New returns an overlay driver working in env.Host.
func New(env drivers.Env) (drivers.Driver, error) {
	log, err := env.DriverLogger(Name)
	if err != nil {
		return nil, err
	}
	return &Driver{env: env, log: log}, nil
}

// OptDNS (a boolean) is netmgr's embedded DNS server's switch (netmgr/dns); the driver only checks it.
const OptDNS = "dns"

var knownOpts = []string{OptVNI, OptPort, OptNodePrefix, OptNodePrefix6, OptMasquerade, OptDNS}

// PrepareNetwork implements drivers.Driver: n.Subnets are the cluster CIDRs (one per family), the
// options are checked and the defaults of port and node prefixes filled in. The VNI is Allocate's.
func (d *Driver) PrepareNetwork(n *drivers.Network, existing []*drivers.Network) error {
	if n.Options == nil {
		n.Options = map[string]string{}
	}
	for k, v := range n.Options {
		if !slices.Contains(knownOpts, k) {
			return fmt.Errorf("%w: unknown overlay option %q (known: %s)", drivers.ErrInvalid, k, strings.Join(knownOpts, ", "))
		}
		if k == OptDNS {
			if _, err := strconv.ParseBool(v); err != nil {
				return fmt.Errorf("%w: option %s=%q is not a boolean", drivers.ErrInvalid, k, v)
			}
		}
		if k == OptMasquerade {
			on, err := strconv.ParseBool(v)
			if err != nil {
				return fmt.Errorf("%w: option %s=%q is not a boolean", drivers.ErrInvalid, k, v)
			}
			if on && n.Internal {
				return fmt.Errorf("%w: option masquerade=true: an internal network's traffic never leaves it", drivers.ErrInvalid)
			}
		}
	}
	if len(n.Subnets) == 0 {
		return fmt.Errorf("%w: overlay network %q needs its cluster CIDR as --subnet (one per family)", drivers.ErrInvalid, n.Name)
	}
	fams := map[bool]bool{}
	for _, sn := range n.Subnets {
		if fams[sn.Addr().Is4()] {
			return fmt.Errorf("%w: overlay network %q has two cluster CIDRs of one family; give one per family", drivers.ErrInvalid, n.Name)
		}
		fams[sn.Addr().Is4()] = true
	}
	if v, ok := n.Options[OptVNI]; ok {
		if _, err := parseVNI(v); err != nil {
			return err
		}
	}
	if _, ok := n.Options[OptPort]; !ok {
		n.Options[OptPort] = strconv.Itoa(DefaultPort)
	}
	if p, err := strconv.Atoi(n.Options[OptPort]); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("%w: option port=%q is not a UDP port (1..65535)", drivers.ErrInvalid, n.Options[OptPort])
	}
	// A node subnet leaves room for its network address, gateway, a pod (and broadcast).
	if err := drivers.CheckNodePrefixes(n,
		drivers.NodePrefix{Opt: OptNodePrefix, V4: true, Default: DefaultNodePrefix, Most: 30},
		drivers.NodePrefix{Opt: OptNodePrefix6, Default: DefaultNodePrefix6, Most: 126}); err != nil {
		return err
	}
	if n.MTU < 0 || n.MTU > 65535 || (n.MTU > 0 && n.MTU < 68) {
		return fmt.Errorf("%w: mtu %d is outside 68..65535", drivers.ErrInvalid, n.MTU)
	}
	return drivers.CheckIPv6MTU(n, n.MTU)
}

func family(v4 bool) string {
	if v4 {
		return "IPv4"
	}
	return "IPv6"
}

func parseVNI(v string) (int, error) {
	vni, err := strconv.Atoi(v)
	if err != nil || vni < 1 || vni > MaxVNI {
		return 0, fmt.Errorf("%w: option vni=%q is not a VXLAN network identifier (1..%d)", drivers.ErrInvalid, v, MaxVNI)
	}
	return vni, nil
}

// Allocate implements drivers.Allocator: the network's VNI, the one given (refused with ErrExists
// when another overlay network has it) or the lowest free one from FirstVNI; and the checks and
// defaults of PrepareNetwork, so that a caller that runs Allocate alone gets them too.
func (d *Driver) Allocate(ctx context.Context, n *drivers.Network, taken []*drivers.Network) error {
	if err := d.PrepareNetwork(n, taken); err != nil {
		return err
	}
	used := map[int]string{}
	for _, o := range taken {
		if o.ID == n.ID && n.ID != "" {
			continue
		}
		if vni, err := parseVNI(o.Options[OptVNI]); err == nil {
			used[vni] = o.Name
		}
	}
	if v, ok := n.Options[OptVNI]; ok {
		vni, _ := parseVNI(v)
		if other, dup := used[vni]; dup {
			return fmt.Errorf("%w: vni %d is already used by overlay network %q", drivers.ErrExists, vni, other)
		}
		return nil
	}
	for vni := FirstVNI; vni <= MaxVNI; vni++ {
		if _, dup := used[vni]; !dup {
			n.Options[OptVNI] = strconv.Itoa(vni)
			return nil
		}
	}
	return fmt.Errorf("%w: no free VNI left from %d to %d", drivers.ErrFull, FirstVNI, MaxVNI)
}

// params are a network's VNI, port and device names, from its recorded options.
type params struct {
	vni, port     int
	bridge, vxlan string
}

func paramsOf(n *drivers.Network) (params, error) {
	vni, err := parseVNI(n.Options[OptVNI])
	if err != nil {
		return params{}, fmt.Errorf("overlay network %q: %w (was it allocated?)", n.Name, err)
	}
	port, err := strconv.Atoi(n.Options[OptPort])
	if err != nil || port < 1 || port > 65535 {
		port = DefaultPort
	}
	s := strconv.Itoa(vni)
	return params{vni: vni, port: port, bridge: BridgePrefix + s, vxlan: VXLANPrefix + s}, nil
}

// nodePrefixOf is the node subnet length of n for a family.
func nodePrefixOf(n *drivers.Network, v4 bool) int {
	opt, def := OptNodePrefix, DefaultNodePrefix
	if !v4 {
		opt, def = OptNodePrefix6, DefaultNodePrefix6
	}
	if b, err := strconv.Atoi(n.Options[opt]); err == nil {
		return b
	}
	return def
}

// checkView returns an ErrInvalid error unless v's subnets are node subnets of n (inside a cluster
// CIDR, of the node prefix length, at most one per family) and its underlay address is usable;
// with gateways, also that each subnet has one gateway inside it other than its network address.
func checkView(n *drivers.Network, v drivers.NodeView, gateways bool) error {
	if len(v.Subnets) == 0 {
		return fmt.Errorf("%w: node %q has no subnet of overlay network %q", drivers.ErrInvalid, v.Node, n.Name)
	}
	if !v.Underlay.IsValid() || v.Underlay.IsUnspecified() || v.Underlay.IsMulticast() || v.Underlay.Is4In6() {
		return fmt.Errorf("%w: node %q has no usable underlay address (%v)", drivers.ErrInvalid, v.Node, v.Underlay)
	}
	if gateways && len(v.Gateways) != len(v.Subnets) {
		return fmt.Errorf("%w: node %q has %d gateways for %d subnets", drivers.ErrInvalid, v.Node, len(v.Gateways), len(v.Subnets))
	}
	seen := map[bool]bool{}
	for i, sn := range v.Subnets {
		v4 := sn.Addr().Is4()
		if seen[v4] {
			return fmt.Errorf("%w: node %q has two %s subnets of overlay network %q", drivers.ErrInvalid, v.Node, family(v4), n.Name)
		}
		seen[v4] = true
		in := slices.ContainsFunc(n.Subnets, func(c netip.Prefix) bool { return c.Addr().Is4() == v4 && c.Contains(sn.Addr()) })
		if !in || sn.Bits() != nodePrefixOf(n, v4) || sn != sn.Masked() {
			return fmt.Errorf("%w: node %q's subnet %s is not a /%d of overlay network %q's cluster CIDR %v", drivers.ErrInvalid, v.Node, sn, nodePrefixOf(n, v4), n.Name, n.Subnets)
		}
		if gateways {
			gw := v.Gateways[i]
			if !sn.Contains(gw) || gw == sn.Addr() {
				return fmt.Errorf("%w: node %q's gateway %v is not a host address of its subnet %s", drivers.ErrInvalid, v.Node, gw, sn)
			}
		}
	}
	return nil
}

// vtepMAC is the node's VTEP MAC for a VNI: locally administered, unicast, from a hash of both, so
// that a node's VXLAN device gets the same MAC after every re-creation and peers' entries stay right.
func vtepMAC(node string, vni int) net.HardwareAddr {
	sum := sha256.Sum256([]byte("netmgr vtep " + node + " " + strconv.Itoa(vni)))
	mac := net.HardwareAddr(sum[:6])
	mac[0] = mac[0]&^0x01 | 0x02
	return mac
}

// vtepAddr is the address of a node's VXLAN device for one of its subnets, its network address
// (flannel's choice): peers route the subnet via it, onlink, and never resolve it (permanent
// neighbour entries), so it costs the subnet no pod address.
func vtepAddr(sn netip.Prefix) netip.Prefix {
	a := sn.Masked().Addr()
	return netip.PrefixFrom(a, a.BitLen())
}

// CreateNetwork implements drivers.Driver. An overlay network has nothing on a host until the host
// joins it as a node (Join): its addresses there come from the node's lease.
func (d *Driver) CreateNetwork(ctx context.Context, n *drivers.Network) error { return nil }

// DeleteNetwork implements drivers.Driver: it removes the network's devices on this host, as Leave.
func (d *Driver) DeleteNetwork(ctx context.Context, n *drivers.Network) error {
	return d.removeDevices(n)
}

// Join implements drivers.Joiner: the node's VXLAN device and local bridge for n, with the node's
// gateways, and forwarding on. It publishes the VTEP MAC in node.Attrs[AttrVTEPMAC]. Bad views fail
// with ErrInvalid before anything changes; a device of the name that is not this network's, with
// ErrExists. On failure it removes the devices it created.
func (d *Driver) Join(ctx context.Context, n *drivers.Network, node *drivers.NodeView) (err error) {
	p, err := paramsOf(n)
	if err != nil {
		return err
	}
	if err := checkView(n, *node, true); err != nil {
		return err
	}
	h := d.env.HostHandle
	under, err := d.underlayLink(node.Underlay)
	if err != nil {
		return err
	}
	overhead := overhead4
	if node.Underlay.Is6() {
		overhead = overhead6
	}
	mtu := under.Attrs().MTU - overhead
	if n.MTU > 0 {
		if n.MTU > mtu {
			return fmt.Errorf("%w: mtu %d does not fit the underlay %s (MTU %d less %d of VXLAN encapsulation is %d)", drivers.ErrInvalid, n.MTU, under.Attrs().Name, under.Attrs().MTU, overhead, mtu)
		}
		mtu = n.MTU
	}
	if err := drivers.CheckIPv6MTU(n, mtu); err != nil {
		return fmt.Errorf("join %s: %w (the underlay's MTU less the VXLAN encapsulation)", n.Name, err)
	}
	mac := vtepMAC(node.Node, p.vni)

	vx, vxCreated, err := d.ensureVXLAN(n, p, under, node.Underlay, mac, mtu)
	if err != nil {
		return err
	}
	var brCreated bool
	defer func() {
		if err == nil {
			return
		}
		if brCreated {
			if derr := h.LinkDel(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: p.bridge}}); derr != nil && !drivers.IsLinkNotFound(derr) {
				d.log.Warn("rollback: delete bridge", "ifname", p.bridge, "error", derr)
			}
		}
		if vxCreated {
			if derr := h.LinkDel(vx); derr != nil && !drivers.IsLinkNotFound(derr) {
				d.log.Warn("rollback: delete vxlan device", "ifname", p.vxlan, "error", derr)
			}
		}
	}()
	var vtep []netip.Prefix
	for _, sn := range node.Subnets {
		vtep = append(vtep, vtepAddr(sn))
	}
	if vxCreated && hasIPv6(node.Subnets) {
		if err := drivers.NoDAD(d.env, p.vxlan); err != nil {
			return fmt.Errorf("join %s: %w", n.Name, err)
		}
	}
	if err := d.setAddrs(vx, vtep); err != nil {
		return fmt.Errorf("join %s: %w", n.Name, err)
	}
	if err := h.LinkSetUp(vx); err != nil {
		return fmt.Errorf("join %s: bring up %s: %w", n.Name, p.vxlan, err)
	}

	br, brCreated, err := d.ensureBridge(n, p, mtu)
	if err != nil {
		return err
	}
	if brCreated && hasIPv6(node.Subnets) {
		if err := drivers.NoDAD(d.env, p.bridge); err != nil {
			return fmt.Errorf("join %s: %w", n.Name, err)
		}
	}
	var gws []netip.Prefix
	for i, sn := range node.Subnets {
		gws = append(gws, netip.PrefixFrom(node.Gateways[i], sn.Bits()))
	}
	if err := d.setAddrs(br, gws); err != nil {
		return fmt.Errorf("join %s: %w", n.Name, err)
	}
	if err := h.LinkSetUp(br); err != nil {
		return fmt.Errorf("join %s: bring up %s: %w", n.Name, p.bridge, err)
	}
	if err := drivers.EnableForwarding(d.env, d.log, node.Subnets); err != nil {
		return err
	}
	if node.Attrs == nil {
		node.Attrs = map[string]string{}
	}
	node.Attrs[AttrVTEPMAC] = mac.String()
	d.log.Info("joined overlay network", "network", n.Name, "vni", p.vni, "node", node.Node, "subnets", node.Subnets, "vtep_mac", mac.String(), "mtu", mtu)
	return nil
}

func hasIPv6(subnets []netip.Prefix) bool {
	return slices.ContainsFunc(subnets, func(p netip.Prefix) bool { return p.Addr().Is6() })
}

// underlayLink is the host interface that holds the node's underlay address.
func (d *Driver) underlayLink(addr netip.Addr) (netlink.Link, error) {
	addrs, err := drivers.AddrList(d.env.HostHandle, nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("find underlay %s: list addresses: %w", addr, err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == addr {
			l, err := d.env.HostHandle.LinkByIndex(a.LinkIndex)
			if err != nil {
				return nil, fmt.Errorf("find underlay %s: %w", addr, err)
			}
			return l, nil
		}
	}
	return nil, fmt.Errorf("%w: no interface of this host has the underlay address %s", drivers.ErrInvalid, addr)
}

// owned reports whether l, named with one of this driver's prefixes, is n's: marked with n's alias,
// or unmarked (a create killed between the link and its alias; the prefixes are netmgr's own).
func owned(l netlink.Link, n *drivers.Network) bool {
	a := l.Attrs().Alias
	return a == drivers.OwnerAlias(n) || a == ""
}

// ensureVXLAN makes the network's VXLAN device as wanted, or brings an existing one of n's back to
// it: a device whose VNI, port, local address, underlay or learning differ is made again (the
// kernel cannot change them), its MTU and MAC are set in place.
func (d *Driver) ensureVXLAN(n *drivers.Network, p params, under netlink.Link, local netip.Addr, mac net.HardwareAddr, mtu int) (netlink.Link, bool, error) {
	h := d.env.HostHandle
	want := &netlink.Vxlan{
		LinkAttrs: netlink.LinkAttrs{Name: p.vxlan, MTU: mtu, HardwareAddr: mac, TxQLen: -1, Alias: drivers.OwnerAlias(n)},
		VxlanId:   p.vni, VtepDevIndex: under.Attrs().Index, SrcAddr: local.AsSlice(), Port: p.port, Learning: false,
	}
	l, err := h.LinkByName(p.vxlan)
	switch {
	case err == nil:
		if l.Type() != "vxlan" || !owned(l, n) {
			return nil, false, fmt.Errorf("join %s: %w: a %s link %s exists that is not this network's (alias %q)", n.Name, drivers.ErrExists, l.Type(), p.vxlan, l.Attrs().Alias)
		}
		have := l.(*netlink.Vxlan)
		src, _ := netip.AddrFromSlice(have.SrcAddr)
		if have.VxlanId == p.vni && have.Port == p.port && src.Unmap() == local && have.VtepDevIndex == under.Attrs().Index && !have.Learning {
			if have.Attrs().MTU != mtu {
				if err := h.LinkSetMTU(l, mtu); err != nil {
					return nil, false, fmt.Errorf("join %s: set MTU of %s: %w", n.Name, p.vxlan, err)
				}
			}
			if have.Attrs().HardwareAddr.String() != mac.String() {
				if err := h.LinkSetHardwareAddr(l, mac); err != nil {
					return nil, false, fmt.Errorf("join %s: set MAC of %s: %w", n.Name, p.vxlan, err)
				}
			}
			if have.Attrs().Alias == "" {
				if err := h.LinkSetAlias(l, drivers.OwnerAlias(n)); err != nil {
					return nil, false, fmt.Errorf("join %s: mark %s: %w", n.Name, p.vxlan, err)
				}
			}
			return l, false, nil
		}
		d.log.Info("vxlan device differs from the network's; making it again", "network", n.Name, "ifname", p.vxlan)
		if err := h.LinkDel(l); err != nil && !drivers.IsLinkNotFound(err) {
			return nil, false, fmt.Errorf("join %s: delete %s: %w", n.Name, p.vxlan, err)
		}
	case !drivers.IsLinkNotFound(err):
		return nil, false, fmt.Errorf("join %s: %w", n.Name, err)
	}
	if err := h.LinkAdd(want); err != nil {
		return nil, false, fmt.Errorf("join %s: create vxlan device %s: %w", n.Name, p.vxlan, err)
	}
	l, err = h.LinkByName(p.vxlan)
	if err == nil {
		// The kernel ignores IFLA_IFALIAS on a create.
		err = h.LinkSetAlias(l, drivers.OwnerAlias(n))
	}
	if err != nil {
		_ = h.LinkDel(want)
		return nil, false, fmt.Errorf("join %s: mark %s: %w", n.Name, p.vxlan, err)
	}
	d.log.Debug("vxlan device created", "network", n.Name, "ifname", p.vxlan, "vni", p.vni, "local", local)
	return l, true, nil
}

// ensureBridge makes the node's local bridge for n, or checks that the existing one is n's.
func (d *Driver) ensureBridge(n *drivers.Network, p params, mtu int) (netlink.Link, bool, error) {
	h := d.env.HostHandle
	l, err := h.LinkByName(p.bridge)
	switch {
	case err == nil:
		if l.Type() != "bridge" || !owned(l, n) {
			return nil, false, fmt.Errorf("join %s: %w: a %s link %s exists that is not this network's (alias %q)", n.Name, drivers.ErrExists, l.Type(), p.bridge, l.Attrs().Alias)
		}
		if l.Attrs().MTU != mtu {
			if err := h.LinkSetMTU(l, mtu); err != nil {
				return nil, false, fmt.Errorf("join %s: set MTU of %s: %w", n.Name, p.bridge, err)
			}
		}
		if l.Attrs().Alias == "" {
			if err := h.LinkSetAlias(l, drivers.OwnerAlias(n)); err != nil {
				return nil, false, fmt.Errorf("join %s: mark %s: %w", n.Name, p.bridge, err)
			}
		}
		return l, false, nil
	case !drivers.IsLinkNotFound(err):
		return nil, false, fmt.Errorf("join %s: %w", n.Name, err)
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: p.bridge, MTU: mtu, TxQLen: -1}}
	if err := h.LinkAdd(br); err != nil {
		return nil, false, fmt.Errorf("join %s: create bridge %s: %w", n.Name, p.bridge, err)
	}
	l, err = h.LinkByName(p.bridge)
	if err == nil {
		err = h.LinkSetAlias(l, drivers.OwnerAlias(n))
	}
	if err != nil {
		_ = h.LinkDel(br)
		return nil, false, fmt.Errorf("join %s: mark %s: %w", n.Name, p.bridge, err)
	}
	return l, true, nil
}

// setAddrs gives l exactly the global addresses want (IPv6 without DAD), removing others: a node
// whose lease changed keeps no address of its old subnet.
func (d *Driver) setAddrs(l netlink.Link, want []netip.Prefix) error {
	h := d.env.HostHandle
	have, err := drivers.AddrList(h, l, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", l.Attrs().Name, err)
	}
	for _, a := range have {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || ip.Unmap().IsLinkLocalUnicast() {
			continue
		}
		ones, _ := a.Mask.Size()
		if !slices.Contains(want, netip.PrefixFrom(ip.Unmap(), ones)) {
			if err := h.AddrDel(l, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
				return fmt.Errorf("remove address %s from %s: %w", a.IPNet, l.Attrs().Name, err)
			}
		}
	}
	for _, p := range want {
		addr := &netlink.Addr{IPNet: drivers.IPNet(p)}
		if p.Addr().Is6() {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := h.AddrReplace(l, addr); err != nil {
			return fmt.Errorf("set address %s on %s: %w", p, l.Attrs().Name, err)
		}
	}
	return nil
}

// Leave implements drivers.Joiner: it removes the node's VXLAN device (and with it every peer's
// neighbour, FDB and route entry) and its bridge. Pods still on the bridge are cut off.
func (d *Driver) Leave(ctx context.Context, n *drivers.Network, node drivers.NodeView) error {
	return d.removeDevices(n)
}

func (d *Driver) removeDevices(n *drivers.Network) error {
	p, err := paramsOf(n)
	if err != nil {
		return nil // never allocated: nothing of it can exist
	}
	h := d.env.HostHandle
	var errs []error
	for _, name := range []string{p.vxlan, p.bridge} {
		l, err := h.LinkByName(name)
		if drivers.IsLinkNotFound(err) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("leave %s: %w", n.Name, err))
			continue
		}
		if !owned(l, n) {
			continue // not this network's any more
		}
		if err := h.LinkDel(l); err != nil && !drivers.IsLinkNotFound(err) {
			errs = append(errs, fmt.Errorf("leave %s: delete %s: %w", n.Name, name, err))
		}
	}
	return errors.Join(errs...)
}

// peerEntry is what one peer subnet needs on this node: a route to the subnet via the peer's VTEP
// address, a neighbour entry that gives that address the peer's VTEP MAC, and an FDB entry that
// sends the MAC's frames to the peer's underlay address.
type peerEntry struct {
	node     string
	subnet   netip.Prefix
	via      netip.Addr
	mac      net.HardwareAddr
	underlay netip.Addr
}

// peerEntries validates peers (see drivers.PeerSyncer) and returns their entries.
func peerEntries(n *drivers.Network, self drivers.NodeView, peers []drivers.NodeView) ([]peerEntry, error) {
	var out []peerEntry
	nodes := map[string]bool{}
	macs := map[string]string{}
	subnets := map[netip.Prefix]string{}
	for _, sn := range self.Subnets {
		subnets[sn] = self.Node
	}
	for _, pv := range peers {
		if pv.Node == self.Node {
			continue
		}
		if pv.Node == "" || nodes[pv.Node] {
			return nil, fmt.Errorf("%w: peer name %q is empty or given twice", drivers.ErrInvalid, pv.Node)
		}
		nodes[pv.Node] = true
		if err := checkView(n, pv, false); err != nil {
			return nil, err
		}
		if self.Underlay.IsValid() && pv.Underlay.Is4() != self.Underlay.Is4() {
			return nil, fmt.Errorf("%w: peer %q's underlay address %s is not of this node's family (%s)", drivers.ErrInvalid, pv.Node, pv.Underlay, self.Underlay)
		}
		mac, err := drivers.ParseMAC(pv.Attrs[AttrVTEPMAC])
		if err != nil {
			return nil, fmt.Errorf("peer %q: attribute %s: %w", pv.Node, AttrVTEPMAC, err)
		}
		if other, dup := macs[mac.String()]; dup {
			return nil, fmt.Errorf("%w: peers %q and %q have the same VTEP MAC %s", drivers.ErrInvalid, other, pv.Node, mac)
		}
		macs[mac.String()] = pv.Node
		for _, sn := range pv.Subnets {
			for o, owner := range subnets {
				if o.Overlaps(sn) {
					return nil, fmt.Errorf("%w: peer %q's subnet %s overlaps node %q's %s", drivers.ErrInvalid, pv.Node, sn, owner, o)
				}
			}
			subnets[sn] = pv.Node
			out = append(out, peerEntry{node: pv.Node, subnet: sn, via: vtepAddr(sn).Addr(), mac: mac, underlay: pv.Underlay})
		}
	}
	return out, nil
}

// SyncPeers implements drivers.PeerSyncer. Each peer's entries are set with replace semantics
// (neighbour, then FDB, then route: a route never points at an unresolved next hop); then every
// route, neighbour and FDB entry on the network's VXLAN device that no peer explains is removed
// (route first). Routes the kernel made itself (proto kernel) stay.
func (d *Driver) SyncPeers(ctx context.Context, n *drivers.Network, self drivers.NodeView, peers []drivers.NodeView) error {
	p, err := paramsOf(n)
	if err != nil {
		return err
	}
	entries, err := peerEntries(n, self, peers)
	if err != nil {
		return err
	}
	h := d.env.HostHandle
	vx, err := h.LinkByName(p.vxlan)
	if drivers.IsLinkNotFound(err) {
		return fmt.Errorf("sync peers of %s: %w: no vxlan device %s on this host (join the network first)", n.Name, drivers.ErrNotFound, p.vxlan)
	}
	if err != nil {
		return fmt.Errorf("sync peers of %s: %w", n.Name, err)
	}
	idx := vx.Attrs().Index
	wantNeigh := map[netip.Addr]string{}
	wantFDB := map[string]netip.Addr{}
	wantRoute := map[netip.Prefix]netip.Addr{}
	for _, e := range entries {
		if err := h.NeighSet(&netlink.Neigh{LinkIndex: idx, State: netlink.NUD_PERMANENT, Type: unix.RTN_UNICAST,
			IP: e.via.AsSlice(), HardwareAddr: e.mac}); err != nil {
			return fmt.Errorf("sync peers of %s: neighbour %s for %s: %w", n.Name, e.via, e.node, err)
		}
		if err := h.NeighSet(&netlink.Neigh{LinkIndex: idx, State: netlink.NUD_PERMANENT, Family: unix.AF_BRIDGE,
			Flags: netlink.NTF_SELF, IP: e.underlay.AsSlice(), HardwareAddr: e.mac}); err != nil {
			return fmt.Errorf("sync peers of %s: fdb %s dst %s for %s: %w", n.Name, e.mac, e.underlay, e.node, err)
		}
		if err := h.RouteReplace(&netlink.Route{LinkIndex: idx, Dst: drivers.IPNet(e.subnet), Gw: e.via.AsSlice(),
			Flags: int(netlink.FLAG_ONLINK)}); err != nil {
			return fmt.Errorf("sync peers of %s: route %s via %s for %s: %w", n.Name, e.subnet, e.via, e.node, err)
		}
		wantNeigh[e.via] = e.mac.String()
		wantFDB[e.mac.String()] = e.underlay
		wantRoute[e.subnet] = e.via
	}
	removed, err := d.removeStale(vx, wantNeigh, wantFDB, wantRoute)
	if err != nil {
		return fmt.Errorf("sync peers of %s: %w", n.Name, err)
	}
	d.log.Debug("peers synced", "network", n.Name, "peers", len(peers), "entries", len(entries), "removed", removed)
	return nil
}

// removeStale deletes the routes, neighbour and FDB entries of vx that the wanted maps do not name,
// and returns how many it deleted.
func (d *Driver) removeStale(vx netlink.Link, wantNeigh map[netip.Addr]string, wantFDB map[string]netip.Addr, wantRoute map[netip.Prefix]netip.Addr) (int, error) {
	h := d.env.HostHandle
	idx := vx.Attrs().Index
	removed := 0
	routes, err := drivers.RouteListFiltered(h, netlink.FAMILY_ALL, &netlink.Route{LinkIndex: idx}, netlink.RT_FILTER_OIF)
	if err != nil {
		return removed, fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		if r.Protocol == unix.RTPROT_KERNEL {
			continue
		}
		if r.Dst != nil && r.Flags&int(netlink.FLAG_ONLINK) != 0 {
			dst, _ := netip.AddrFromSlice(r.Dst.IP)
			ones, _ := r.Dst.Mask.Size()
			gw, _ := netip.AddrFromSlice(r.Gw)
			if via, ok := wantRoute[netip.PrefixFrom(dst.Unmap(), ones)]; ok && via == gw.Unmap() {
				continue
			}
		}
		if err := h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			return removed, fmt.Errorf("delete route %v: %w", r.Dst, err)
		}
		d.log.Info("stale peer route removed", "ifname", vx.Attrs().Name, "dst", r.Dst, "gw", r.Gw)
		removed++
	}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		neighs, err := drivers.RetryDump(func() ([]netlink.Neigh, error) { return h.NeighList(idx, fam) })
		if err != nil {
			return removed, fmt.Errorf("list neighbours: %w", err)
		}
		for _, nb := range neighs {
			ip, _ := netip.AddrFromSlice(nb.IP)
			if nb.State&netlink.NUD_NOARP != 0 || wantNeigh[ip.Unmap()] == nb.HardwareAddr.String() {
				continue
			}
			if err := h.NeighDel(&nb); err != nil && !errors.Is(err, unix.ENOENT) {
				return removed, fmt.Errorf("delete neighbour %s: %w", nb.IP, err)
			}
			d.log.Info("stale peer neighbour removed", "ifname", vx.Attrs().Name, "ip", nb.IP, "mac", nb.HardwareAddr.String())
			removed++
		}
	}
	fdb, err := drivers.RetryDump(func() ([]netlink.Neigh, error) { return h.NeighList(idx, unix.AF_BRIDGE) })
	if err != nil {
		return removed, fmt.Errorf("list fdb: %w", err)
	}
	for _, e := range fdb {
		ip, _ := netip.AddrFromSlice(e.IP)
		if dst, ok := wantFDB[e.HardwareAddr.String()]; ok && dst == ip.Unmap() {
			continue
		}
		del := netlink.Neigh{LinkIndex: idx, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF, IP: e.IP, HardwareAddr: e.HardwareAddr, State: e.State}
		if err := h.NeighDel(&del); err != nil && !errors.Is(err, unix.ENOENT) {
			return removed, fmt.Errorf("delete fdb %s dst %s: %w", e.HardwareAddr, e.IP, err)
		}
		d.log.Info("stale peer fdb entry removed", "ifname", vx.Attrs().Name, "mac", e.HardwareAddr.String(), "dst", e.IP)
		removed++
	}
	return removed, nil
}

// PrepareEndpoint implements drivers.Driver: a bridge endpoint on the node's local bridge, with a
// default route via each offered gateway (the node's). Its MTU is the network's, or, left 0, the
// bridge's (the underlay's less the encapsulation), which Attach reads.
func (d *Driver) PrepareEndpoint(n *drivers.Network, ep *drivers.Endpoint) error {
	if _, err := paramsOf(n); err != nil {
		return err
	}
	if err := drivers.CheckIfName("interface", ep.IfName); err != nil {
		return err
	}
	if ep.MAC != "" {
		if _, err := drivers.ParseMAC(ep.MAC); err != nil {
			return err
		}
	}
	ep.HostName = drivers.HostIfName(HostIfPrefix, ep.ID)
	ep.Routes = drivers.DefaultRoutes(ep.Gateways)
	if ep.MTU == 0 && n.MTU > 0 {
		ep.MTU = n.MTU
	}
	return nil
}

// Attach implements drivers.Driver: a veth pair with its host end on the node's bridge.
func (d *Driver) Attach(ctx context.Context, n *drivers.Network, ep *drivers.Endpoint, sb *sandbox.NetNS) error {
	p, err := paramsOf(n)
	if err != nil {
		return err
	}
	if _, err := d.env.HostHandle.LinkByName(p.bridge); drivers.IsLinkNotFound(err) {
		return fmt.Errorf("attach %s: %w: this host has not joined overlay network %q (no bridge %s): its node agent joins it", ep.Sandbox, drivers.ErrNotFound, n.Name, p.bridge)
	}
	return drivers.AttachVeth(d.env, d.log, p.bridge, true, ep, sb)
}

// RestoreEndpoint implements drivers.EndpointRestorer: a host end put back on the node's bridge, or
// a veth pair deleted by hand made again (drivers.RestoreVeth).
func (d *Driver) RestoreEndpoint(ctx context.Context, n *drivers.Network, ep *drivers.Endpoint, sb *sandbox.NetNS) (bool, error) {
	p, err := paramsOf(n)
	if err != nil {
		return false, err
	}
	return drivers.RestoreVeth(d.env, d.log, p.bridge, true, ep, sb)
}

// Detach implements drivers.Driver.
func (d *Driver) Detach(ctx context.Context, n *drivers.Network, ep *drivers.Endpoint, sb *sandbox.NetNS, opts drivers.DetachOptions) error {
	return drivers.DetachVeth(d.env, ep, sb, opts)
}

// Firewall implements drivers.Firewaller: the node's bridge and VXLAN device are the network's host
// interfaces, so that traffic between them (pods of this node and of its peers) is the network's
// own and traffic to or from any other network's is dropped; egress from the cluster CIDR that
// leaves by another interface is masqueraded, except towards the cluster CIDR itself, so that pods
// always see each other's own addresses.
// clusterCIDRs are the network's cluster CIDRs: on a joined node n.Cluster (n.Subnets are the node's
// own subnets there); before a join, as at create, n.Subnets.
func clusterCIDRs(n *drivers.Network) []netip.Prefix {
	if len(n.Cluster) > 0 {
		return slices.Clone(n.Cluster)
	}
	return slices.Clone(n.Subnets)
}

func (d *Driver) Firewall(n *drivers.Network) (drivers.FirewallSpec, bool) {
	p, err := paramsOf(n)
	if err != nil {
		return drivers.FirewallSpec{}, false
	}
	masq := true
	if v, ok := n.Options[OptMasquerade]; ok {
		masq, _ = strconv.ParseBool(v)
	}
	return drivers.FirewallSpec{
		HostIfaces:     []string{p.bridge, p.vxlan},
		HairpinIfaces:  []string{p.bridge},
		Masquerade:     masq && !n.Internal,
		NoMasqueradeTo: clusterCIDRs(n),
		PortTargets:    true,
	}, true
}
