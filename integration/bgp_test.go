package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/sandbox"
)

// bgpNode is one node of TestBGPRacks: a clusterHost on a rack segment, peering with the router.
type bgpNode struct {
	*clusterHost
	asn     int
	gateway netip.Addr // the rack's router address, its BGP peer
	extra   []string
	// routerASN is the AS the router expects of the node, when it is not asn (a misconfigured
	// session: the router refuses the node's OPEN with Bad Peer AS).
	routerASN int
}

func (n *bgpNode) agentArgs() []string {
	return append([]string{"--bgp-as", fmt.Sprint(n.asn), "--bgp-peer", netip.AddrPortFrom(n.gateway, 65000).String(),
		"--bgp-hold-time", "6s", "--bgp-restart-time", "5s", "--bgp-connect-retry", "2s",
		"--bgp-advertise", "cluster-ips"}, n.extra...)
}

// birdConfig peers the router (AS 65000) with every node; the routes it learns go into its kernel.
func birdConfig(nodes []*bgpNode) string {
	var b strings.Builder
	b.WriteString("router id 172.31.1.1;\nprotocol device {}\nprotocol kernel { ipv4 { export all; }; }\n")
	for _, n := range nodes {
		asn := n.asn
		if n.routerASN != 0 {
			asn = n.routerASN
		}
		fmt.Fprintf(&b, "protocol bgp %s { local %s as 65000; neighbor %s as %d; hold time 6; keepalive time 2; connect retry time 2; error wait time 1,5; graceful restart on; ipv4 { import all; export all; }; }\n",
			n.name, n.gateway, n.addr, asn)
	}
	return b.String()
}

// TestBGPRacks is issue 13's test: two racks (two underlay segments) joined by a router namespace
// running BIRD, which peers with every node's agent. The pods of a routed-global network in BGP mode
// reach each other across the racks by pod IP with no tunnel: BIRD's table lists each node's subnet
// with that node as next hop and puts it in the router's kernel. An agent restarted with SIGTERM
// inside the graceful-restart time costs the router no route; a SIGKILLed one loses its subnet
// within the hold time and gets it back when it is started again; with --bgp-advertise cluster-ips
// a client beyond the router reaches a service; a peer that never answers leaves the agent running
// and `node ls` says why; bad flags are one line at start.
func TestBGPRacks(t *testing.T) {
	testutil.RequireNetAdmin(t)
	testutil.RequireBird(t)
	r := testutil.NewRouter(t, "rtr")
	rackA := r.AddSegment("rackA", netip.MustParsePrefix("172.31.1.0/24"))
	rackB := r.AddSegment("rackB", netip.MustParsePrefix("172.31.2.0/24"))
	ext := r.AddSegment("ext", netip.MustParsePrefix("172.31.9.0/24"))
	client := ext.Plug("client", netip.MustParseAddr("172.31.9.10"), nil)

	var nodes []*bgpNode
	for i, spec := range []struct {
		seg  *testutil.Segment
		addr string
		asn  int
	}{{rackA, "172.31.1.11", 65001}, {rackA, "172.31.1.12", 65001}, {rackB, "172.31.2.13", 65002}, {rackB, "172.31.2.14", 65002}} {
		h := &clusterHost{host: *newHost(t), name: fmt.Sprintf("node%d", i+1), addr: netip.MustParseAddr(spec.addr)}
		spec.seg.Plug(h.name, h.addr, h.ns)
		nodes = append(nodes, &bgpNode{clusterHost: h, asn: spec.asn, gateway: spec.seg.Gateway})
	}
	nodes[3].routerASN = 65099 // node4's session is misconfigured on the router
	bird := testutil.StartBird(t, r.NS, birdConfig(nodes))
	e := testutil.StartEtcd(t, testutil.EtcdOptions{NS: nodes[0].ns, Addr: nodes[0].addr.String()})
	for _, n := range nodes {
		n.store = "etcd://" + e.Endpoint + "?prefix=/bgp/&dial-timeout=2s&timeout=2s"
		n.startAgent(t, n.agentArgs()...)
	}
	n1, n2, n3, n4 := nodes[0], nodes[1], nodes[2], nodes[3]
	outer := t // agents restarted in a subtest live on after it
	n1.mustRun(t, "network", "create", "pods", "--driver", "routed-global", "--subnet", "10.244.0.0/16", "--opt", "routing=bgp")
	t.Cleanup(func() {
		for _, n := range nodes {
			_, _ = n.run("sandbox", "rm", "web")
		}
	})

	// Every node ready with its subnet, and every subnet on the router with its node as next hop.
	subnets := map[string]netip.Prefix{}
	deadline := time.Now().Add(40 * time.Second)
	for len(subnets) < len(nodes) {
		var ns []nodeJSON
		out, err := n1.run("-o", "json", "node", "ls")
		if err == nil && json.Unmarshal([]byte(out), &ns) == nil {
			for _, nd := range ns {
				if s := nd.Networks["pods"].Subnets; nd.Ready && len(s) == 1 {
					subnets[nd.Name] = s[0]
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("nodes not ready with subnets: %s %v\n%s", out, err, agentLogs(nodes))
		}
		time.Sleep(100 * time.Millisecond)
	}
	onRouter := func(pfx netip.Prefix) (netip.Addr, bool) {
		rs, err := bird.Routes()
		if err != nil {
			t.Errorf("bird routes: %v\n%s", err, bird.Log())
			return netip.Addr{}, false
		}
		for _, rt := range rs {
			if rt.Prefix == pfx && rt.Primary && len(rt.NextHops) > 0 {
				return rt.NextHops[0], true
			}
		}
		return netip.Addr{}, false
	}
	waitRoute := func(what string, pfx netip.Prefix, via netip.Addr, within time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		for {
			if nh, ok := onRouter(pfx); ok && (!via.IsValid() || nh == via) {
				return time.Since(start)
			}
			if time.Since(start) > within {
				out, _ := bird.Cmd("show", "route", "all")
				t.Fatalf("%s: %s via %v not on the router after %v:\n%s\n%s", what, pfx, via, within, out, agentLogs(nodes))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	for _, n := range nodes[:3] {
		waitRoute("advertised", subnets[n.name], n.addr, 30*time.Second)
	}
	out, _ := bird.Cmd("show", "route")
	t.Logf("router's table:\n%s", out)
	if rh, err := r.NS.NewHandle(); err == nil {
		for _, n := range nodes[:3] {
			if !kernelRoute(t, rh, subnets[n.name], n.addr) {
				t.Errorf("router's kernel has no route to %s's subnet %s via %s", n.name, subnets[n.name], n.addr)
			}
		}
		rh.Close()
	}
	// node ls: every session, and why node4's is down (the router refused its AS), while node4's
	// agent runs on and node4 is ready.
	var ls string
	for deadline := time.Now().Add(20 * time.Second); ; {
		ls = n1.mustRun(t, "node", "ls")
		if strings.Contains(ls, "node4, bgp AS65002: peer 172.31.2.1:65000") && strings.Contains(ls, "expect AS 65002") || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("node ls:\n%s", ls)
	for _, n := range nodes[:3] {
		want := fmt.Sprintf("%s, bgp AS%d: peer %s:65000 established, 1 routes advertised", n.name, n.asn, n.gateway)
		if !strings.Contains(ls, want) {
			t.Errorf("node ls does not show %q", want)
		}
	}
	if !strings.Contains(ls, "node4, bgp AS65002: peer 172.31.2.1:65000") || !strings.Contains(ls, "expect AS 65002") || !strings.Contains(ls, "(retrying)") {
		t.Errorf("node ls does not say why node4's session is down (the router expects AS 65099):\n%s\n%s", ls, n4.log)
	}
	if n4.agent.ProcessState != nil {
		t.Errorf("node4's agent exited over a refused session:\n%s", n4.log)
	}
	// node3 (rack B) learned rack A's subnets from the router and installed them, via the router.
	if h3, err := n3.ns.NewHandle(); err == nil {
		if !kernelRoute(t, h3, subnets["node1"], rackB.Gateway) {
			t.Errorf("node3's kernel has no learned route to node1's subnet %s via %s", subnets["node1"], rackB.Gateway)
		}
		h3.Close()
	}

	// Pods in rack A and rack B, by pod IP, no NAT, no tunnel.
	var pods []*sandbox.NetNS
	var podIPs []string
	for _, n := range []*bgpNode{n1, n3} {
		var sb sandboxJSON
		if err := json.Unmarshal([]byte(n.mustRun(t, "-o", "json", "sandbox", "create", "web", "--network", "pods", "--label", "app=web")), &sb); err != nil {
			t.Fatal(err)
		}
		ns := testutil.Open(t, sb.NetNS)
		testutil.Listen(t, ns, ":8080")
		pods = append(pods, ns)
		podIPs = append(podIPs, strings.Split(sb.Attachments[0].IPv4, "/")[0])
	}
	reach := func(what string) {
		t.Helper()
		for i := range pods {
			j := 1 - i
			seen, err := testutil.Dial(pods[i], podIPs[j]+":8080")
			if err != nil || seen != podIPs[i] {
				t.Fatalf("%s: pod %s -> %s across the racks: saw %q, %v", what, podIPs[i], podIPs[j], seen, err)
			}
		}
	}
	reach("agents running")
	for _, n := range nodes {
		if links := tunnels(t, n.ns); len(links) > 0 {
			t.Errorf("%s has tunnel links %v: the path should have no encapsulation", n.name, links)
		}
	}

	t.Run("SIGTERM restart within the graceful-restart time: no flap", func(t *testing.T) {
		pfx := subnets["node3"]
		var mu sync.Mutex
		var missing []time.Duration
		stop := make(chan struct{})
		done := make(chan struct{})
		defer func() {
			select {
			case <-stop:
			default:
				close(stop)
			}
			<-done
		}()
		start := time.Now()
		go func() {
			defer close(done)
			for {
				select {
				case <-stop:
					return
				case <-time.After(50 * time.Millisecond):
				}
				if _, ok := onRouter(pfx); !ok {
					mu.Lock()
					missing = append(missing, time.Since(start))
					mu.Unlock()
				}
			}
		}()
		if err := n3.agent.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := n3.agent.Wait(); err != nil {
			t.Errorf("agent after SIGTERM: %v\n%s", err, n3.log)
		}
		t.Logf("node3's agent exited %v after SIGTERM", time.Since(start).Round(time.Millisecond))
		restarting, _ := bird.NeighborRestarting("node3")
		n3.startAgentFor(t, outer, n3.agentArgs()...)
		// Back: the session established again and the graceful restart over, then a little more.
		for {
			ps, _ := bird.Protocols()
			gr, _ := bird.NeighborRestarting("node3")
			if ps["node3"] == "Established" && !gr {
				break
			}
			if time.Since(start) > 20*time.Second {
				t.Fatalf("node3's session not back 20 s after SIGTERM: %v\n%s", ps, n3.log)
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Logf("node3's session back %v after SIGTERM (router kept its routes meanwhile: %v)", time.Since(start).Round(time.Millisecond), restarting)
		time.Sleep(2 * time.Second)
		close(stop)
		<-done
		if !restarting {
			t.Error("the router did not keep node3's routes through a graceful restart after SIGTERM")
		}
		mu.Lock()
		defer mu.Unlock()
		if len(missing) > 0 {
			t.Errorf("node3's subnet %s missing on the router %d times during the restart (first at %v)", pfx, len(missing), missing[0])
		}
		reach("after node3's agent restarted")
	})

	t.Run("SIGKILL: the router drops the subnet within the hold time", func(t *testing.T) {
		pfx := subnets["node2"]
		start := time.Now()
		if err := n2.agent.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		_ = n2.agent.Wait()
		for {
			if _, ok := onRouter(pfx); !ok {
				break
			}
			if time.Since(start) > 6*time.Second+time.Second {
				t.Fatalf("node2's subnet %s still on the router %v after its agent was killed (hold time 6 s)", pfx, time.Since(start))
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Logf("node2's subnet gone from the router %v after SIGKILL (hold time 6 s, restart time 5 s)", time.Since(start).Round(time.Millisecond))
		// Started again, with a second peer that never answers: its route comes back, and node ls
		// says why the other session is down.
		n2.extra = []string{"--bgp-peer", "172.31.1.250:65000"}
		n2.startAgentFor(t, outer, n2.agentArgs()...)
		took := waitRoute("node2 restarted", pfx, n2.addr, 30*time.Second)
		t.Logf("node2's subnet back on the router %v after its agent started again", took.Round(time.Millisecond))
		deadline := time.Now().Add(20 * time.Second)
		for {
			ls := n1.mustRun(t, "node", "ls")
			if strings.Contains(ls, "node2, bgp AS65001: peer 172.31.1.250:65000 active") && strings.Contains(ls, "(retrying)") &&
				strings.Contains(ls, "node2, bgp AS65001: peer 172.31.1.1:65000 established") {
				t.Logf("node ls with a peer that never answers:\n%s", ls)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("node ls does not say why node2's second peer is down:\n%s\n%s", ls, n2.log)
			}
			time.Sleep(200 * time.Millisecond)
		}
		if n2.agent.ProcessState != nil {
			t.Fatalf("node2's agent exited with an unanswered peer: %s", n2.log)
		}
	})

	// A node that goes silent without closing its sessions (hung, or its link gone): no FIN, no
	// keepalives; the router's hold timer ends the session and the subnet goes.
	t.Run("SIGSTOP: a silent node's subnet goes at the hold time", func(t *testing.T) {
		pfx := subnets["node2"]
		start := time.Now()
		if err := n2.agent.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		for {
			if _, ok := onRouter(pfx); !ok {
				break
			}
			if time.Since(start) > 6*time.Second+1500*time.Millisecond {
				t.Fatalf("node2's subnet %s still on the router %v after its agent stopped answering (hold time 6 s)", pfx, time.Since(start))
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Logf("node2's subnet gone from the router %v after its agent went silent (hold time 6 s)", time.Since(start).Round(time.Millisecond))
		_ = n2.agent.Process.Kill()
		_ = n2.agent.Wait()
		n2.extra = nil
		n2.startAgentFor(t, outer, n2.agentArgs()...)
		took := waitRoute("node2 started again", pfx, n2.addr, 30*time.Second)
		t.Logf("node2's subnet back %v after its agent started again", took.Round(time.Millisecond))
	})

	t.Run("cluster IP reachable from beyond the router", func(t *testing.T) {
		var svc struct {
			ClusterIP netip.Addr `json:"cluster_ip"`
		}
		if err := json.Unmarshal([]byte(n1.mustRun(t, "-o", "json", "service", "create", "web", "--selector", "app=web", "--port", "80:8080")), &svc); err != nil || !svc.ClusterIP.IsValid() {
			t.Fatalf("service create: %v %+v", err, svc)
		}
		took := waitRoute("cluster IP", netip.PrefixFrom(svc.ClusterIP, 32), netip.Addr{}, 30*time.Second)
		t.Logf("cluster IP %s on the router %v after the service was created", svc.ClusterIP, took.Round(time.Millisecond))
		seen := map[string]int{}
		deadline := time.Now().Add(30 * time.Second)
		for ok := 0; ok < 20; {
			s, err := testutil.Dial(client, svc.ClusterIP.String()+":80")
			if err == nil {
				ok++
				seen[s]++
			} else if time.Now().After(deadline) {
				t.Fatalf("client beyond the router -> %s:80: %v (%d answered)\n%s", svc.ClusterIP, err, ok, agentLogs(nodes))
			}
		}
		t.Logf("20 connections from beyond the router to the cluster IP answered; the pods saw %v", seen)
	})

	// The network goes: every node leaves it and withdraws its subnet; the cluster IP stays
	// advertised while its service lives, and goes with it.
	t.Run("withdrawn when the node leaves the network", func(t *testing.T) {
		for _, n := range []*bgpNode{n1, n3} {
			n.mustRun(t, "sandbox", "rm", "web")
		}
		n1.mustRun(t, "service", "rm", "web")
		n1.mustRun(t, "network", "rm", "pods")
		start := time.Now()
		for {
			rs, err := bird.Routes()
			left := 0
			for _, rt := range rs {
				if netip.MustParsePrefix("10.244.0.0/16").Overlaps(rt.Prefix) || netip.MustParsePrefix("10.96.0.0/12").Overlaps(rt.Prefix) {
					left++
				}
			}
			if err == nil && left == 0 {
				break
			}
			if time.Since(start) > 30*time.Second {
				out, _ := bird.Cmd("show", "route")
				t.Fatalf("routes left on the router 30 s after the network and service went:\n%s\n%s", out, agentLogs(nodes))
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Logf("every node subnet and the cluster IP withdrawn from the router %v after the network went", time.Since(start).Round(time.Millisecond))
	})

	t.Run("bad flags", func(t *testing.T) {
		for _, args := range [][]string{
			{"--bgp-as", "0", "--bgp-peer", "172.31.1.1"},
			{"--bgp-as", "65001", "--bgp-peer", "300.1.1.1:65000"},
			{"--bgp-as", "65001"},
			{"--bgp-peer", "172.31.1.1:65000"},
			{"--bgp-hold-time", "6s"},
			{"--underlay", "fd00::99", "--bgp-as", "65001", "--bgp-peer", "172.31.1.1:65000"}, // no IPv4 router ID
		} {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			out, err := n1.podctl(ctx, append([]string{"--store", n1.store, "--node", "nodeX", "agent", "--underlay", "172.31.1.99"}, args...)...)
			cancel()
			if err == nil || !strings.Contains(err.Error(), "bgp") || strings.Count(strings.TrimSpace(err.Error()), "\n") > 0 {
				t.Errorf("agent %v: %v %q, want one line about BGP", args, err, out)
			} else {
				t.Logf("agent %v: %v", args, err)
			}
		}
		if out := n1.mustRun(t, "node", "ls"); strings.Contains(out, "nodeX") {
			t.Errorf("a refused agent registered its node:\n%s", out)
		}
	})
}

// TestBGPIPv6: the same across racks on an IPv6 underlay (IPv6 sessions, an IPv6 cluster CIDR):
// BIRD learns each node's /64 with the node's IPv6 address as next hop, and pods in the two racks
// reach each other by their IPv6 addresses through the router. A node with --bgp-withdraw-on-stop
// withdraws at SIGTERM.
func TestBGPIPv6(t *testing.T) { bgpTwoRacks(t, false) }

// TestBGPDualStack: a dual-stack routed-global network in BGP mode on an IPv4 underlay: each node
// has an IPv4 and an IPv6 session to its rack's router, the IPv4 subnet goes over the one and the
// IPv6 subnet (next hop: the node's IPv6 address on the underlay interface) over the other, and
// pods reach each other across the racks by both families. (host-gw alone refuses an IPv6 CIDR on
// an IPv4 underlay.)
func TestBGPDualStack(t *testing.T) { bgpTwoRacks(t, true) }

func bgpTwoRacks(t *testing.T, dual bool) {
	testutil.RequireNetAdmin(t)
	testutil.RequireBird(t)
	r := testutil.NewRouter(t, "rtr6")
	rackA := r.AddSegment("rack6A", netip.MustParsePrefix("172.31.11.0/24"), netip.MustParsePrefix("fd31:11::/64"))
	rackB := r.AddSegment("rack6B", netip.MustParsePrefix("172.31.12.0/24"), netip.MustParsePrefix("fd31:12::/64"))
	var nodes []*bgpNode
	for i, spec := range []struct {
		seg    *testutil.Segment
		v4, v6 string
		asn    int
	}{{rackA, "172.31.11.11", "fd31:11::11", 65001}, {rackB, "172.31.12.12", "fd31:12::12", 65002}} {
		v4, v6 := netip.MustParseAddr(spec.v4), netip.MustParseAddr(spec.v6)
		h := &clusterHost{host: *newHost(t), name: fmt.Sprintf("node%d", i+1), addr: v6}
		n := &bgpNode{clusterHost: h, asn: spec.asn, gateway: spec.seg.Gateways[1], extra: []string{"--bgp-router-id", spec.v4}}
		if dual { // the IPv4 address is the underlay; a second session over IPv6
			h.addr, n.gateway = v4, spec.seg.Gateways[0]
			n.extra = []string{"--bgp-peer", netip.AddrPortFrom(spec.seg.Gateways[1], 65000).String()}
		}
		spec.seg.PlugAddrs(h.name, h.ns, v4, v6)
		nodes = append(nodes, n)
	}
	nodes[1].extra = append(nodes[1].extra, "--bgp-withdraw-on-stop")
	var conf strings.Builder
	conf.WriteString("router id 172.31.11.1;\nprotocol device {}\nprotocol kernel { ipv4 { export all; }; }\nprotocol kernel { ipv6 { export all; }; }\n")
	for i, n := range nodes {
		seg := []*testutil.Segment{rackA, rackB}[i]
		v6 := []string{"fd31:11::11", "fd31:12::12"}[i]
		fmt.Fprintf(&conf, "protocol bgp %s6 { local %s as 65000; neighbor %s as %d; hold time 6; connect retry time 2; error wait time 1,5; ipv6 { import all; export all; }; }\n", n.name, seg.Gateways[1], v6, n.asn)
		if dual {
			fmt.Fprintf(&conf, "protocol bgp %s4 { local %s as 65000; neighbor %s as %d; hold time 6; connect retry time 2; error wait time 1,5; ipv4 { import all; export all; }; }\n", n.name, seg.Gateways[0], n.addr, n.asn)
		}
	}
	bird := testutil.StartBird(t, r.NS, conf.String())
	e := testutil.StartEtcd(t, testutil.EtcdOptions{NS: nodes[0].ns, Addr: "172.31.11.11"})
	for _, n := range nodes {
		n.store = "etcd://" + e.Endpoint + "?prefix=/bgp6/&dial-timeout=2s&timeout=2s"
		n.startAgent(t, n.agentArgs()...)
	}
	create := []string{"network", "create", "pods6", "--driver", "routed-global", "--subnet", "fd44::/48", "--opt", "routing=bgp"}
	if dual {
		create = append(create, "--subnet", "10.245.0.0/16")
	}
	nodes[0].mustRun(t, create...)
	t.Cleanup(func() {
		for _, n := range nodes {
			_, _ = n.run("sandbox", "rm", "web")
		}
	})
	var pods []*sandbox.NetNS
	var ips, ips4 []string
	for _, n := range nodes {
		var sb sandboxJSON
		deadline := time.Now().Add(40 * time.Second)
		for {
			out, err := n.run("-o", "json", "sandbox", "create", "web", "--network", "pods6")
			if err == nil && json.Unmarshal([]byte(out), &sb) == nil {
				break
			}
			if time.Now().After(deadline) { // the node joins the network a moment after it is made
				t.Fatalf("sandbox on %s: %v\n%s", n.name, err, agentLogs(nodes))
			}
			time.Sleep(200 * time.Millisecond)
		}
		ns := testutil.Open(t, sb.NetNS)
		testutil.Listen(t, ns, "[::]:8080")
		pods = append(pods, ns)
		ips = append(ips, strings.Split(sb.Attachments[0].IPv6, "/")[0])
		ips4 = append(ips4, strings.Split(sb.Attachments[0].IPv4, "/")[0])
	}
	// Each node's subnets on the router via the node's address of that family.
	v6of := map[string]netip.Addr{"node1": netip.MustParseAddr("fd31:11::11"), "node2": netip.MustParseAddr("fd31:12::12")}
	deadline := time.Now().Add(30 * time.Second)
	for {
		rs, err := bird.Routes()
		found, want := 0, len(nodes)
		if dual {
			want *= 2
		}
		for i, n := range nodes {
			for _, rt := range rs {
				if !rt.Primary || len(rt.NextHops) == 0 {
					continue
				}
				if rt.Prefix.Bits() == 64 && rt.Prefix.Contains(netip.MustParseAddr(ips[i])) && rt.NextHops[0] == v6of[n.name] {
					found++
				}
				if dual && ips4[i] != "" && rt.Prefix.Bits() == 24 && rt.Prefix.Contains(netip.MustParseAddr(ips4[i])) && rt.NextHops[0] == n.addr {
					found++
				}
			}
		}
		if err == nil && found == want {
			break
		}
		if time.Now().After(deadline) {
			out, _ := bird.Cmd("show", "route", "all")
			t.Fatalf("the nodes' subnets not on the router via the nodes: %v\n%s\n%s", err, out, agentLogs(nodes))
		}
		time.Sleep(100 * time.Millisecond)
	}
	out, _ := bird.Cmd("show", "route")
	t.Logf("router's tables:\n%s", out)
	reach := func(dst []string, fmtAddr func(string) string) {
		t.Helper()
		for i := range pods {
			j := 1 - i
			deadline := time.Now().Add(20 * time.Second)
			for {
				seen, err := testutil.Dial(pods[i], fmtAddr(dst[j])+":8080")
				if err == nil && seen == dst[i] {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("pod %s -> %s across the racks: saw %q, %v", dst[i], dst[j], seen, err)
				}
				time.Sleep(200 * time.Millisecond)
			}
		}
	}
	reach(ips, func(a string) string { return "[" + a + "]" })
	if dual {
		reach(ips4, func(a string) string { return a })
	}
	t.Log(nodes[0].mustRun(t, "node", "ls"))

	// node2 runs with --bgp-withdraw-on-stop: a SIGTERM withdraws its subnet at once (no graceful
	// restart), instead of leaving it to the router for the restart time.
	var pfx netip.Prefix
	if rs, err := bird.Routes(); err == nil {
		for _, rt := range rs {
			if rt.Prefix.Contains(netip.MustParseAddr(ips[1])) {
				pfx = rt.Prefix
			}
		}
	}
	start := time.Now()
	if err := nodes[1].agent.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	_ = nodes[1].agent.Wait()
	for {
		rs, err := bird.Routes()
		if err == nil && !slices.ContainsFunc(rs, func(r testutil.BirdRoute) bool { return r.Prefix == pfx }) {
			break
		}
		if time.Since(start) > 3*time.Second { // the restart time is 5 s: a graceful stop would keep it
			t.Fatalf("node2's subnet %s still on the router %v after SIGTERM with --bgp-withdraw-on-stop", pfx, time.Since(start))
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("node2's subnet %s withdrawn from the router %v after SIGTERM (--bgp-withdraw-on-stop)", pfx, time.Since(start).Round(time.Millisecond))
}

// TestBGPOneHost: one host on its bbolt file (no cluster store) peering with its rack's router: a
// local routed network with routing=bgp is advertised from the host, and a client beyond the router
// opens connections to a sandbox by its own address (no published port, no NAT: the client's address
// is what the sandbox sees).
func TestBGPOneHost(t *testing.T) {
	testutil.RequireNetAdmin(t)
	testutil.RequireBird(t)
	r := testutil.NewRouter(t, "rtr1")
	rack := r.AddSegment("rack1h", netip.MustParsePrefix("172.31.21.0/24"))
	ext := r.AddSegment("ext1h", netip.MustParsePrefix("172.31.29.0/24"))
	client := ext.Plug("client", netip.MustParseAddr("172.31.29.10"), nil)
	h := &clusterHost{host: *newHost(t), name: "solo", addr: netip.MustParseAddr("172.31.21.11")}
	rack.Plug(h.name, h.addr, h.ns)
	bird := testutil.StartBird(t, r.NS, "router id 172.31.21.1;\nprotocol device {}\nprotocol kernel { ipv4 { export all; }; }\n"+
		"protocol bgp solo { local 172.31.21.1 as 65000; neighbor 172.31.21.11 as 65010; hold time 6; connect retry time 2; error wait time 1,5; ipv4 { import all; export all; }; }\n")
	h.must(t, "network", "create", "lr", "--driver", "routed", "--subnet", "10.50.7.0/24", "--opt", "routing=bgp")
	h.must(t, "network", "create", "quiet", "--driver", "routed", "--subnet", "10.50.8.0/24") // not advertised
	t.Cleanup(func() { _, _ = h.podctl(context.Background(), "sandbox", "rm", "web") })
	// No --store: the agent runs on the host's bbolt file (controllers only).
	h.log = &testutil.SyncBuffer{}
	h.agent = h.cmd(context.Background(), "agent", "--underlay", h.addr.String(), "--bgp-as", "65010", "--bgp-peer", "172.31.21.1:65000", "--bgp-hold-time", "6s")
	h.agent.Stderr = h.log
	if err := h.agent.Start(); err != nil {
		t.Fatal(err)
	}
	cmd := h.agent
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	want := netip.MustParsePrefix("10.50.7.0/24")
	deadline := time.Now().Add(30 * time.Second)
	for {
		rs, err := bird.Routes()
		if err == nil && slices.ContainsFunc(rs, func(r testutil.BirdRoute) bool {
			return r.Prefix == want && r.Primary && len(r.NextHops) > 0 && r.NextHops[0] == h.addr
		}) {
			if slices.ContainsFunc(rs, func(r testutil.BirdRoute) bool { return r.Prefix == netip.MustParsePrefix("10.50.8.0/24") }) {
				t.Errorf("the network without routing=bgp is advertised too: %+v", rs)
			}
			break
		}
		if time.Now().After(deadline) {
			out, _ := bird.Cmd("show", "route", "all")
			t.Fatalf("%s via %s not on the router: %v\n%s\n%s", want, h.addr, err, out, h.log)
		}
		time.Sleep(100 * time.Millisecond)
	}
	var sb sandboxJSON
	if err := json.Unmarshal([]byte(h.must(t, "-o", "json", "sandbox", "create", "web", "--network", "lr")), &sb); err != nil {
		t.Fatal(err)
	}
	ns := testutil.Open(t, sb.NetNS)
	testutil.Listen(t, ns, ":8080")
	ip := strings.Split(sb.Attachments[0].IPv4, "/")[0]
	seen, err := testutil.Dial(client, ip+":8080")
	if err != nil || seen != "172.31.29.10" {
		t.Fatalf("client beyond the router -> sandbox %s:8080: saw %q, %v; want the client's own 172.31.29.10", ip, seen, err)
	}
	t.Logf("client 172.31.29.10 beyond the router reached sandbox %s by its address (advertised %s from the host on bbolt)", ip, want)
}

func agentLogs(nodes []*bgpNode) string {
	var b strings.Builder
	for _, n := range nodes {
		fmt.Fprintf(&b, "--- %s agent:\n%s\n", n.name, n.log)
	}
	return b.String()
}

// kernelRoute reports whether h's main table routes pfx via gw.
func kernelRoute(t *testing.T, h *netlink.Handle, pfx netip.Prefix, gw netip.Addr) bool {
	t.Helper()
	rs, err := h.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if r.Dst != nil && r.Dst.String() == pfx.String() && r.Gw.String() == gw.String() {
			return true
		}
	}
	return false
}

// tunnels are the encapsulating links in ns (vxlan, geneve, ipip, gre...).
func tunnels(t *testing.T, ns *sandbox.NetNS) []string {
	t.Helper()
	h, err := ns.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ls, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range ls {
		switch l.Type() {
		case "vxlan", "geneve", "ipip", "gre", "gretap", "sit", "ip6tnl", "wireguard":
			out = append(out, l.Attrs().Name+" ("+l.Type()+")")
		}
	}
	return out
}
