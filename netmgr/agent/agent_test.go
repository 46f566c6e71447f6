package agent_test

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/agent"
	"github.com/netmgr/netmgr/netmgr/cluster"
	"github.com/netmgr/netmgr/sandbox"
)

var cidr = netip.MustParsePrefix("10.244.0.0/16")

func createOverlay(t testing.TB, h *host, name string, cidr netip.Prefix) *netmgr.Network {
	t.Helper()
	n, err := h.m.CreateNetwork(context.Background(), netmgr.NetworkSpec{Name: name, Driver: "overlay", Subnets: []netip.Prefix{cidr}})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

type pod struct {
	h    *host
	ns   *sandbox.NetNS
	addr netip.Addr
}

// reachAll checks that every pod reaches every other on port 8080, and that the receiver sees the
// sender's pod address (no NAT between pods).
func reachAll(t *testing.T, pods []pod) {
	t.Helper()
	for _, from := range pods {
		for _, to := range pods {
			if from.addr == to.addr {
				continue
			}
			seen, err := testutil.Dial(from.ns, netip.AddrPortFrom(to.addr, 8080).String())
			if err != nil {
				t.Errorf("%s pod %s -> %s pod %s: %v", from.h.name, from.addr, to.h.name, to.addr, err)
				continue
			}
			if seen != from.addr.String() {
				t.Errorf("%s pod -> %s pod: receiver saw %s, want the sender's pod IP %s", from.h.name, to.h.name, seen, from.addr)
			}
		}
	}
}

// peerState is what h's host has programmed for the peer whose subnet is sn on network vni: the
// route to sn, and neighbour and FDB entries on the VXLAN device.
func peerState(t testing.TB, h *host, sn netip.Prefix, underlay netip.Addr) (route, neigh, fdb bool) {
	t.Helper()
	hh, err := h.ns.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer hh.Close()
	routes, err := hh.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if r.Dst != nil && r.Dst.String() == sn.String() {
			route = true
		}
	}
	links, err := hh.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if l.Type() != "vxlan" {
			continue
		}
		ns, err := hh.NeighList(l.Attrs().Index, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range ns {
			if sn.Contains(netip.MustParseAddr(n.IP.String())) {
				neigh = true
			}
		}
		fs, err := hh.NeighList(l.Attrs().Index, syscall.AF_BRIDGE)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range fs {
			if f.IP != nil && f.IP.String() == underlay.String() {
				fdb = true
			}
		}
	}
	return route, neigh, fdb
}

func subnetOf(t testing.TB, h *host, network string) netip.Prefix {
	t.Helper()
	js, err := h.m.JoinedNetworks(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, j := range js {
		if j.Network == network {
			return j.View.Subnets[0]
		}
	}
	t.Fatalf("%s has not joined %s", h.name, network)
	return netip.Prefix{}
}

// TestCluster is issue 9's "It must show", on a real etcd and real kernel: pods on three hosts, a
// fourth joining, an agent killed and restarted, etcd stopped and back, two isolated overlays, a
// 1 MB transfer across hosts, and egress masqueraded.
func TestCluster(t *testing.T) {
	tb := newTestbed(t, 3)
	outer := t
	h1, h2, h3 := tb.hosts[0], tb.hosts[1], tb.hosts[2]
	createOverlay(t, h1, "ov", cidr)
	for _, h := range tb.hosts {
		tb.start(h)
	}
	waitJoined(t, "ov", h1, h2, h3)

	// Three distinct node subnets of the cluster CIDR.
	seen := map[netip.Prefix]string{}
	var pods []pod
	for _, h := range tb.hosts {
		sn := subnetOf(t, h, "ov")
		if !cidr.Contains(sn.Addr()) || sn.Bits() != 24 {
			t.Fatalf("%s subnet %s, want a /24 of %s", h.name, sn, cidr)
		}
		if o, dup := seen[sn]; dup {
			t.Fatalf("%s and %s both have %s", o, h.name, sn)
		}
		seen[sn] = h.name
		ns, addr := h.pod(t, "web", "ov")
		if !sn.Contains(addr) {
			t.Fatalf("%s pod %s outside its node subnet %s", h.name, addr, sn)
		}
		pods = append(pods, pod{h, ns, addr})
	}
	reachAll(t, pods)

	t.Run("egress masqueraded", func(t *testing.T) {
		addr := testutil.Listen(t, tb.outside, "198.18.0.200:9000")
		got, err := testutil.Dial(pods[1].ns, addr)
		if err != nil {
			t.Fatal(err)
		}
		if got != h2.addr.String() {
			t.Fatalf("outside saw %s, want host2's underlay address %s (masqueraded)", got, h2.addr)
		}
	})

	t.Run("1 MB across hosts", func(t *testing.T) {
		got, mss := testutil.Transfer(t, pods[0].ns, pods[2].ns, pods[2].addr, 9100, 1<<20)
		if got != 1<<20 {
			t.Fatalf("received %d bytes of %d", got, 1<<20)
		}
		t.Logf("1 MiB from host1 to host3, MSS %d", mss)
	})

	t.Run("fourth host joins", func(t *testing.T) {
		h4 := tb.addHost()
		tb.open(h4) // registers its cleanup on the test, not this subtest: host4 stays for what follows
		started := time.Now()
		tb.start(h4)
		waitJoined(t, "ov", h4)
		ns, addr := h4.pod(outer, "web", "ov")
		p4 := pod{h4, ns, addr}
		for _, p := range pods {
			if _, err := testutil.Dial(p.ns, netip.AddrPortFrom(addr, 8080).String()); err != nil {
				t.Errorf("%s -> host4: %v", p.h.name, err)
			}
		}
		t.Logf("every host reached host4's pod %v after its agent started (includes the pod's create)", time.Since(started).Round(time.Millisecond))
		pods = append(pods, p4)
		reachAll(t, pods)
	})

	t.Run("agent killed and restarted", func(t *testing.T) {
		sn2 := subnetOf(t, h2, "ov")
		if r, n, f := peerState(t, h1, sn2, h2.addr); !r || !n || !f {
			t.Fatalf("host1's entries for host2 before the kill: route %v neigh %v fdb %v", r, n, f)
		}
		h2.kill()
		killed := time.Now()
		deadline := killed.Add(ttl + 2*time.Second + 3*time.Second) // TTL + 2 s, plus slack for etcd's lease checks on a loaded machine
		for {
			nodes, _, err := cluster.ListNodes(context.Background(), h1.cs, nil)
			gone := err == nil && !hasNode(nodes, "host2")
			clean := true
			for _, h := range []*host{h1, h3} {
				if r, n, f := peerState(t, h, sn2, h2.addr); r || n || f {
					clean = false
				}
			}
			if gone && clean {
				t.Logf("host2 gone from node ls and from every peer's routes, neighbours and FDB %v after the kill (TTL %v)", time.Since(killed).Round(time.Millisecond), ttl)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("host2 still listed (%v) or programmed on a peer %v after the kill", !gone, time.Since(killed))
			}
			time.Sleep(100 * time.Millisecond)
		}
		tb.start(h2)
		waitJoined(t, "ov", h2)
		if got := subnetOf(t, h2, "ov"); got != sn2 {
			t.Fatalf("host2 came back with %s, want its old subnet %s", got, sn2)
		}
		reachAll(t, pods) // its pod, left running, is reachable again
	})

	t.Run("node rm", func(t *testing.T) {
		// A dead node removed by hand (podctl node rm) leaves its peers at once, not after its TTL,
		// and its subnet is free.
		sn2 := subnetOf(t, h2, "ov")
		h2.kill()
		if r, n, f := peerState(t, h1, sn2, h2.addr); !r || !n || !f {
			t.Fatalf("host1's entries for host2 gone before node rm (route %v neigh %v fdb %v): its TTL %v cannot have passed", r, n, f, ttl)
		}
		freed, err := cluster.RemoveNode(context.Background(), h1.cs, "host2")
		if err != nil {
			t.Fatal(err)
		}
		if len(freed) != 1 || freed[0].Subnet != sn2 {
			t.Fatalf("node rm freed %+v, want host2's %s", freed, sn2)
		}
		removed := time.Now()
		for {
			r, n, f := peerState(t, h1, sn2, h2.addr)
			if !r && !n && !f {
				break
			}
			if time.Since(removed) > ttl {
				t.Fatalf("host1 still has entries for the removed host2 after %v (route %v neigh %v fdb %v)", time.Since(removed), r, n, f)
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Logf("host2 gone from host1's routes, neighbours and FDB %v after node rm", time.Since(removed).Round(time.Microsecond))
		tb.start(h2)
		waitJoined(t, "ov", h2)
		reachAll(t, pods)
	})

	t.Run("etcd stopped", func(t *testing.T) {
		// Killed, as a crash: a graceful stop of etcd takes seconds during which it serves no
		// keep-alive but goes on expiring leases, longer than this test's short TTL.
		tb.etcd.Kill()
		reachAll(t, pods[:3])
		ctx := context.Background()
		s, err := h3.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "offline", Networks: []netmgr.AttachSpec{{Network: "ov"}}})
		if err != nil {
			t.Fatalf("create while etcd is down: %v", err)
		}
		ns := testutil.Open(t, s.NetNS)
		if _, err := testutil.Dial(ns, netip.AddrPortFrom(pods[0].addr, 8080).String()); err != nil {
			t.Errorf("new pod while etcd is down -> host1: %v", err)
		}
		if err := h3.m.DeleteSandbox(ctx, "offline"); err != nil {
			t.Fatalf("delete while etcd is down: %v", err)
		}
		tb.etcd.Restart()
		// The agents catch up by themselves: a network made now is joined everywhere.
		createOverlay(outer, h1, "ov2", netip.MustParsePrefix("10.245.0.0/16"))
		waitJoined(t, "ov2", tb.hosts...)
	})

	t.Run("two overlays isolated", func(t *testing.T) {
		ns, addr := h2.pod(t, "other", "ov2")
		if _, err := testutil.Dial(ns, netip.AddrPortFrom(addr, 8080).String()); err != nil {
			t.Fatalf("ov2 pod to itself: %v", err)
		}
		if err := testutil.DialBlocked(ns, netip.AddrPortFrom(pods[0].addr, 8080).String()); err != nil {
			t.Errorf("ov2 pod on host2 -> ov pod on host1: %v", err)
		}
		if err := testutil.DialBlocked(pods[0].ns, netip.AddrPortFrom(addr, 8080).String()); err != nil {
			t.Errorf("ov pod on host1 -> ov2 pod on host2: %v", err)
		}
		if err := h2.m.DeleteSandbox(context.Background(), "other"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("bad input", func(t *testing.T) {
		ctx := context.Background()
		for _, c := range []struct {
			name string
			spec netmgr.NetworkSpec
		}{
			{"CIDR overlapping another network", netmgr.NetworkSpec{Name: "bad1", Driver: "overlay", Subnets: []netip.Prefix{netip.MustParsePrefix("10.244.128.0/17")}}},
			{"node prefix shorter than the CIDR", netmgr.NetworkSpec{Name: "bad2", Driver: "overlay", Subnets: []netip.Prefix{netip.MustParsePrefix("10.50.0.0/16")}, Options: map[string]string{"node-prefix": "12"}}},
			{"one node subnet", netmgr.NetworkSpec{Name: "bad3", Driver: "overlay", Subnets: []netip.Prefix{netip.MustParsePrefix("10.50.0.0/24")}, Options: map[string]string{"node-prefix": "24"}}},
		} {
			_, err := h1.m.CreateNetwork(ctx, c.spec)
			if err == nil || strings.Contains(err.Error(), "\n") {
				t.Errorf("%s: %v, want one line of error", c.name, err)
				continue
			}
			t.Logf("%s: %v", c.name, err)
			if _, err := h1.m.Network(ctx, c.spec.Name); !errors.Is(err, netmgr.ErrNotFound) {
				t.Errorf("%s: refused network recorded (%v)", c.name, err)
			}
		}
		// A second agent claiming a live node's name.
		a, err := agent.New(agent.Config{Manager: h3.m, Cluster: h1.cs, Underlay: h1.addr, TTL: ttl})
		if err != nil {
			t.Fatal(err)
		}
		rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		if err := a.Run(rctx); !errors.Is(err, cluster.ErrExists) {
			t.Errorf("second agent for host3: %v, want ErrExists", err)
		} else {
			t.Log(err)
		}
	})
}

func hasNode(nodes []cluster.Node, name string) bool {
	for _, n := range nodes {
		if n.Name == name {
			return true
		}
	}
	return false
}
