package routed

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
	"slices"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netmgr/netmgr/drivers"
	"github.com/netmgr/netmgr/sandbox"
)

// Registry names: the local-scope driver and the global-scope one (see the package documentation).
const (
	Name       = "routed"
	GlobalName = "routed-global"
)

// Options (Network.Options).
const (
	// OptIfPrefix is the prefix of the host ends of the network's veths, chosen at create.
	OptIfPrefix   = "ifprefix"
	OptMasquerade = "masquerade"
	// OptNodePrefix and OptNodePrefix6 are the node subnet lengths of a global network (defaults 24
	// and 64, as the agent's).
	OptNodePrefix  = "node-prefix"
	OptNodePrefix6 = "node-prefix6"
	// OptRouting is how a global network reaches peers' pods: "host-gw" (the default: a route per
	// peer via its underlay address, which must be on this node's segment) or "bgp" (host-gw routes
	// for the peers on this node's segment; the others are reached by the host's normal routes, its
	// routers, which learn every node's subnets from the agents' BGP speakers: a peer off the segment
	// is no error then). On a local network, "bgp" has the agent's speaker advertise the network's
	// subnet from this host (its subnet must then be unique among the routers' hosts), and lets
	// hosts beyond the routers open connections to its sandboxes (they route to them).
	OptRouting = "routing"
)

// Routing modes (OptRouting).
const (
	RoutingHostGW = "host-gw"
	RoutingBGP    = "bgp"
)

// Interface name prefixes: every network's ifprefix is one of these and four hex digits; Collect
// removes host ends that start with them and no endpoint names.
const (
	LocalPrefix  = "nmr"
	GlobalPrefix = "nmg"
	tagLen       = 4
)

// RouteProtocol marks the routes this driver makes in the host namespace other than the per-sandbox
// host routes: the unreachable route of a subnet (so that a packet to an unused address of it is
// answered with an ICMP error instead of following the default route out) and the routes to peers'
// node subnets. SyncPeers and Leave remove only routes so marked.
const RouteProtocol netlink.RouteProtocol = 0xb1

// The next hops a sandbox routes by: on-link, answered by the host end of its veth.
var (
	NextHop4 = netip.MustParseAddr("169.254.1.1")
	NextHop6 = netip.MustParseAddr("fe80::1")
)

// ErrOffSegment is wrapped by SyncPeers' error when a peer's underlay address is not directly
// connected to this node (it is reached via a router, or not at all): host-gw cannot route that
// peer's pods, and SyncPeers programs every other peer.
var ErrOffSegment = errors.New("peer not on this node's underlay segment")

func init() {
	drivers.Register(Name, New)
	drivers.Register(GlobalName, NewGlobal)
}

var (
	_ drivers.Firewaller       = (*Driver)(nil)
	_ drivers.Collector        = (*Driver)(nil)
	_ drivers.EndpointRestorer = (*Driver)(nil)

	_ drivers.Allocator  = (*GlobalDriver)(nil)
	_ drivers.Joiner     = (*GlobalDriver)(nil)
	_ drivers.PeerSyncer = (*GlobalDriver)(nil)
)

// Driver is the local-scope routed driver; GlobalDriver adds the cluster abilities.
type Driver struct {
	env    drivers.Env
	log    *slog.Logger
	global bool
}

// GlobalDriver is the global-scope routed driver (GlobalName).
type GlobalDriver struct{ *Driver }

func newDriver(env drivers.Env, global bool) (*Driver, error) {
	name := Name
	if global {
		name = GlobalName
	}
	log, err := env.DriverLogger(name)
	if err != nil {
		return nil, err
	}
	return &Driver{env: env, log: log, global: global}, nil
}

// New returns the local-scope driver.
func New(env drivers.Env) (drivers.Driver, error) { return newDriver(env, false) }

// NewGlobal returns the global-scope driver.
func NewGlobal(env drivers.Env) (drivers.Driver, error) {
	d, err := newDriver(env, true)
	if err != nil {
		return nil, err
	}
	return &GlobalDriver{d}, nil
}

func (d *Driver) basePrefix() string {
	if d.global {
		return GlobalPrefix
	}
	return LocalPrefix
}

func (d *Driver) knownOpts() []string {
	if d.global {
		return []string{OptIfPrefix, OptMasquerade, OptNodePrefix, OptNodePrefix6, OptRouting}
	}
	return []string{OptIfPrefix, OptMasquerade, OptRouting}
}

func family(v4 bool) string {
	if v4 {
		return "IPv4"
	}
	return "IPv6"
}

// PrepareNetwork implements drivers.Driver: one subnet per family (local scope: the pods'; global
// scope: the cluster CIDRs), known options, and the network's interface prefix, unique among
// existing.
func (d *Driver) PrepareNetwork(n *drivers.Network, existing []*drivers.Network) error {
	if n.Options == nil {
		n.Options = map[string]string{}
	}
	known := d.knownOpts()
	for k, v := range n.Options {
		if !slices.Contains(known, k) {
			return fmt.Errorf("%w: unknown %s option %q (known: %s)", drivers.ErrInvalid, d.name(), k, strings.Join(known, ", "))
		}
		if k == OptRouting && v != RoutingHostGW && v != RoutingBGP {
			return fmt.Errorf("%w: option %s=%q: want %s or %s", drivers.ErrInvalid, k, v, RoutingHostGW, RoutingBGP)
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
		if d.global {
			return fmt.Errorf("%w: %s network %q needs its cluster CIDR as --subnet (one per family)", drivers.ErrInvalid, d.name(), n.Name)
		}
		return fmt.Errorf("%w: routed network %q needs --subnet CIDR (one per family)", drivers.ErrInvalid, n.Name)
	}
	fams := map[bool]bool{}
	for _, sn := range n.Subnets {
		if fams[sn.Addr().Is4()] {
			return fmt.Errorf("%w: routed network %q has two subnets of one family; give one per family", drivers.ErrInvalid, n.Name)
		}
		fams[sn.Addr().Is4()] = true
	}
	if d.global {
		if err := checkNodePrefixes(n); err != nil {
			return err
		}
	}
	if n.MTU < 0 || n.MTU > 65535 || (n.MTU > 0 && n.MTU < 68) {
		return fmt.Errorf("%w: mtu %d is outside 68..65535", drivers.ErrInvalid, n.MTU)
	}
	if err := drivers.CheckIPv6MTU(n, n.MTU); err != nil {
		return err
	}
	return d.choosePrefix(n, existing)
}

func (d *Driver) name() string {
	if d.global {
		return GlobalName
	}
	return Name
}

// choosePrefix sets n's interface prefix: the one given (checked), else base + four hex digits of
// a hash of the network's ID, moved on past those existing networks have.
func (d *Driver) choosePrefix(n *drivers.Network, existing []*drivers.Network) error {
	used := map[string]string{}
	for _, o := range existing {
		if o.ID == n.ID && n.ID != "" {
			continue
		}
		if p := o.Options[OptIfPrefix]; p != "" {
			used[p] = o.Name
		}
	}
	base := d.basePrefix()
	if p, ok := n.Options[OptIfPrefix]; ok {
		if !validPrefix(base, p) {
			return fmt.Errorf("%w: option %s=%q is not %q and %d hex digits", drivers.ErrInvalid, OptIfPrefix, p, base, tagLen)
		}
		if other, dup := used[p]; dup {
			return fmt.Errorf("%w: interface prefix %s is already network %q's", drivers.ErrExists, p, other)
		}
		return nil
	}
	sum := sha256.Sum256([]byte(n.ID + "/" + n.Name))
	start := int(sum[0])<<8 | int(sum[1])
	for i := range 1 << 16 {
		p := base + fmt.Sprintf("%04x", (start+i)&0xffff)
		if _, dup := used[p]; !dup {
			n.Options[OptIfPrefix] = p
			return nil
		}
	}
	return fmt.Errorf("%w: no free interface prefix left", drivers.ErrFull)
}

func validPrefix(base, p string) bool {
	tag, ok := strings.CutPrefix(p, base)
	if !ok || len(tag) != tagLen {
		return false
	}
	_, err := hex.DecodeString(tag)
	return err == nil && strings.ToLower(tag) == tag
}

// ifPrefix is n's recorded interface prefix.
func (d *Driver) ifPrefix(n *drivers.Network) (string, error) {
	p := n.Options[OptIfPrefix]
	if !validPrefix(d.basePrefix(), p) {
		return "", fmt.Errorf("%w: %s network %q has no interface prefix (option %s=%q); was it created by this driver?", drivers.ErrInvalid, d.name(), n.Name, OptIfPrefix, p)
	}
	return p, nil
}

// CreateNetwork implements drivers.Driver: forwarding on and, in local scope, the subnets'
// unreachable routes. A global network has nothing on a host until it joins (Join).
func (d *Driver) CreateNetwork(ctx context.Context, n *drivers.Network) error {
	if d.global {
		return nil
	}
	if _, err := d.ifPrefix(n); err != nil {
		return err
	}
	if err := drivers.EnableForwarding(d.env, d.log, n.Subnets); err != nil {
		return err
	}
	if n.Internal {
		return nil
	}
	return d.setUnreachable(n.Subnets)
}

// DeleteNetwork implements drivers.Driver: the routes CreateNetwork (or Join) made. Sandboxes'
// veths are their endpoints'.
func (d *Driver) DeleteNetwork(ctx context.Context, n *drivers.Network) error {
	cidrs := n.Subnets
	if len(n.Cluster) > 0 {
		cidrs = n.Cluster
	}
	return d.removeRoutes(cidrs, nil)
}

// setUnreachable adds an unreachable route for each subnet.
func (d *Driver) setUnreachable(subnets []netip.Prefix) error {
	for _, sn := range subnets {
		r := &netlink.Route{Dst: drivers.IPNet(sn.Masked()), Type: unix.RTN_UNREACHABLE, Protocol: RouteProtocol}
		if err := d.env.HostHandle.RouteReplace(r); err != nil {
			return fmt.Errorf("unreachable route %s: %w", sn, err)
		}
	}
	return nil
}

// removeRoutes deletes the routes of RouteProtocol inside cidrs, except those keep holds, and
// returns what it removed.
func (d *Driver) removeRoutes(cidrs []netip.Prefix, keep func(netlink.Route) bool) error {
	h := d.env.HostHandle
	for _, fam := range families(cidrs) {
		routes, err := drivers.RouteListFiltered(h, fam, &netlink.Route{Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
		if err != nil {
			return fmt.Errorf("list routes: %w", err)
		}
		for _, r := range routes {
			if r.Dst == nil || !insideAny(prefixOf(r.Dst), cidrs) || (keep != nil && keep(r)) {
				continue
			}
			if err := h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("delete route %v: %w", r.Dst, err)
			}
			d.log.Debug("route removed", "dst", r.Dst, "gw", r.Gw, "type", r.Type)
		}
	}
	return nil
}

func families(ps []netip.Prefix) []int {
	var out []int
	if slices.ContainsFunc(ps, func(p netip.Prefix) bool { return p.Addr().Is4() }) {
		out = append(out, netlink.FAMILY_V4)
	}
	if slices.ContainsFunc(ps, func(p netip.Prefix) bool { return p.Addr().Is6() }) {
		out = append(out, netlink.FAMILY_V6)
	}
	return out
}

func prefixOf(n *net.IPNet) netip.Prefix {
	a, _ := netip.AddrFromSlice(n.IP)
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones)
}

func insideAny(p netip.Prefix, cidrs []netip.Prefix) bool {
	for _, c := range cidrs {
		if c.Addr().Is4() == p.Addr().Is4() && c.Bits() <= p.Bits() && c.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// PrepareEndpoint implements drivers.Driver: the host end's name (the network's prefix and a hash
// of the endpoint's ID), a route to each of the network's subnets and, for each offered gateway's
// family, a default route, all via the link-local next hop on-link (the gateway itself is not used:
// the sandbox's address is a /32).
func (d *Driver) PrepareEndpoint(n *drivers.Network, ep *drivers.Endpoint) error {
	p, err := d.ifPrefix(n)
	if err != nil {
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
	ep.HostName = drivers.HostIfName(p, ep.ID)
	ep.Routes = []drivers.Route{}
	// The network's own subnets (a global network's cluster CIDRs) through this interface always:
	// with a /32 address nothing else would reach them when another attachment holds the default
	// route, or on an internal network, which has none.
	subnets := n.Subnets
	if len(n.Cluster) > 0 {
		subnets = n.Cluster
	}
	for _, sn := range subnets {
		nh := NextHop4
		if sn.Addr().Is6() {
			nh = NextHop6
		}
		if slices.ContainsFunc(ep.Addrs, func(a netip.Prefix) bool { return a.Addr().Is4() == sn.Addr().Is4() }) {
			ep.Routes = append(ep.Routes, drivers.Route{Dst: sn.Masked(), Gw: nh, OnLink: true})
		}
	}
	for _, gw := range ep.Gateways {
		if gw.Is4() {
			ep.Routes = append(ep.Routes, drivers.Route{Dst: netip.PrefixFrom(netip.IPv4Unspecified(), 0), Gw: NextHop4, OnLink: true})
		} else {
			ep.Routes = append(ep.Routes, drivers.Route{Dst: netip.PrefixFrom(netip.IPv6Unspecified(), 0), Gw: NextHop6, OnLink: true})
		}
	}
	if ep.MTU == 0 && n.MTU > 0 {
		ep.MTU = n.MTU
	}
	return nil
}

// hostAddrs are ep's addresses as host addresses (/32, /128).
func hostAddrs(ep *drivers.Endpoint) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ep.Addrs))
	for _, a := range ep.Addrs {
		out = append(out, netip.PrefixFrom(a.Addr(), a.Addr().BitLen()))
	}
	return out
}

// Attach implements drivers.Driver: the veth pair (made inside sb with its peer in the host
// namespace), the host end up with proxy ARP (and fe80::1 for IPv6), the sandbox end with ep's
// addresses as /32s, its routes and a permanent neighbour for each next hop, and on the host a
// route and a permanent neighbour for each of ep's addresses. On failure the pair is deleted, which
// takes the routes and neighbours with it.
func (d *Driver) Attach(ctx context.Context, n *drivers.Network, ep *drivers.Endpoint, sb *sandbox.NetNS) (err error) {
	if _, err := d.ifPrefix(n); err != nil {
		return err
	}
	hh := d.env.HostHandle
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
	defer func() {
		if err != nil {
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
	cp := *ep
	cp.Addrs = hostAddrs(ep)
	if cp.Routes == nil {
		cp.Routes = []drivers.Route{}
	}
	link, err := d.plumb(ep.Sandbox, sh, host, &cp)
	if err != nil {
		return err
	}
	ep.Routes, ep.Gateways, ep.MAC = cp.Routes, cp.Gateways, link.Attrs().HardwareAddr.String()
	return nil
}

// plumb configures both ends of a veth pair that exists: the host end (sysctls, up, fe80::1), the
// sandbox end (drivers.ConfigureInterface with ep's host addresses), the sandbox's neighbours for
// its next hops and the host's routes and neighbours for ep's addresses.
func (d *Driver) plumb(sandboxName string, sh *netlink.Handle, host netlink.Link, ep *drivers.Endpoint) (netlink.Link, error) {
	hh := d.env.HostHandle
	v4 := slices.ContainsFunc(ep.Addrs, func(p netip.Prefix) bool { return p.Addr().Is4() })
	v6 := slices.ContainsFunc(ep.Addrs, func(p netip.Prefix) bool { return p.Addr().Is6() })
	if err := d.hostEndSysctls(host.Attrs().Name, v4, v6); err != nil {
		return nil, fmt.Errorf("attach %s: %w", sandboxName, err)
	}
	if err := hh.LinkSetUp(host); err != nil {
		return nil, fmt.Errorf("attach %s: bring up %s: %w", sandboxName, host.Attrs().Name, err)
	}
	if v6 {
		gw := &netlink.Addr{IPNet: drivers.IPNet(netip.PrefixFrom(NextHop6, 64)), Flags: unix.IFA_F_NODAD}
		if err := hh.AddrReplace(host, gw); err != nil {
			return nil, fmt.Errorf("attach %s: address %s on %s: %w", sandboxName, NextHop6, host.Attrs().Name, err)
		}
	}
	link, err := drivers.ConfigureInterface(sh, ep)
	if err != nil {
		return nil, err
	}
	idx := link.Attrs().Index
	for _, nh := range []struct {
		on bool
		ip netip.Addr
	}{{v4, NextHop4}, {v6, NextHop6}} {
		if !nh.on {
			continue
		}
		if err := sh.NeighSet(&netlink.Neigh{LinkIndex: idx, State: netlink.NUD_PERMANENT, Type: unix.RTN_UNICAST,
			IP: nh.ip.AsSlice(), HardwareAddr: host.Attrs().HardwareAddr}); err != nil {
			return nil, fmt.Errorf("attach %s: neighbour %s in the sandbox: %w", sandboxName, nh.ip, err)
		}
	}
	hidx := host.Attrs().Index
	mac := link.Attrs().HardwareAddr
	for _, a := range ep.Addrs {
		if err := hh.RouteReplace(&netlink.Route{LinkIndex: hidx, Dst: drivers.IPNet(a), Scope: netlink.SCOPE_LINK}); err != nil {
			return nil, fmt.Errorf("attach %s: host route %s on %s: %w", sandboxName, a, host.Attrs().Name, err)
		}
		if err := hh.NeighSet(&netlink.Neigh{LinkIndex: hidx, State: netlink.NUD_PERMANENT, Type: unix.RTN_UNICAST,
			IP: a.Addr().AsSlice(), HardwareAddr: mac}); err != nil {
			return nil, fmt.Errorf("attach %s: neighbour %s on %s: %w", sandboxName, a.Addr(), host.Attrs().Name, err)
		}
	}
	return link, nil
}

// hostEndSysctls sets, on a host end before it comes up: proxy_arp (it answers for 169.254.1.1 where
// the host routes that address elsewhere) and route_localnet (published ports from the host's
// 127.0.0.1; the ports table drops what it would otherwise let in) for IPv4, and accept_dad=0 for
// IPv6 (fe80::1 is usable at once).
func (d *Driver) hostEndSysctls(ifname string, v4, v6 bool) error {
	var writes [][2]string
	if v4 {
		writes = append(writes, [2]string{"/proc/sys/net/ipv4/conf/" + ifname + "/proxy_arp", "1"},
			[2]string{"/proc/sys/net/ipv4/conf/" + ifname + "/route_localnet", "1"})
	}
	if v6 {
		writes = append(writes, [2]string{"/proc/sys/net/ipv6/conf/" + ifname + "/accept_dad", "0"})
	}
	if len(writes) == 0 {
		return nil
	}
	return d.env.Host.Do(func() error {
		for _, w := range writes {
			if err := os.WriteFile(w[0], []byte(w[1]), 0o644); err != nil {
				return fmt.Errorf("set %s: %w", strings.TrimPrefix(w[0], "/proc/sys/"), err)
			}
		}
		return nil
	})
}

// Detach implements drivers.Driver (drivers.DetachVeth: the host end set down when the namespace
// goes, deleted otherwise; its routes and neighbours go with it).
func (d *Driver) Detach(ctx context.Context, n *drivers.Network, ep *drivers.Endpoint, sb *sandbox.NetNS, opts drivers.DetachOptions) error {
	return drivers.DetachVeth(d.env, ep, sb, opts)
}

// RestoreEndpoint implements drivers.EndpointRestorer: a veth pair that is gone is made again with
// the recorded names, MAC, addresses and routes; a host end that is down, or lacks a host route or
// neighbour of the endpoint's, is set right.
func (d *Driver) RestoreEndpoint(ctx context.Context, n *drivers.Network, ep *drivers.Endpoint, sb *sandbox.NetNS) (bool, error) {
	if ep.HostName == "" {
		return false, nil
	}
	hh := d.env.HostHandle
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
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("restore %s: find %s: %w", ep.Sandbox, ep.HostName, err)
	}
	if host.Type() != "veth" {
		return false, fmt.Errorf("restore %s: %w: %s is a %s, not the endpoint's veth", ep.Sandbox, drivers.ErrExists, ep.HostName, host.Type())
	}
	changed := host.Attrs().Flags&net.FlagUp == 0
	// Each address routed on the host end? A route lookup per address, not a dump of the table per
	// endpoint (which made gc of thousands of sandboxes quadratic).
	for _, a := range hostAddrs(ep) {
		if changed {
			break
		}
		rs, err := hh.RouteGet(a.Addr().AsSlice())
		changed = err != nil || len(rs) == 0 || rs[0].LinkIndex != host.Attrs().Index
	}
	if !changed {
		return false, nil
	}
	if err := hh.LinkSetUp(host); err != nil {
		return false, fmt.Errorf("restore %s: bring up %s: %w", ep.Sandbox, ep.HostName, err)
	}
	mac, err := drivers.ParseMAC(ep.MAC)
	if err != nil {
		return false, fmt.Errorf("restore %s: %w", ep.Sandbox, err)
	}
	for _, a := range hostAddrs(ep) {
		if err := hh.RouteReplace(&netlink.Route{LinkIndex: host.Attrs().Index, Dst: drivers.IPNet(a), Scope: netlink.SCOPE_LINK}); err != nil {
			return false, fmt.Errorf("restore %s: host route %s: %w", ep.Sandbox, a, err)
		}
		if err := hh.NeighSet(&netlink.Neigh{LinkIndex: host.Attrs().Index, State: netlink.NUD_PERMANENT, Type: unix.RTN_UNICAST,
			IP: a.Addr().AsSlice(), HardwareAddr: mac}); err != nil {
			return false, fmt.Errorf("restore %s: neighbour %s: %w", ep.Sandbox, a.Addr(), err)
		}
	}
	d.log.Debug("host end restored", "sandbox", ep.Sandbox, "host_ifname", ep.HostName)
	return true, nil
}

// Collect implements drivers.Collector: host ends of this driver's veths that no endpoint names.
func (d *Driver) Collect(ctx context.Context, in drivers.CollectInput) (drivers.CollectResult, error) {
	removed, errs := drivers.CollectVeths(d.env, d.log, in, d.basePrefix())
	return drivers.CollectResult{Links: removed, Errors: errs}, nil
}

// clusterCIDRs are a global network's CIDRs: n.Cluster on a joined node, else n.Subnets.
func clusterCIDRs(n *drivers.Network) []netip.Prefix {
	if len(n.Cluster) > 0 {
		return slices.Clone(n.Cluster)
	}
	return slices.Clone(n.Subnets)
}

// Firewall implements drivers.Firewaller: the network's host interfaces are its veths' host ends,
// all matched by one wildcard (the network's prefix and "*"), so that traffic between its sandboxes
// is its own, traffic to or from any other network's interfaces is dropped, egress by any other
// interface is masqueraded, and published ports and hairpin work as on a bridge. A global network
// keeps its cluster CIDR unmasqueraded and lets its peers (Routed: they route its subnets via this
// node) open connections to its sandboxes.
func (d *Driver) Firewall(n *drivers.Network) (drivers.FirewallSpec, bool) {
	p, err := d.ifPrefix(n)
	if err != nil {
		return drivers.FirewallSpec{}, false
	}
	masq := true
	if v, ok := n.Options[OptMasquerade]; ok {
		masq, _ = strconv.ParseBool(v)
	}
	fs := drivers.FirewallSpec{
		HostIfaces:  []string{p + "*"},
		Masquerade:  masq && !n.Internal,
		PortTargets: true,
	}
	if d.global {
		fs.NoMasqueradeTo = clusterCIDRs(n)
		fs.Routed = true
	} else if n.Options[OptRouting] == RoutingBGP {
		fs.Routed = true // advertised: the routers' hosts reach the sandboxes by their addresses
	}
	return fs, true
}
