package bgp

import (
	"log/slog"
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netmgr/netmgr/internal/testutil"
)

// TestKernelSync, in a host namespace (eth0 172.31.1.11/24, 172.31.9.0/24 behind 172.31.1.1): a
// learned prefix whose next hop is on the segment goes in via it; one whose next hop is behind the
// router goes in via the router (resolved one step); one with a route of another protocol (host-gw's,
// the user's) is left to it; an unreachable next hop is skipped. Before the sessions settle, a route
// no longer learned stays (a restart changes no forwarding); settled, it goes. Routes of other
// protocols are never touched.
func TestKernelSync(t *testing.T) {
	testutil.RequireNetAdmin(t)
	host := testutil.NewNS(t, "host")
	peer := testutil.NewNS(t, "peer")
	h, err := host.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(peer.Fd())}); err != nil {
		t.Fatal(err)
	}
	eth, _ := h.LinkByName("eth0")
	if err := h.AddrAdd(eth, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP("172.31.1.11"), Mask: net.CIDRMask(24, 32)}}); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(eth); err != nil {
		t.Fatal(err)
	}
	add := func(dst, gw string, proto netlink.RouteProtocol) {
		t.Helper()
		_, d, _ := net.ParseCIDR(dst)
		if err := h.RouteAdd(&netlink.Route{Dst: d, Gw: net.ParseIP(gw), LinkIndex: eth.Attrs().Index, Protocol: proto}); err != nil {
			t.Fatal(err)
		}
	}
	add("172.31.9.0/24", "172.31.1.1", unix.RTPROT_BOOT)
	add("10.244.3.0/24", "172.31.1.13", 0xb1) // host-gw's route to a peer on the segment
	route := func(dst string) *netlink.Route {
		t.Helper()
		rs, err := h.RouteList(nil, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		for i, r := range rs {
			if r.Dst != nil && r.Dst.String() == dst {
				return &rs[i]
			}
		}
		return nil
	}
	k := &kernel{h: h, log: slog.New(slog.DiscardHandler)}
	via := func(nh string) learnedRoute {
		return learnedRoute{nh: netip.MustParseAddr(nh), peer: netip.MustParseAddr("172.31.1.1")}
	}
	learned := map[netip.Prefix]learnedRoute{
		netip.MustParsePrefix("10.244.1.0/24"): via("172.31.1.12"), // on the segment
		netip.MustParsePrefix("10.244.2.0/24"): via("172.31.9.5"),  // behind the router
		netip.MustParsePrefix("10.244.3.0/24"): via("172.31.1.1"),  // host-gw has it
		netip.MustParsePrefix("10.244.4.0/24"): via("192.0.2.7"),   // no route to it
	}
	// FRR's zebra (and others) mark their BGP routes RTPROT_BGP: never ours to remove.
	add("10.77.0.0/16", "172.31.1.1", unix.RTPROT_BGP)
	n, err := k.sync(learned, false)
	if err != nil || n != 2 {
		t.Fatalf("sync = %d, %v; want 2 installed", n, err)
	}
	for dst, gw := range map[string]string{"10.244.1.0/24": "172.31.1.12", "10.244.2.0/24": "172.31.1.1"} {
		if r := route(dst); r == nil || r.Gw.String() != gw || r.Protocol != RouteProtocol {
			t.Errorf("route %s = %+v, want via %s proto bgp", dst, r, gw)
		}
	}
	if r := route("10.244.3.0/24"); r == nil || r.Protocol != 0xb1 || r.Gw.String() != "172.31.1.13" {
		t.Errorf("host-gw's route to 10.244.3.0/24 changed: %+v", r)
	}
	if r := route("10.244.4.0/24"); r != nil {
		t.Errorf("route to 10.244.4.0/24 with an unreachable next hop: %+v", r)
	}
	if n, err := k.sync(learned, false); err != nil || n != 2 {
		t.Errorf("second sync = %d, %v; want 2, nothing changed", n, err)
	}
	// Not settled: what is no longer learned stays; settled: it goes, and only ours.
	delete(learned, netip.MustParsePrefix("10.244.1.0/24"))
	if _, err := k.sync(learned, false); err != nil || route("10.244.1.0/24") == nil {
		t.Errorf("before the sessions settle a route no longer learned went (%v)", err)
	}
	if n, err := k.sync(learned, true); err != nil || n != 1 || route("10.244.1.0/24") != nil {
		t.Errorf("settled sync = %d, %v; the route no longer learned: %+v", n, err, route("10.244.1.0/24"))
	}
	if _, err := k.sync(nil, true); err != nil {
		t.Fatal(err)
	}
	if route("10.244.2.0/24") != nil || route("10.244.3.0/24") == nil || route("172.31.9.0/24") == nil || route("10.77.0.0/16") == nil {
		t.Errorf("sync of nothing: ours should go, the others stay: %+v %+v %+v %+v", route("10.244.2.0/24"), route("10.244.3.0/24"), route("172.31.9.0/24"), route("10.77.0.0/16"))
	}
}
