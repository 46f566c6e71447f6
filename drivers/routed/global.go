package routed

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netmgr/netmgr/drivers"
)

// Defaults of the node subnet lengths, as the agent's (agent.Pools).
const (
	DefaultNodePrefix  = 24
	DefaultNodePrefix6 = 64
)

// AttrSegment is the attribute Join publishes: the underlay prefix the node's underlay address is
// on (its interface's connected prefix), so that a reader of the node record (podctl node ls) sees
// which segment each node routes on.
const AttrSegment = "segment"

func checkNodePrefixes(n *drivers.Network) error {
	return drivers.CheckNodePrefixes(n,
		drivers.NodePrefix{Opt: OptNodePrefix, V4: true, Default: DefaultNodePrefix, Most: 30},
		drivers.NodePrefix{Opt: OptNodePrefix6, Default: DefaultNodePrefix6, Most: 126})
}

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

// Allocate implements drivers.Allocator: PrepareNetwork's checks and its interface prefix, unique
// among every global routed network of the cluster (taken).
func (g *GlobalDriver) Allocate(ctx context.Context, n *drivers.Network, taken []*drivers.Network) error {
	return g.PrepareNetwork(n, taken)
}

// checkView returns an ErrInvalid error unless v's subnets are node subnets of n and its underlay
// address is usable.
func checkView(n *drivers.Network, v drivers.NodeView) error {
	if len(v.Subnets) == 0 {
		return fmt.Errorf("%w: node %q has no subnet of routed network %q", drivers.ErrInvalid, v.Node, n.Name)
	}
	if !v.Underlay.IsValid() || v.Underlay.IsUnspecified() || v.Underlay.IsMulticast() || v.Underlay.Is4In6() || v.Underlay.IsLoopback() {
		return fmt.Errorf("%w: node %q has no usable underlay address (%v)", drivers.ErrInvalid, v.Node, v.Underlay)
	}
	seen := map[bool]bool{}
	for _, sn := range v.Subnets {
		v4 := sn.Addr().Is4()
		if seen[v4] {
			return fmt.Errorf("%w: node %q has two %s subnets of routed network %q", drivers.ErrInvalid, v.Node, family(v4), n.Name)
		}
		seen[v4] = true
		cidrs := clusterCIDRs(n)
		if !insideAny(sn, cidrs) || sn.Bits() != nodePrefixOf(n, v4) || sn != sn.Masked() {
			return fmt.Errorf("%w: node %q's subnet %s is not a /%d of routed network %q's cluster CIDR %v", drivers.ErrInvalid, v.Node, sn, nodePrefixOf(n, v4), n.Name, cidrs)
		}
	}
	return nil
}

// Join implements drivers.Joiner: forwarding on and an unreachable route for each node subnet (the
// pods' /32 routes are more specific). The node's underlay address must be one of this host's.
// It publishes the underlay segment (AttrSegment).
func (g *GlobalDriver) Join(ctx context.Context, n *drivers.Network, node *drivers.NodeView) error {
	if _, err := g.ifPrefix(n); err != nil {
		return err
	}
	if err := checkView(n, *node); err != nil {
		return err
	}
	if node.Underlay.Is4() && slices.ContainsFunc(node.Subnets, func(p netip.Prefix) bool { return p.Addr().Is6() }) && n.Options[OptRouting] != RoutingBGP {
		return fmt.Errorf("%w: %s network %q has an IPv6 cluster CIDR and node %q's underlay address %s is IPv4: host-gw routes a peer's subnet via its underlay address, and Linux routes IPv6 only via IPv6 next hops; give this network IPv4 only, the nodes IPv6 underlay addresses, or routing=bgp (IPv6 subnets carried by the routers, learned over IPv6 sessions)",
			drivers.ErrInvalid, GlobalName, n.Name, node.Node, node.Underlay)
	}
	seg, err := g.underlaySegment(node.Underlay)
	if err != nil {
		return err
	}
	if err := drivers.EnableForwarding(g.env, g.log, node.Subnets); err != nil {
		return err
	}
	if !n.Internal {
		if err := g.setUnreachable(node.Subnets); err != nil {
			return fmt.Errorf("join %s: %w", n.Name, err)
		}
	}
	// A node subnet that changed leaves the old one's unreachable route behind: remove it (peers'
	// routes are SyncPeers').
	if err := g.removeRoutes(clusterCIDRs(n), func(r netlink.Route) bool {
		return r.Type != unix.RTN_UNREACHABLE || slices.Contains(node.Subnets, prefixOf(r.Dst))
	}); err != nil {
		return fmt.Errorf("join %s: %w", n.Name, err)
	}
	if node.Attrs == nil {
		node.Attrs = map[string]string{}
	}
	node.Attrs[AttrSegment] = seg.String()
	g.log.Info("joined routed network", "network", n.Name, "node", node.Node, "subnets", node.Subnets, "underlay", node.Underlay, "segment", seg)
	return nil
}

// underlaySegment is the connected prefix of the host address addr.
func (g *GlobalDriver) underlaySegment(addr netip.Addr) (netip.Prefix, error) {
	addrs, err := drivers.AddrList(g.env.HostHandle, nil, netlink.FAMILY_ALL)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("find underlay %s: list addresses: %w", addr, err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == addr {
			ones, _ := a.Mask.Size()
			return netip.PrefixFrom(addr, ones).Masked(), nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("%w: no interface of this host has the underlay address %s", drivers.ErrInvalid, addr)
}

// Leave implements drivers.Joiner: every route of the network's this node made (its unreachable
// routes and the routes to its peers).
func (g *GlobalDriver) Leave(ctx context.Context, n *drivers.Network, node drivers.NodeView) error {
	return g.removeRoutes(clusterCIDRs(n), nil)
}

// SyncPeers implements drivers.PeerSyncer: one route per peer node subnet, via the peer's underlay
// address on the interface that reaches it directly (host-gw); routes of the network's cluster CIDR
// that no peer explains are removed (also those from before a restart). Bad views fail with
// ErrInvalid before anything changes. A peer whose underlay address this node reaches only through
// a router, or not at all, gets no route (its old one is removed): SyncPeers programs the others and
// then fails with ErrOffSegment naming it, unless the network routes by BGP (OptRouting), where
// such a peer is the routers' to reach.
func (g *GlobalDriver) SyncPeers(ctx context.Context, n *drivers.Network, self drivers.NodeView, peers []drivers.NodeView) error {
	if _, err := g.ifPrefix(n); err != nil {
		return err
	}
	type entry struct {
		node   string
		subnet netip.Prefix
		via    netip.Addr
	}
	var entries []entry
	names := map[string]bool{}
	subnets := map[netip.Prefix]string{}
	for _, sn := range self.Subnets {
		subnets[sn] = self.Node
	}
	for _, pv := range peers {
		if pv.Node == self.Node {
			continue
		}
		if pv.Node == "" || names[pv.Node] {
			return fmt.Errorf("%w: peer name %q is empty or given twice", drivers.ErrInvalid, pv.Node)
		}
		names[pv.Node] = true
		if err := checkView(n, pv); err != nil {
			return err
		}
		if self.Underlay.IsValid() && pv.Underlay.Is4() != self.Underlay.Is4() {
			return fmt.Errorf("%w: peer %q's underlay address %s is not of this node's family (%s)", drivers.ErrInvalid, pv.Node, pv.Underlay, self.Underlay)
		}
		for _, sn := range pv.Subnets {
			for o, owner := range subnets {
				if o.Overlaps(sn) {
					return fmt.Errorf("%w: peer %q's subnet %s overlaps node %q's %s", drivers.ErrInvalid, pv.Node, sn, owner, o)
				}
			}
			subnets[sn] = pv.Node
			entries = append(entries, entry{node: pv.Node, subnet: sn, via: pv.Underlay})
		}
	}
	h := g.env.HostHandle
	want := map[netip.Prefix]netip.Addr{}
	var off []string
	offSeen := map[string]bool{}
	for _, e := range entries {
		if e.via.Is4() && e.subnet.Addr().Is6() {
			// routing=bgp on an IPv4 underlay (Join refuses it otherwise): no IPv6 route can go via
			// an IPv4 address; the routers carry the peer's IPv6 subnet (BGP over IPv6 sessions).
			continue
		}
		dev, direct, why, err := g.directRoute(e.via)
		if err != nil {
			return fmt.Errorf("sync peers of %s: %w", n.Name, err)
		}
		if !direct {
			if n.Options[OptRouting] == RoutingBGP {
				// The routers carry it (they learn the peer's subnet by BGP); the host's normal route
				// (or the route the speaker learned) reaches it.
				continue
			}
			if !offSeen[e.node] {
				offSeen[e.node] = true
				off = append(off, fmt.Sprintf("%s (underlay %s: %s)", e.node, e.via, why))
			}
			continue
		}
		r := &netlink.Route{LinkIndex: dev, Dst: drivers.IPNet(e.subnet), Gw: e.via.AsSlice(), Protocol: RouteProtocol}
		if e.via.Is6() && e.subnet.Addr().Is4() {
			// IPv4 pods on an IPv6 underlay: via the peer's IPv6 address (RTA_VIA, "via inet6
			// fd00::2", RFC 5549, Linux 5.2 and later). Join refuses the converse, which the kernel
			// cannot route.
			r.Gw, r.Via = nil, &netlink.Via{AddrFamily: netlink.FAMILY_V6, Addr: e.via.AsSlice()}
		}
		if err := h.RouteReplace(r); err != nil {
			return fmt.Errorf("sync peers of %s: route %s via %s for %s: %w", n.Name, e.subnet, e.via, e.node, err)
		}
		want[e.subnet] = e.via
	}
	if err := g.removeRoutes(clusterCIDRs(n), func(r netlink.Route) bool {
		if r.Type == unix.RTN_UNREACHABLE {
			return slices.Contains(self.Subnets, prefixOf(r.Dst))
		}
		gw, _ := netip.AddrFromSlice(r.Gw)
		if v, ok := r.Via.(*netlink.Via); ok && v != nil {
			gw, _ = netip.AddrFromSlice(v.Addr)
		}
		via, ok := want[prefixOf(r.Dst)]
		return ok && via == gw.Unmap()
	}); err != nil {
		return fmt.Errorf("sync peers of %s: %w", n.Name, err)
	}
	g.log.Debug("peers synced", "network", n.Name, "peers", len(peers), "routes", len(want), "off_segment", len(off))
	if len(off) > 0 {
		return fmt.Errorf("%w: %s: host-gw routes a peer's pods via its underlay address, which must be directly connected to this node (one L2 segment); their pods are unreachable from here",
			ErrOffSegment, strings.Join(off, ", "))
	}
	return nil
}

// directRoute reports the interface by which this host reaches addr directly (no gateway), or why
// it does not.
func (g *GlobalDriver) directRoute(addr netip.Addr) (int, bool, string, error) {
	routes, err := g.env.HostHandle.RouteGet(addr.AsSlice())
	if err != nil {
		if errors.Is(err, unix.ENETUNREACH) || errors.Is(err, unix.EHOSTUNREACH) {
			return 0, false, "no route", nil
		}
		return 0, false, "", fmt.Errorf("route to %s: %w", addr, err)
	}
	for _, r := range routes {
		switch {
		case r.Type == unix.RTN_LOCAL:
			return 0, false, "it is this host's own address", nil
		case r.Type != unix.RTN_UNICAST:
			return 0, false, "no route", nil
		case len(r.Gw) > 0 && !r.Gw.IsUnspecified():
			return 0, false, "reached via router " + r.Gw.String(), nil
		default:
			return r.LinkIndex, true, "", nil
		}
	}
	return 0, false, "no route", nil
}
