package overlay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netmgr/netmgr/drivers"
	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr/firewall"
	"github.com/netmgr/netmgr/sandbox"
)

// host is one simulated node: a namespace with an underlay interface (eth0, 198.18.0.N/24) on a
// bridge in a shared underlay namespace, and an overlay driver working in it.
type host struct {
	name string
	ns   *sandbox.NetNS
	h    *netlink.Handle
	d    *Driver
	addr netip.Addr
	fw   *firewall.Firewall
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// newCluster makes the underlay namespace with its bridge and n hosts on it.
func newCluster(t *testing.T, n int) []*host {
	t.Helper()
	ul := testutil.NewNS(t, "underlay")
	uh, err := ul.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(uh.Close)
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "ul0", TxQLen: -1}}
	if err := uh.LinkAdd(br); err != nil {
		t.Fatal(err)
	}
	if err := uh.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}
	var hosts []*host
	for i := 1; i <= n; i++ {
		ns := testutil.NewNS(t, fmt.Sprintf("host%d", i))
		h, err := ns.NewHandle()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(h.Close)
		peer := fmt.Sprintf("h%d", i)
		if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", TxQLen: -1}, PeerName: peer, PeerNamespace: netlink.NsFd(ul.Fd())}); err != nil {
			t.Fatal(err)
		}
		pl, err := uh.LinkByName(peer)
		if err != nil {
			t.Fatal(err)
		}
		if err := uh.LinkSetMasterByIndex(pl, br.Attrs().Index); err != nil {
			t.Fatal(err)
		}
		if err := uh.LinkSetUp(pl); err != nil {
			t.Fatal(err)
		}
		eth, err := h.LinkByName("eth0")
		if err != nil {
			t.Fatal(err)
		}
		addr := netip.AddrFrom4([4]byte{198, 18, 0, byte(i)})
		if err := h.AddrAdd(eth, &netlink.Addr{IPNet: drivers.IPNet(netip.PrefixFrom(addr, 24))}); err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetUp(eth); err != nil {
			t.Fatal(err)
		}
		drv, err := New(drivers.Env{Host: ns, HostHandle: h, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		fw, err := firewall.New(ns.Fd(), testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { fw.Close() })
		hosts = append(hosts, &host{name: fmt.Sprintf("node%d", i), ns: ns, h: h, d: drv.(*Driver), addr: addr, fw: fw})
	}
	return hosts
}

// newOverlay prepares and allocates an overlay network with cluster CIDR cidr, as network create
// does.
func newOverlay(t *testing.T, d *Driver, name, cidr string, opts map[string]string, taken ...*drivers.Network) *drivers.Network {
	t.Helper()
	n := &drivers.Network{ID: "id-" + name, Name: name, Driver: Name, Subnets: []netip.Prefix{netip.MustParsePrefix(cidr)}, Options: opts}
	if err := d.PrepareNetwork(n, taken); err != nil {
		t.Fatal(err)
	}
	if err := d.Allocate(t.Context(), n, taken); err != nil {
		t.Fatal(err)
	}
	return n
}

// view is host i's (1-based) node view of n: the i-th /24 of its /16.
func view(n *drivers.Network, hs *host, i int) drivers.NodeView {
	b := n.Subnets[0].Addr().As4()
	sn := netip.PrefixFrom(netip.AddrFrom4([4]byte{b[0], b[1], byte(i), 0}), 24)
	return drivers.NodeView{Node: hs.name, Subnets: []netip.Prefix{sn}, Gateways: []netip.Addr{sn.Addr().Next()}, Underlay: hs.addr}
}

// nodeNetwork is n as endpoint calls on a node see it: the node's subnet and gateway.
func nodeNetwork(n *drivers.Network, v drivers.NodeView) *drivers.Network {
	c := *n
	c.Subnets, c.Gateways = v.Subnets, v.Gateways
	return &c
}

// pod is a sandbox attached to an overlay network on one host.
type pod struct {
	ns   *sandbox.NetNS
	ip   netip.Addr
	ep   *drivers.Endpoint
	n    *drivers.Network
	host *host
}

func attachPod(t *testing.T, hs *host, n *drivers.Network, v drivers.NodeView, name string, last byte) *pod {
	t.Helper()
	ns := testutil.NewNS(t, name)
	ip := v.Subnets[0].Addr().As4()
	ip[3] = last
	addr := netip.AddrFrom4(ip)
	nn := nodeNetwork(n, v)
	ep := &drivers.Endpoint{ID: "ep-" + name, Sandbox: name, IfName: "eth0",
		Addrs: []netip.Prefix{netip.PrefixFrom(addr, 24)}, Gateways: v.Gateways}
	if err := hs.d.PrepareEndpoint(nn, ep); err != nil {
		t.Fatal(err)
	}
	if err := hs.d.Attach(t.Context(), nn, ep, ns); err != nil {
		t.Fatal(err)
	}
	return &pod{ns: ns, ip: addr, ep: ep, n: nn, host: hs}
}

// applyFirewall programs hs's firewall from the driver's specs of nets, as the Manager's
// syncFirewall does.
func applyFirewall(t *testing.T, hs *host, nets ...*drivers.Network) {
	t.Helper()
	var fns []firewall.Network
	for _, n := range nets {
		fs, ok := hs.d.Firewall(n)
		if !ok {
			t.Fatalf("no firewall spec for %s", n.Name)
		}
		fns = append(fns, firewall.Network{Name: n.Name, Ifaces: fs.HostIfaces, Subnets: n.Subnets, Internal: n.Internal,
			Masquerade: fs.Masquerade, Routed: fs.Routed, NoMasqueradeTo: fs.NoMasqueradeTo})
	}
	if err := hs.fw.Apply(t.Context(), fns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hs.fw.Remove(context.Background()) })
}

// peerState lists the routes, neighbour and FDB entries of n's VXLAN device on hs, sorted, for
// comparisons ("" if the device is gone).
func peerState(t *testing.T, hs *host, n *drivers.Network) string {
	t.Helper()
	p, err := paramsOf(n)
	if err != nil {
		t.Fatal(err)
	}
	vx, err := hs.h.LinkByName(p.vxlan)
	if drivers.IsLinkNotFound(err) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	idx := vx.Attrs().Index
	var out []string
	routes, err := hs.h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{LinkIndex: idx}, netlink.RT_FILTER_OIF)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if r.Protocol == unix.RTPROT_KERNEL {
			continue
		}
		out = append(out, fmt.Sprintf("route %v via %v onlink=%v", r.Dst, r.Gw, r.Flags&int(netlink.FLAG_ONLINK) != 0))
	}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		ns, err := hs.h.NeighList(idx, fam)
		if err != nil {
			t.Fatal(err)
		}
		for _, nb := range ns {
			if nb.State&netlink.NUD_NOARP != 0 {
				continue
			}
			out = append(out, fmt.Sprintf("neigh %v lladdr %v state %#x", nb.IP, nb.HardwareAddr, nb.State))
		}
	}
	fdb, err := hs.h.NeighList(idx, unix.AF_BRIDGE)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range fdb {
		out = append(out, fmt.Sprintf("fdb %v dst %v state %#x", e.HardwareAddr, e.IP, e.State))
	}
	slices.Sort(out)
	return strings.Join(out, "\n")
}

// ownLinks lists hs's links of this driver's prefixes.
func ownLinks(t *testing.T, hs *host) []string {
	t.Helper()
	links, err := hs.h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range links {
		if name := l.Attrs().Name; strings.HasPrefix(name, "nmo") {
			out = append(out, name)
		}
	}
	return out
}

// TestOverlayThreeHosts drives the driver as the agent will: Allocate once, Join and SyncPeers on
// every host, a pod on each host through PrepareEndpoint and Attach, the firewall as the Manager
// applies it; then peer removal, stale entries, idempotent re-syncs, a second overlay network,
// full-size segments, and Leave and Collect leaving nothing.
func TestOverlayThreeHosts(t *testing.T) {
	testutil.RequireRoot(t)
	ctx := t.Context()
	hosts := newCluster(t, 3)
	n := newOverlay(t, hosts[0].d, "ov1", "10.60.0.0/16", nil)
	if n.Options[OptVNI] != "4096" || n.Options[OptPort] != "4789" || n.Options[OptNodePrefix] != "24" {
		t.Fatalf("allocated options %v, want vni 4096, port 4789, node-prefix 24", n.Options)
	}
	views := make([]drivers.NodeView, len(hosts))
	for i, hs := range hosts {
		views[i] = view(n, hs, i+1)
		if err := hs.d.Join(ctx, n, &views[i]); err != nil {
			t.Fatalf("join %s: %v", hs.name, err)
		}
		if got, want := views[i].Attrs[AttrVTEPMAC], vtepMAC(hs.name, 4096).String(); got != want {
			t.Fatalf("%s published vtep_mac %q, want %q", hs.name, got, want)
		}
	}
	for i, hs := range hosts {
		if err := hs.d.SyncPeers(ctx, n, views[i], views); err != nil {
			t.Fatalf("sync peers on %s: %v", hs.name, err)
		}
		applyFirewall(t, hs, n)
	}

	// The devices as the design says: learning off, the MAC kept, MTU the underlay's less 50, local
	// the underlay address; the VXLAN device is not a bridge port.
	vxl, err := hosts[0].h.LinkByName("nmox4096")
	if err != nil {
		t.Fatal(err)
	}
	vx := vxl.(*netlink.Vxlan)
	if vx.Learning || vx.VxlanId != 4096 || vx.Port != 4789 || vx.MTU != 1450 || vx.HardwareAddr.String() != views[0].Attrs[AttrVTEPMAC] ||
		!net.IP(vx.SrcAddr).Equal(hosts[0].addr.AsSlice()) || vx.MasterIndex != 0 {
		t.Errorf("vxlan device %+v: want learning off, vni 4096, port 4789, mtu 1450, mac %s, local %s, no master", vx, views[0].Attrs[AttrVTEPMAC], hosts[0].addr)
	}

	pods := make([]*pod, len(hosts))
	for i, hs := range hosts {
		pods[i] = attachPod(t, hs, n, views[i], fmt.Sprintf("pod%d", i+1), 10)
		if pods[i].ep.MTU != 1450 {
			t.Errorf("pod %d endpoint MTU %d, want the overlay's 1450", i+1, pods[i].ep.MTU)
		}
	}
	servers := make([]string, len(pods))
	for i, p := range pods {
		servers[i] = testutil.Listen(t, p.ns, netip.AddrPortFrom(p.ip, 8080).String())
	}

	t.Run("every pod reaches every other, seen by its own IP", func(t *testing.T) {
		for i, a := range pods {
			for j := range pods {
				if i == j {
					continue
				}
				seen, err := testutil.Dial(a.ns, servers[j])
				if err != nil {
					t.Errorf("pod%d -> pod%d: %v", i+1, j+1, err)
				} else if seen != a.ip.String() {
					t.Errorf("pod%d -> pod%d: the receiver saw %s, want the sender's pod IP %s", i+1, j+1, seen, a.ip)
				}
			}
			if err := testutil.Ping(a.ns, pods[(i+1)%len(pods)].ip.String()); err != nil {
				t.Errorf("ping from pod%d: %v", i+1, err)
			}
		}
	})

	t.Run("egress leaving the cluster is masqueraded", func(t *testing.T) {
		out := testutil.NewOutside(t, hosts[0].ns)
		srv := testutil.Listen(t, out.NS, netip.AddrPortFrom(out.Addr, 8080).String())
		if seen, err := testutil.Dial(pods[0].ns, srv); err != nil || seen != out.HostIP.String() {
			t.Errorf("pod1 -> outside: seen as %q, %v; want the host's %s", seen, err, out.HostIP)
		}
		// A neighbour that routes the cluster CIDR via the host still opens no connection to a pod
		// (the firewall's gateway_mode=nat rule covers the overlay's interfaces too).
		oh, err := out.NS.Handle()
		if err != nil {
			t.Fatal(err)
		}
		if err := oh.RouteAdd(&netlink.Route{Dst: drivers.IPNet(n.Subnets[0]), Gw: out.HostIP.AsSlice()}); err != nil {
			t.Fatal(err)
		}
		if err := testutil.DialBlocked(out.NS, servers[0]); err != nil {
			t.Errorf("outside -> pod1 with a route to the cluster CIDR: %v", err)
		}
	})

	t.Run("1 MB with full-size segments", func(t *testing.T) {
		got, mss := testutil.Transfer(t, pods[0].ns, pods[2].ns, pods[2].ip, 9000, 1<<20)
		if got != 1<<20 {
			t.Errorf("received %d bytes of 1 MiB", got)
		}
		// 1450 less 20 of IPv4 and 20 of TCP (timestamps are taken out of segments, not the MSS).
		if mss != 1410 && mss != 1398 {
			t.Errorf("MSS %d, want 1410 (an MTU of 1450 end to end)", mss)
		}
	})

	t.Run("re-sync and re-join are idempotent", func(t *testing.T) {
		before := peerState(t, hosts[0], n)
		if strings.Count(before, "route ") != 2 || strings.Count(before, "fdb ") != 2 || strings.Count(before, "neigh ") != 2 {
			t.Fatalf("host1 peer entries, want 2 routes, neighbours and FDB entries:\n%s", before)
		}
		for range 2 {
			v := views[0]
			v.Attrs = nil
			if err := hosts[0].d.Join(ctx, n, &v); err != nil {
				t.Fatal(err)
			}
			if v.Attrs[AttrVTEPMAC] != views[0].Attrs[AttrVTEPMAC] {
				t.Errorf("re-join published %v, first join %v", v.Attrs, views[0].Attrs)
			}
			if err := hosts[0].d.SyncPeers(ctx, n, views[0], views); err != nil {
				t.Fatal(err)
			}
		}
		if after := peerState(t, hosts[0], n); after != before {
			t.Errorf("re-sync changed the entries:\n%s\nwas:\n%s", after, before)
		}
	})

	t.Run("a stale entry planted before a sync goes", func(t *testing.T) {
		before := peerState(t, hosts[0], n)
		vx, err := hosts[0].h.LinkByName("nmox4096")
		if err != nil {
			t.Fatal(err)
		}
		idx := vx.Attrs().Index
		mac, _ := net.ParseMAC("02:00:00:00:00:99")
		via := net.ParseIP("10.60.99.0")
		for _, err := range []error{
			hosts[0].h.NeighSet(&netlink.Neigh{LinkIndex: idx, State: netlink.NUD_PERMANENT, IP: via, HardwareAddr: mac}),
			hosts[0].h.NeighSet(&netlink.Neigh{LinkIndex: idx, State: netlink.NUD_PERMANENT, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF,
				IP: net.ParseIP("198.18.0.99"), HardwareAddr: mac}),
			hosts[0].h.RouteAdd(&netlink.Route{LinkIndex: idx, Dst: drivers.IPNet(netip.MustParsePrefix("10.60.99.0/24")), Gw: via, Flags: int(netlink.FLAG_ONLINK)}),
			// A peer's route pointed elsewhere, as a peer whose subnet changed while the agent was down.
			hosts[0].h.RouteReplace(&netlink.Route{LinkIndex: idx, Dst: drivers.IPNet(views[1].Subnets[0]), Gw: via, Flags: int(netlink.FLAG_ONLINK)}),
		} {
			if err != nil {
				t.Fatalf("plant: %v", err)
			}
		}
		planted := peerState(t, hosts[0], n)
		if !strings.Contains(planted, "10.60.99.0") || !strings.Contains(planted, "198.18.0.99") {
			t.Fatalf("planting failed:\n%s", planted)
		}
		if err := hosts[0].d.SyncPeers(ctx, n, views[0], views); err != nil {
			t.Fatal(err)
		}
		if after := peerState(t, hosts[0], n); after != before {
			t.Errorf("after a sync:\n%s\nwant:\n%s", after, before)
		}
	})

	t.Run("bad input changes nothing", func(t *testing.T) {
		before := peerState(t, hosts[0], n)
		linksBefore := ownLinks(t, hosts[0])
		bad := func(mod func(v *drivers.NodeView)) []drivers.NodeView {
			vs := slices.Clone(views)
			v := vs[2]
			v.Attrs = map[string]string{AttrVTEPMAC: views[2].Attrs[AttrVTEPMAC]}
			mod(&v)
			vs[2] = v
			return vs
		}
		for name, peers := range map[string][]drivers.NodeView{
			"multicast MAC":        bad(func(v *drivers.NodeView) { v.Attrs[AttrVTEPMAC] = "01:00:5e:00:00:01" }),
			"no MAC":               bad(func(v *drivers.NodeView) { delete(v.Attrs, AttrVTEPMAC) }),
			"same MAC as a peer":   bad(func(v *drivers.NodeView) { v.Attrs[AttrVTEPMAC] = views[1].Attrs[AttrVTEPMAC] }),
			"subnet outside CIDR":  bad(func(v *drivers.NodeView) { v.Subnets = []netip.Prefix{netip.MustParsePrefix("10.70.3.0/24")} }),
			"subnet of wrong size": bad(func(v *drivers.NodeView) { v.Subnets = []netip.Prefix{netip.MustParsePrefix("10.60.3.0/25")} }),
			"overlapping subnets":  bad(func(v *drivers.NodeView) { v.Subnets = views[1].Subnets }),
			"overlapping self":     bad(func(v *drivers.NodeView) { v.Subnets = views[0].Subnets }),
			"no underlay":          bad(func(v *drivers.NodeView) { v.Underlay = netip.Addr{} }),
			"IPv6 underlay":        bad(func(v *drivers.NodeView) { v.Underlay = netip.MustParseAddr("fd00::3") }),
		} {
			if err := hosts[0].d.SyncPeers(ctx, n, views[0], peers); !errors.Is(err, drivers.ErrInvalid) {
				t.Errorf("SyncPeers with %s: %v, want ErrInvalid", name, err)
			}
		}
		for name, v := range map[string]drivers.NodeView{
			"underlay not on this host": {Node: "node1", Subnets: views[0].Subnets, Gateways: views[0].Gateways, Underlay: netip.MustParseAddr("198.18.0.77")},
			"gateway outside subnet":    {Node: "node1", Subnets: views[0].Subnets, Gateways: []netip.Addr{netip.MustParseAddr("10.60.2.1")}, Underlay: hosts[0].addr},
			"gateway the network addr":  {Node: "node1", Subnets: views[0].Subnets, Gateways: []netip.Addr{views[0].Subnets[0].Addr()}, Underlay: hosts[0].addr},
			"no gateway":                {Node: "node1", Subnets: views[0].Subnets, Underlay: hosts[0].addr},
			"subnet outside CIDR":       {Node: "node1", Subnets: []netip.Prefix{netip.MustParsePrefix("10.70.1.0/24")}, Gateways: []netip.Addr{netip.MustParseAddr("10.70.1.1")}, Underlay: hosts[0].addr},
		} {
			v2 := *n
			v2.MTU = 0
			if err := hosts[0].d.Join(ctx, &v2, &v); !errors.Is(err, drivers.ErrInvalid) {
				t.Errorf("Join with %s: %v, want ErrInvalid", name, err)
			}
		}
		// An attach on a host that has not joined is refused with one line and creates nothing.
		other := *n
		other.Options = map[string]string{OptVNI: "4321", OptPort: "4789", OptNodePrefix: "24"}
		sb := testutil.NewNS(t, "unjoined")
		ep := &drivers.Endpoint{ID: "ep-unjoined", Sandbox: "unjoined", IfName: "eth0", Addrs: pfx("10.60.1.99/24"), Gateways: views[0].Gateways}
		if err := hosts[0].d.PrepareEndpoint(&other, ep); err != nil {
			t.Fatal(err)
		}
		if err := hosts[0].d.Attach(ctx, &other, ep, sb); !errors.Is(err, drivers.ErrNotFound) || !strings.Contains(err.Error(), "not joined") {
			t.Errorf("Attach to an overlay network this host has not joined: %v, want ErrNotFound saying so", err)
		}
		big := *n
		big.MTU = 1500
		v := views[0]
		if err := hosts[0].d.Join(ctx, &big, &v); !errors.Is(err, drivers.ErrInvalid) {
			t.Errorf("Join with mtu 1500 over a 1500 underlay: %v, want ErrInvalid", err)
		}
		if after := peerState(t, hosts[0], n); after != before {
			t.Errorf("refused calls changed the entries:\n%s\nwas:\n%s", after, before)
		}
		if after := ownLinks(t, hosts[0]); !slices.Equal(after, linksBefore) {
			t.Errorf("refused calls changed the links: %v, was %v", after, linksBefore)
		}
		// Host 2's network address on its bridge and VXLAN device is unchanged too.
		seen, err := testutil.Dial(pods[1].ns, servers[0])
		if err != nil || seen != pods[1].ip.String() {
			t.Errorf("pod2 -> pod1 after the refused calls: %q, %v", seen, err)
		}
	})

	t.Run("two overlay networks are isolated", func(t *testing.T) {
		n2 := newOverlay(t, hosts[0].d, "ov2", "10.61.0.0/16", nil, n)
		if n2.Options[OptVNI] != "4097" {
			t.Fatalf("second network's VNI %s, want 4097", n2.Options[OptVNI])
		}
		views2 := []drivers.NodeView{view(n2, hosts[0], 1), view(n2, hosts[1], 2)}
		for i := range views2 {
			if err := hosts[i].d.Join(ctx, n2, &views2[i]); err != nil {
				t.Fatal(err)
			}
		}
		for i := range views2 {
			if err := hosts[i].d.SyncPeers(ctx, n2, views2[i], views2); err != nil {
				t.Fatal(err)
			}
		}
		q1 := attachPod(t, hosts[0], n2, views2[0], "q1", 10)
		q2 := attachPod(t, hosts[1], n2, views2[1], "q2", 10)
		srv := testutil.Listen(t, q2.ns, netip.AddrPortFrom(q2.ip, 8080).String())
		// Routing alone joins them (each host routes both cluster CIDRs): what keeps them apart
		// below is the firewall.
		if _, err := testutil.Dial(pods[0].ns, srv); err != nil {
			t.Fatalf("ov1 pod1 -> ov2 q2 before the firewall knows ov2: %v", err)
		}
		for i := range views2 {
			applyFirewall(t, hosts[i], n, n2)
		}
		if seen, err := testutil.Dial(q1.ns, srv); err != nil || seen != q1.ip.String() {
			t.Errorf("q1 -> q2 on ov2: seen %q, %v; want %s", seen, err, q1.ip)
		}
		if seen, err := testutil.Dial(pods[0].ns, servers[1]); err != nil || seen != pods[0].ip.String() {
			t.Errorf("pod1 -> pod2 on ov1 with both networks: seen %q, %v", seen, err)
		}
		if err := testutil.DialBlocked(pods[0].ns, srv); err != nil {
			t.Errorf("ov1 pod1 -> ov2 q2 on another host: %v", err)
		}
		if err := testutil.DialBlocked(q1.ns, servers[1]); err != nil {
			t.Errorf("ov2 q1 -> ov1 pod2 on another host: %v", err)
		}
		if err := testutil.DialBlocked(q1.ns, servers[0]); err != nil {
			t.Errorf("ov2 q1 -> ov1 pod1 on the same host: %v", err)
		}
		for _, q := range []*pod{q1, q2} {
			if err := q.host.d.Detach(ctx, q.n, q.ep, q.ns, drivers.DetachOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		for i := range views2 {
			if err := hosts[i].d.Leave(ctx, n2, views2[i]); err != nil {
				t.Fatal(err)
			}
			applyFirewall(t, hosts[i], n)
		}
		// A second VNI given by hand that another network has is refused.
		dup := &drivers.Network{ID: "id-ov3", Name: "ov3", Subnets: []netip.Prefix{netip.MustParsePrefix("10.62.0.0/16")}, Options: map[string]string{OptVNI: "4096"}}
		if err := hosts[0].d.Allocate(ctx, dup, []*drivers.Network{n}); !errors.Is(err, drivers.ErrExists) {
			t.Errorf("Allocate of a taken VNI: %v, want ErrExists", err)
		}
	})

	t.Run("a peer removed loses its entries", func(t *testing.T) {
		if err := hosts[0].d.SyncPeers(ctx, n, views[0], views[:2]); err != nil {
			t.Fatal(err)
		}
		st := peerState(t, hosts[0], n)
		gone := []string{views[2].Subnets[0].String(), views[2].Subnets[0].Addr().String(), views[2].Attrs[AttrVTEPMAC], hosts[2].addr.String()}
		for _, g := range gone {
			if strings.Contains(st, g) {
				t.Errorf("host1 still has an entry with %s of the removed peer:\n%s", g, st)
			}
		}
		if strings.Count(st, "route ") != 1 || strings.Count(st, "fdb ") != 1 || strings.Count(st, "neigh ") != 1 {
			t.Errorf("host1 entries after removing node3, want one of each for node2:\n%s", st)
		}
		if err := testutil.DialBlocked(pods[0].ns, servers[2]); err != nil {
			t.Errorf("pod1 -> pod3 after node3 left host1's peers: %v", err)
		}
		if _, err := testutil.Dial(pods[0].ns, servers[1]); err != nil {
			t.Errorf("pod1 -> pod2: %v", err)
		}
		if err := hosts[0].d.SyncPeers(ctx, n, views[0], views); err != nil {
			t.Fatal(err)
		}
		if _, err := testutil.Dial(pods[0].ns, servers[2]); err != nil {
			t.Errorf("pod1 -> pod3 after node3 is back: %v", err)
		}
	})

	t.Run("a veth deleted or cut off by hand is restored", func(t *testing.T) {
		p := pods[0]
		hostEnd, err := hosts[0].h.LinkByName(p.ep.HostName)
		if err != nil {
			t.Fatal(err)
		}
		if err := hosts[0].h.LinkDel(hostEnd); err != nil {
			t.Fatal(err)
		}
		mac := p.ep.MAC
		if changed, err := hosts[0].d.RestoreEndpoint(ctx, p.n, p.ep, p.ns); err != nil || !changed {
			t.Fatalf("RestoreEndpoint of a deleted veth = %v, %v; want true", changed, err)
		}
		if p.ep.MAC != mac {
			t.Errorf("restored endpoint's MAC %s, was %s", p.ep.MAC, mac)
		}
		if hostEnd, err = hosts[0].h.LinkByName(p.ep.HostName); err != nil {
			t.Fatal(err)
		}
		if err := hosts[0].h.LinkSetNoMaster(hostEnd); err != nil {
			t.Fatal(err)
		}
		if changed, err := hosts[0].d.RestoreEndpoint(ctx, p.n, p.ep, p.ns); err != nil || !changed {
			t.Fatalf("RestoreEndpoint of a veth off its bridge = %v, %v; want true", changed, err)
		}
		if changed, err := hosts[0].d.RestoreEndpoint(ctx, p.n, p.ep, p.ns); err != nil || changed {
			t.Fatalf("RestoreEndpoint of an intact endpoint = %v, %v; want false", changed, err)
		}
		if seen, err := testutil.Dial(pods[1].ns, servers[0]); err != nil || seen != pods[1].ip.String() {
			t.Errorf("pod2 -> restored pod1: %q, %v", seen, err)
		}
	})

	t.Run("leave and collect leave nothing", func(t *testing.T) {
		// A leftover of each kind on host 1: a veth of a pod whose record is gone, and the devices
		// of a network deleted while the node was away.
		if err := hosts[0].h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: HostIfPrefix + "deadbeef0"}, PeerName: "leftover0"}); err != nil {
			t.Fatal(err)
		}
		gone := &drivers.Network{ID: "id-gone", Name: "gone", Subnets: []netip.Prefix{netip.MustParsePrefix("10.63.0.0/16")}, Options: map[string]string{OptVNI: "4999"}}
		if err := hosts[0].d.PrepareNetwork(gone, nil); err != nil {
			t.Fatal(err)
		}
		gv := drivers.NodeView{Node: "node1", Subnets: []netip.Prefix{netip.MustParsePrefix("10.63.1.0/24")},
			Gateways: []netip.Addr{netip.MustParseAddr("10.63.1.1")}, Underlay: hosts[0].addr}
		if err := hosts[0].d.Join(ctx, gone, &gv); err != nil {
			t.Fatal(err)
		}
		collect := func(hs *host, nets ...*drivers.Network) drivers.CollectResult {
			t.Helper()
			links, err := drivers.LinkList(hs.h)
			if err != nil {
				t.Fatal(err)
			}
			inUse := map[string]bool{}
			for _, p := range pods {
				inUse[p.ep.HostName] = true
			}
			res, err := hs.d.Collect(ctx, drivers.CollectInput{Links: links, Networks: nets, InUse: inUse})
			if err != nil {
				t.Fatal(err)
			}
			return res
		}
		res := collect(hosts[0], n)
		slices.Sort(res.Devices)
		if !slices.Equal(res.Links, []string{HostIfPrefix + "deadbeef0"}) || !slices.Equal(res.Devices, []string{"nmob4999", "nmox4999"}) || len(res.Errors) > 0 {
			t.Errorf("Collect = %+v, want the leftover veth and the gone network's two devices", res)
		}
		if _, err := testutil.Dial(pods[1].ns, servers[0]); err != nil {
			t.Errorf("Collect broke the recorded network: pod2 -> pod1: %v", err)
		}
		for i, p := range pods {
			if err := p.host.d.Detach(ctx, p.n, p.ep, p.ns, drivers.DetachOptions{}); err != nil {
				t.Fatal(err)
			}
			if err := hosts[i].d.Leave(ctx, n, views[i]); err != nil {
				t.Fatal(err)
			}
			if err := hosts[i].d.Leave(ctx, n, views[i]); err != nil {
				t.Fatalf("second Leave: %v", err)
			}
			if res := collect(hosts[i]); len(res.Links)+len(res.Devices)+len(res.Kept)+len(res.Errors) > 0 {
				t.Errorf("Collect after Leave on %s found %+v", hosts[i].name, res)
			}
			if left := ownLinks(t, hosts[i]); len(left) > 0 {
				t.Errorf("%s has links left: %v", hosts[i].name, left)
			}
			routes, _ := hosts[i].h.RouteList(nil, netlink.FAMILY_V4)
			for _, r := range routes {
				if r.Dst != nil && strings.HasPrefix(r.Dst.String(), "10.6") {
					t.Errorf("%s has a route left: %v", hosts[i].name, r)
				}
			}
		}
	})
}
