package routed

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netmgr/netmgr/drivers"
	"github.com/netmgr/netmgr/internal/testutil"
)

// TestSyncPeers, on one node's host namespace (eth0 198.18.0.1/24, and 198.19.0.0/24 behind the
// router 198.18.0.254): Join adds the node subnet's unreachable route and publishes the segment;
// SyncPeers routes an on-segment peer's subnet via its underlay address, reports a peer behind a
// router with ErrOffSegment (naming it and why) while programming the other, removes a stale route
// of its own from before a restart, refuses a bad view with ErrInvalid changing nothing, and with no
// peers leaves none; Leave removes the rest.
func TestSyncPeers(t *testing.T) {
	testutil.RequireRoot(t)
	host := testutil.NewNS(t, "host")
	other := testutil.NewNS(t, "segment")
	hh, err := host.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer hh.Close()
	if err := hh.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(other.Fd())}); err != nil {
		t.Fatal(err)
	}
	eth, _ := hh.LinkByName("eth0")
	if err := hh.AddrAdd(eth, &netlink.Addr{IPNet: drivers.IPNet(netip.MustParsePrefix("198.18.0.1/24"))}); err != nil {
		t.Fatal(err)
	}
	if err := hh.LinkSetUp(eth); err != nil {
		t.Fatal(err)
	}
	_, far, _ := net.ParseCIDR("198.19.0.0/24")
	if err := hh.RouteAdd(&netlink.Route{Dst: far, Gw: net.ParseIP("198.18.0.254"), LinkIndex: eth.Attrs().Index}); err != nil {
		t.Fatal(err)
	}
	dd, err := NewGlobal(drivers.Env{Host: host, HostHandle: hh, Logger: slog.New(slog.NewTextHandler(t.Output(), nil))})
	if err != nil {
		t.Fatal(err)
	}
	g := dd.(*GlobalDriver)
	n := &drivers.Network{ID: "id-rg", Name: "rg", Driver: GlobalName, Subnets: []netip.Prefix{netip.MustParsePrefix("10.250.0.0/16")}}
	if err := g.Allocate(t.Context(), n, nil); err != nil {
		t.Fatal(err)
	}
	self := drivers.NodeView{Node: "n1", Subnets: []netip.Prefix{netip.MustParsePrefix("10.250.1.0/24")}, Gateways: []netip.Addr{netip.MustParseAddr("10.250.1.1")}, Underlay: netip.MustParseAddr("198.18.0.1")}
	if err := g.Join(t.Context(), n, &self); err != nil {
		t.Fatal(err)
	}
	if self.Attrs[AttrSegment] != "198.18.0.0/24" {
		t.Errorf("published segment %q, want 198.18.0.0/24", self.Attrs[AttrSegment])
	}
	route := func(dst string) *netlink.Route {
		t.Helper()
		routes, err := hh.RouteList(nil, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		for i, r := range routes {
			if r.Dst != nil && r.Dst.String() == dst {
				return &routes[i]
			}
		}
		return nil
	}
	if r := route("10.250.1.0/24"); r == nil || r.Type != unix.RTN_UNREACHABLE {
		t.Errorf("own subnet route %+v, want unreachable", r)
	}
	// A stale route of the driver's own, as from before a restart (a peer gone meanwhile).
	_, stale, _ := net.ParseCIDR("10.250.9.0/24")
	if err := hh.RouteAdd(&netlink.Route{Dst: stale, Gw: net.ParseIP("198.18.0.9"), LinkIndex: eth.Attrs().Index, Protocol: RouteProtocol}); err != nil {
		t.Fatal(err)
	}
	on := drivers.NodeView{Node: "n2", Subnets: []netip.Prefix{netip.MustParsePrefix("10.250.2.0/24")}, Underlay: netip.MustParseAddr("198.18.0.2")}
	off := drivers.NodeView{Node: "n3", Subnets: []netip.Prefix{netip.MustParsePrefix("10.250.3.0/24")}, Underlay: netip.MustParseAddr("198.19.0.3")}
	err = g.SyncPeers(t.Context(), n, self, []drivers.NodeView{on, off})
	if !errors.Is(err, ErrOffSegment) || !strings.Contains(err.Error(), "n3") || !strings.Contains(err.Error(), "198.18.0.254") {
		t.Errorf("SyncPeers with a peer behind a router: %v, want ErrOffSegment naming n3 and its router", err)
	} else {
		t.Log(err)
	}
	if r := route("10.250.2.0/24"); r == nil || !r.Gw.Equal(net.ParseIP("198.18.0.2")) || r.LinkIndex != eth.Attrs().Index {
		t.Errorf("route to n2's subnet %+v, want via 198.18.0.2 dev eth0", r)
	}
	if r := route("10.250.3.0/24"); r != nil {
		t.Errorf("route to off-segment n3's subnet %+v, want none", r)
	}
	if r := route("10.250.9.0/24"); r != nil {
		t.Errorf("stale route %+v survived SyncPeers", r)
	}
	bad := drivers.NodeView{Node: "n4", Subnets: []netip.Prefix{netip.MustParsePrefix("10.99.4.0/24")}, Underlay: netip.MustParseAddr("198.18.0.4")}
	if err := g.SyncPeers(t.Context(), n, self, []drivers.NodeView{bad}); !errors.Is(err, drivers.ErrInvalid) {
		t.Errorf("SyncPeers with a subnet outside the CIDR: %v, want ErrInvalid", err)
	}
	if route("10.250.2.0/24") == nil {
		t.Error("a refused SyncPeers changed the routes")
	}
	// routing=bgp: the peer behind the router is the routers' to reach (BGP), no error; the
	// on-segment peer keeps its host-gw route; a route another protocol made (the BGP speaker's)
	// inside the cluster CIDR is left alone.
	n.Options[OptRouting] = RoutingBGP
	_, learned, _ := net.ParseCIDR("10.250.7.0/24")
	if err := hh.RouteAdd(&netlink.Route{Dst: learned, Gw: net.ParseIP("198.18.0.254"), LinkIndex: eth.Attrs().Index, Protocol: 186}); err != nil {
		t.Fatal(err)
	}
	if err := g.SyncPeers(t.Context(), n, self, []drivers.NodeView{on, off}); err != nil {
		t.Errorf("SyncPeers with routing=bgp and a peer behind a router: %v, want nil", err)
	}
	if r := route("10.250.2.0/24"); r == nil || !r.Gw.Equal(net.ParseIP("198.18.0.2")) {
		t.Errorf("routing=bgp: route to on-segment n2 %+v, want via 198.18.0.2", r)
	}
	if r := route("10.250.3.0/24"); r != nil {
		t.Errorf("routing=bgp: host-gw route to off-segment n3 %+v, want none", r)
	}
	if r := route("10.250.7.0/24"); r == nil {
		t.Error("SyncPeers removed a route of another protocol (the BGP speaker's)")
	}
	delete(n.Options, OptRouting)
	bogus := &drivers.Network{ID: "id-x", Name: "x", Driver: GlobalName, Subnets: []netip.Prefix{netip.MustParsePrefix("10.251.0.0/16")}, Options: map[string]string{OptRouting: "ospf"}}
	if err := g.PrepareNetwork(bogus, nil); !errors.Is(err, drivers.ErrInvalid) || !strings.Contains(err.Error(), "host-gw or bgp") {
		t.Errorf("option routing=ospf: %v, want ErrInvalid naming host-gw and bgp", err)
	}
	if err := g.SyncPeers(t.Context(), n, self, nil); err != nil {
		t.Fatal(err)
	}
	if r := route("10.250.2.0/24"); r != nil {
		t.Errorf("route to n2 %+v after it left the peers", r)
	}
	if route("10.250.1.0/24") == nil {
		t.Error("SyncPeers removed the node's own unreachable route")
	}
	if err := g.Leave(t.Context(), n, self); err != nil {
		t.Fatal(err)
	}
	if r := route("10.250.1.0/24"); r != nil {
		t.Errorf("own route %+v after Leave", r)
	}
}

// TestSyncPeersIPv6Underlay: on an IPv6 underlay, a peer's IPv4 node subnet is routed via its
// IPv6 underlay address (RTA_VIA), and a second SyncPeers keeps that route rather than taking it for
// stale; an IPv6 cluster CIDR on an IPv4 underlay, which Linux cannot route, is refused by Join.
func TestSyncPeersIPv6Underlay(t *testing.T) {
	testutil.RequireRoot(t)
	host := testutil.NewNS(t, "host")
	other := testutil.NewNS(t, "segment")
	hh, err := host.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer hh.Close()
	if err := hh.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(other.Fd())}); err != nil {
		t.Fatal(err)
	}
	eth, _ := hh.LinkByName("eth0")
	if err := hh.AddrAdd(eth, &netlink.Addr{IPNet: drivers.IPNet(netip.MustParsePrefix("fd00:18::1/64")), Flags: unix.IFA_F_NODAD}); err != nil {
		t.Fatal(err)
	}
	if err := hh.LinkSetUp(eth); err != nil {
		t.Fatal(err)
	}
	dd, err := NewGlobal(drivers.Env{Host: host, HostHandle: hh, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	g := dd.(*GlobalDriver)
	n := &drivers.Network{ID: "id-rg", Name: "rg", Driver: GlobalName, Subnets: []netip.Prefix{netip.MustParsePrefix("10.250.0.0/16")}}
	if err := g.Allocate(t.Context(), n, nil); err != nil {
		t.Fatal(err)
	}
	self := drivers.NodeView{Node: "n1", Subnets: []netip.Prefix{netip.MustParsePrefix("10.250.1.0/24")}, Underlay: netip.MustParseAddr("fd00:18::1")}
	if err := g.Join(t.Context(), n, &self); err != nil {
		t.Fatal(err)
	}
	peer := drivers.NodeView{Node: "n2", Subnets: []netip.Prefix{netip.MustParsePrefix("10.250.2.0/24")}, Underlay: netip.MustParseAddr("fd00:18::2")}
	for round := range 2 {
		if err := g.SyncPeers(t.Context(), n, self, []drivers.NodeView{peer}); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		routes, err := hh.RouteList(nil, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, r := range routes {
			if r.Dst != nil && r.Dst.String() == "10.250.2.0/24" {
				v, ok := r.Via.(*netlink.Via)
				found = ok && v.Addr.Equal(net.ParseIP("fd00:18::2"))
			}
		}
		if !found {
			t.Fatalf("round %d: IPv4 routes %v, want 10.250.2.0/24 via inet6 fd00:18::2", round, routes)
		}
	}
	if err := g.Leave(t.Context(), n, self); err != nil {
		t.Fatal(err)
	}

	n6 := &drivers.Network{ID: "id-rg6", Name: "rg6", Driver: GlobalName, Subnets: []netip.Prefix{netip.MustParsePrefix("fd00:250::/56")}}
	if err := g.Allocate(t.Context(), n6, nil); err != nil {
		t.Fatal(err)
	}
	v4 := drivers.NodeView{Node: "n1", Subnets: []netip.Prefix{netip.MustParsePrefix("fd00:250:0:1::/64")}, Underlay: netip.MustParseAddr("198.18.0.1")}
	if err := g.Join(t.Context(), n6, &v4); !errors.Is(err, drivers.ErrInvalid) || !strings.Contains(err.Error(), "IPv6 only via IPv6") {
		t.Errorf("Join of an IPv6 CIDR on an IPv4 underlay: %v, want ErrInvalid saying why", err)
	}
}
