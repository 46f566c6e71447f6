package agent_test

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/netmgr/netmgr/drivers/routed"
	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/agent"
	"github.com/netmgr/netmgr/netmgr/cluster"
	"github.com/netmgr/netmgr/netmgr/store"
)

// peerError is node's published SyncPeers error for network, as `podctl node ls` reads it.
func peerError(t *testing.T, cs store.Store, node, network string) string {
	t.Helper()
	n, err := cluster.GetNode(context.Background(), cs, node)
	if err != nil {
		t.Fatalf("read node %s: %v", node, err) // "" would pass the checks that want no error
	}
	return n.Networks[network].Attrs[agent.AttrPeerError]
}

// TestRoutedOffSegmentPublished is issue 14's "a peer that is not on this host's underlay segment is
// reported clearly (podctl node ls shows why)": host2 reaches host3's underlay address only through a
// router, so its agent's SyncPeers fails with ErrOffSegment naming host3, and the agent publishes that
// in host2's node record for the network; the other hosts publish none. Once host2 reaches host3
// directly again the next resync clears it.
func TestRoutedOffSegmentPublished(t *testing.T) {
	tb := newTestbed(t, 3)
	h1, h2, h3 := tb.hosts[0], tb.hosts[1], tb.hosts[2]
	// On host2 only, host3 is behind a router (the outside namespace's address: host2 never sends
	// host3 anything in this test but routed pod traffic, which gets no route).
	hh, err := h2.ns.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer hh.Close()
	eth, err := hh.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	via := &netlink.Route{LinkIndex: eth.Attrs().Index, Dst: &net.IPNet{IP: h3.addr.AsSlice(), Mask: net.CIDRMask(32, 32)}, Gw: net.ParseIP("198.18.0.200")}
	if err := hh.RouteAdd(via); err != nil {
		t.Fatal(err)
	}
	if _, err := h1.m.CreateNetwork(context.Background(), netmgr.NetworkSpec{Name: "rg", Driver: routed.GlobalName, Subnets: []netip.Prefix{netip.MustParsePrefix("10.247.0.0/16")}}); err != nil {
		t.Fatal(err)
	}
	for _, h := range tb.hosts {
		tb.start(h)
	}
	waitJoined(t, "rg", tb.hosts...)
	deadline := time.Now().Add(20 * time.Second)
	var msg string
	for {
		msg = peerError(t, h1.cs, h2.name, "rg")
		if msg != "" || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(msg, "host3") || !strings.Contains(msg, "via router 198.18.0.200") || !strings.Contains(msg, routed.ErrOffSegment.Error()) {
		t.Fatalf("host2's published peer error for rg = %q, want ErrOffSegment naming host3 and the router", msg)
	}
	if strings.Contains(msg, "host1") {
		t.Errorf("host2's peer error names host1, which is on its segment: %q", msg)
	}
	n2, err := cluster.GetNode(context.Background(), h1.cs, h2.name)
	if err != nil {
		t.Fatal(err)
	}
	if n2.Networks["rg"].Attrs[routed.AttrSegment] != "198.18.0.0/24" {
		t.Errorf("host2's driver attributes went: %v", n2.Networks["rg"].Attrs)
	}
	for _, h := range []*host{h1, h3} {
		if e := peerError(t, h1.cs, h.name, "rg"); e != "" {
			t.Errorf("%s publishes a peer error: %q", h.name, e)
		}
	}

	if err := hh.RouteDel(via); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(20 * time.Second) // the 5 s resync on a loaded machine
	for peerError(t, h1.cs, h2.name, "rg") != "" {
		if time.Now().After(deadline) {
			t.Fatalf("host2 still publishes %q after host3 is on its segment again", peerError(t, h1.cs, h2.name, "rg"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if ok, gw := peerRoute(t, h2, subnetOf(t, h3, "rg")); !ok || gw != h3.addr {
		t.Errorf("host2's route to host3's subnet: %v via %v, want via %s", ok, gw, h3.addr)
	}
}
