package overlay

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/netmgr/netmgr/drivers"
	"github.com/netmgr/netmgr/internal/testutil"
)

// TestOverlayDualStack: a network with an IPv4 and an IPv6 cluster CIDR over an IPv4 underlay:
// each node gets a subnet of each, pods reach each other across hosts over both families, seen by
// their own addresses, and a peer's removal takes its IPv6 entries too.
func TestOverlayDualStack(t *testing.T) {
	testutil.RequireRoot(t)
	ctx := t.Context()
	hosts := newCluster(t, 2)
	n := &drivers.Network{ID: "id-ds", Name: "ds", Driver: Name, Subnets: pfx("10.64.0.0/16", "fd00:64::/48")}
	if err := hosts[0].d.Allocate(ctx, n, nil); err != nil {
		t.Fatal(err)
	}
	views := make([]drivers.NodeView, 2)
	for i, hs := range hosts {
		v4 := netip.MustParsePrefix(fmt.Sprintf("10.64.%d.0/24", i+1))
		v6 := netip.MustParsePrefix(fmt.Sprintf("fd00:64:0:%d::/64", i+1))
		views[i] = drivers.NodeView{Node: hs.name, Subnets: []netip.Prefix{v4, v6}, Gateways: []netip.Addr{v4.Addr().Next(), v6.Addr().Next()}, Underlay: hs.addr}
		if err := hs.d.Join(ctx, n, &views[i]); err != nil {
			t.Fatal(err)
		}
	}
	for i, hs := range hosts {
		if err := hs.d.SyncPeers(ctx, n, views[i], views); err != nil {
			t.Fatal(err)
		}
		applyFirewall(t, hs, n)
	}
	var pods []*pod
	for i, hs := range hosts {
		name := fmt.Sprintf("ds%d", i+1)
		ns := testutil.NewNS(t, name)
		v := views[i]
		a4, a6 := v.Subnets[0].Addr().Next().Next(), v.Subnets[1].Addr().Next().Next()
		nn := nodeNetwork(n, v)
		ep := &drivers.Endpoint{ID: "ep-" + name, Sandbox: name, IfName: "eth0",
			Addrs: []netip.Prefix{netip.PrefixFrom(a4, 24), netip.PrefixFrom(a6, 64)}, Gateways: v.Gateways}
		if err := hs.d.PrepareEndpoint(nn, ep); err != nil {
			t.Fatal(err)
		}
		if err := hs.d.Attach(ctx, nn, ep, ns); err != nil {
			t.Fatal(err)
		}
		pods = append(pods, &pod{ns: ns, ip: a6, ep: ep, n: nn, host: hs})
	}
	srv := testutil.Listen(t, pods[1].ns, netip.AddrPortFrom(pods[1].ip, 8080).String())
	if seen, err := testutil.Dial(pods[0].ns, srv); err != nil || seen != pods[0].ip.String() {
		t.Errorf("IPv6 pod to pod across hosts: seen %q, %v; want %s", seen, err, pods[0].ip)
	}
	srv4 := testutil.Listen(t, pods[0].ns, "10.64.1.2:8080")
	if seen, err := testutil.Dial(pods[1].ns, srv4); err != nil || seen != "10.64.2.2" {
		t.Errorf("IPv4 pod to pod across hosts: seen %q, %v; want 10.64.2.2", seen, err)
	}
	st := peerState(t, hosts[0], n)
	if !strings.Contains(st, "route fd00:64:0:2::/64 via fd00:64:0:2:: onlink=true") || !strings.Contains(st, "neigh fd00:64:0:2:: lladdr") {
		t.Errorf("host1 lacks node2's IPv6 route or neighbour:\n%s", st)
	}
	if err := hosts[0].d.SyncPeers(ctx, n, views[0], nil); err != nil {
		t.Fatal(err)
	}
	if st := peerState(t, hosts[0], n); st != "" {
		t.Errorf("entries left with no peers:\n%s", st)
	}
	for i, p := range pods {
		if err := p.host.d.Detach(ctx, p.n, p.ep, p.ns, drivers.DetachOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := hosts[i].d.Leave(ctx, n, views[i]); err != nil {
			t.Fatal(err)
		}
		if left := ownLinks(t, hosts[i]); len(left) > 0 {
			t.Errorf("%s has links left: %v", hosts[i].name, left)
		}
	}
}
