package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/netmgr/netmgr/drivers/routed"
	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr/cluster"
	"github.com/netmgr/netmgr/netmgr/store"
	etcdstore "github.com/netmgr/netmgr/netmgr/store/etcd"
	"github.com/netmgr/netmgr/sandbox"
)

// Issue 13's speed figures (bench/bgp/run.sh): the BGP speaker of `podctl agent` on two racks joined
// by a BIRD router, built as TestBGPRacks builds them (testutil.NewRouter, StartBird, StartEtcd, an
// agent process per node namespace), with the same session timers (hold 6 s, restart 5 s, connect
// retry 2 s) and no --bgp-advertise. Timing never fails a benchmark; a route that never comes does.

// benchPodNet is the routed-global network of the benchmarks, in BGP mode.
const benchPodNet = "10.244.0.0/16"

// newBenchHost is newHost for a benchmark: a namespace, podctl's state and run dirs, and at cleanup
// every sandbox left removed and every pin unmounted.
func newBenchHost(tb testing.TB, name string) *host {
	tb.Helper()
	testutil.RequireRoot(tb)
	if _, err := exec.LookPath("nsenter"); err != nil {
		tb.Skip("needs nsenter (util-linux)")
	}
	h := &host{ns: testutil.NewNS(tb, name), stateDir: tb.TempDir(), runDir: tb.TempDir()}
	tb.Cleanup(func() {
		if out, err := h.podctl(context.Background(), "-o", "json", "sandbox", "ls"); err == nil {
			var sbs []struct {
				Name string `json:"name"`
			}
			_ = json.Unmarshal([]byte(out), &sbs)
			for _, s := range sbs {
				_, _ = h.podctl(context.Background(), "sandbox", "rm", s.Name)
			}
		}
		pins, _ := filepath.Glob(filepath.Join(h.runDir, "netns", "*"))
		for _, p := range pins {
			_ = sandbox.Remove(p)
		}
	})
	return h
}

// benchAgent runs `podctl agent` on n with the BGP flags of TestBGPRacks but --bgp-advertise, as a
// process of its own, killed at cleanup (also when the benchmark fails) and if the test binary dies.
func benchAgent(tb testing.TB, n *bgpNode) {
	tb.Helper()
	n.log = &testutil.SyncBuffer{}
	n.agent = n.cmd(context.Background(), "--store", n.store, "--node", n.name, "agent", "--underlay", n.addr.String(), "--ttl", "3s",
		"--bgp-as", fmt.Sprint(n.asn), "--bgp-peer", n.gateway.String()+":65000",
		"--bgp-hold-time", "6s", "--bgp-restart-time", "5s", "--bgp-connect-retry", "2s")
	n.agent.Stderr = n.log
	n.agent.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := n.agent.Start(); err != nil {
		tb.Fatal(err)
	}
	cmd := n.agent
	tb.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
}

func benchRun(tb testing.TB, h *clusterHost, args ...string) string {
	tb.Helper()
	out, err := h.run(args...)
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// bgpLab is two racks behind a BIRD router, an etcd on the first node, and nodes (not started).
type bgpLab struct {
	router *testutil.Router
	racks  []*testutil.Segment
	nodes  []*bgpNode
	bird   *testutil.Bird
	etcd   *testutil.Etcd
}

// newBGPLab plugs perRack nodes into each of two racks (172.31.1.0/24 and 172.31.2.0/24, AS 65001
// and 65002; nodes alternate between the racks: node01 in A, node02 in B...) and starts BIRD with a
// session per node and its routes exported to the router's kernel. birdExtra goes before the
// protocols (a debug or timeformat line). With network, the network pods is created at once.
func newBGPLab(tb testing.TB, perRack int, birdExtra string, network bool) *bgpLab {
	tb.Helper()
	testutil.RequireNetAdmin(tb)
	testutil.RequireBird(tb)
	l := &bgpLab{router: testutil.NewRouter(tb, "rtr")}
	l.racks = []*testutil.Segment{
		l.router.AddSegment("rackA", netip.MustParsePrefix("172.31.1.0/24")),
		l.router.AddSegment("rackB", netip.MustParsePrefix("172.31.2.0/24")),
	}
	for i := range 2 * perRack {
		rack := i % 2
		seg := l.racks[rack]
		h := &clusterHost{host: *newBenchHost(tb, "host"), name: fmt.Sprintf("node%02d", i+1),
			addr: netip.AddrFrom4([4]byte{172, 31, byte(rack + 1), byte(11 + i/2)})}
		seg.Plug(h.name, h.addr, h.ns)
		l.nodes = append(l.nodes, &bgpNode{clusterHost: h, asn: 65001 + rack, gateway: seg.Gateway})
	}
	l.bird = testutil.StartBird(tb, l.router.NS, birdExtra+birdConfig(l.nodes))
	l.etcd = testutil.StartEtcd(tb, testutil.EtcdOptions{NS: l.nodes[0].ns, Addr: l.nodes[0].addr.String()})
	for _, n := range l.nodes {
		n.store = "etcd://" + l.etcd.Endpoint + "?prefix=/bgp/&dial-timeout=2s&timeout=2s"
	}
	if network {
		createPods(tb, l.nodes[0].clusterHost)
	}
	return l
}

// createPods creates the benchmarks' network: pods, routed-global, routing=bgp.
func createPods(tb testing.TB, h *clusterHost) {
	tb.Helper()
	benchRun(tb, h, "network", "create", "pods", "--driver", "routed-global", "--subnet", benchPodNet, "--opt", "routing=bgp")
}

// stamps records when each prefix was first seen, for waiters.
type stamps struct {
	mu   sync.Mutex
	seen map[netip.Prefix]time.Time
	who  map[netip.Prefix]string // the node of a lease
	ch   chan struct{}           // closed and replaced on every new stamp
}

func newStamps() *stamps {
	return &stamps{seen: map[netip.Prefix]time.Time{}, who: map[netip.Prefix]string{}, ch: make(chan struct{})}
}

func (s *stamps) add(p netip.Prefix, at time.Time, who string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.seen[p]; ok {
		return
	}
	s.seen[p], s.who[p] = at, who
	close(s.ch)
	s.ch = make(chan struct{})
}

// wait returns the first prefix (and its time) for which match holds, waiting up to within.
func (s *stamps) wait(match func(netip.Prefix, string) bool, within time.Duration) (netip.Prefix, time.Time, bool) {
	deadline := time.After(within)
	for {
		s.mu.Lock()
		for p, t := range s.seen {
			if match(p, s.who[p]) {
				s.mu.Unlock()
				return p, t, true
			}
		}
		ch := s.ch
		s.mu.Unlock()
		select {
		case <-ch:
		case <-deadline:
			return netip.Prefix{}, time.Time{}, false
		}
	}
}

// watchLeases stamps every subnet lease of network pods when this process's etcd watch sees it
// appear (its key, cluster/subnets/pods/ADDR-BITS under the store prefix /bgp/).
func watchLeases(tb testing.TB, e *testutil.Etcd, s *stamps) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st, err := etcdstore.New(ctx, etcdstore.Options{Endpoints: []string{e.Endpoint}, Prefix: "/bgp/", Dialer: e.Dial})
	if err != nil {
		cancel()
		tb.Fatal(err)
	}
	evs, err := st.Watch(ctx, cluster.KeySubnets+"pods/", 0)
	if err != nil {
		cancel()
		st.Close()
		tb.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range evs {
			now := time.Now()
			if ev.Type != store.EventPut {
				continue
			}
			last := ev.KV.Key[strings.LastIndexByte(ev.KV.Key, '/')+1:]
			i := strings.LastIndexByte(last, '-')
			if i < 0 {
				continue
			}
			p, err := netip.ParsePrefix(last[:i] + "/" + last[i+1:])
			if err != nil {
				continue
			}
			var v struct {
				Node string `json:"node"`
			}
			_ = json.Unmarshal(ev.KV.Value, &v)
			s.add(p, now, v.Node)
		}
	}()
	tb.Cleanup(func() {
		cancel()
		<-done
		st.Close()
	})
}

// watchRoutes stamps every new IPv4 route into the pod network in ns's main table for which keep
// holds, from a netlink subscription (the kernel's own notification, no polling); who is its gateway.
func watchRoutes(tb testing.TB, ns *sandbox.NetNS, keep func(netlink.Route) bool, s *stamps) {
	tb.Helper()
	pool := netip.MustParsePrefix(benchPodNet)
	ch := make(chan netlink.RouteUpdate, 4096)
	done := make(chan struct{})
	var closing atomic.Bool // the socket's close at cleanup ends the reader with an error: not news
	h := netns.NsHandle(ns.Fd())
	if err := netlink.RouteSubscribeWithOptions(ch, done, netlink.RouteSubscribeOptions{Namespace: &h,
		ReceiveBufferSize: 1 << 20, ErrorCallback: func(err error) {
			if !closing.Load() {
				tb.Logf("route subscription in %s: %v", ns.Path(), err)
			}
		}}); err != nil {
		tb.Fatal(err)
	}
	go func() {
		for u := range ch {
			now := time.Now()
			if u.Type != unix.RTM_NEWROUTE || u.Dst == nil || u.Table != unix.RT_TABLE_MAIN || !keep(u.Route) {
				continue
			}
			a, _ := netip.AddrFromSlice(u.Dst.IP)
			ones, _ := u.Dst.Mask.Size()
			p := netip.PrefixFrom(a.Unmap(), ones)
			if !pool.Overlaps(p) || p.Bits() <= pool.Bits() {
				continue
			}
			gw, _ := netip.AddrFromSlice(u.Gw)
			s.add(p, now, gw.Unmap().String())
		}
	}()
	tb.Cleanup(func() {
		closing.Store(true)
		close(done)
		// The subscription's reader ends at its next message or receive timeout; do not wait for it.
		go func() {
			for range ch {
			}
		}()
	})
}

// noTunnels fails the benchmark if ns has an encapsulating link: the path measured has none.
func noTunnels(tb testing.TB, ns *sandbox.NetNS) {
	tb.Helper()
	h, err := ns.NewHandle()
	if err != nil {
		tb.Fatal(err)
	}
	defer h.Close()
	ls, err := h.LinkList()
	if err != nil {
		tb.Fatal(err)
	}
	for _, l := range ls {
		switch l.Type() {
		case "vxlan", "geneve", "ipip", "gre", "gretap", "sit", "ip6tnl", "wireguard":
			tb.Fatalf("%s has tunnel link %s (%s): the path should have no encapsulation", ns.Path(), l.Attrs().Name, l.Type())
		}
	}
}

// birdLog reads BIRD's log (debug states and routes, millisecond times) for when each prefix first
// entered its table from a BGP session and when each session first came up:
//
//	2026-12-01 20:50:01.123 <TRACE> node01 > added [best] 10.244.3.0/24 unicast
//	2026-12-01 20:50:01.100 <TRACE> node01: State changed to up
func birdLog(path string) (imports map[netip.Prefix]time.Time, up map[string]time.Time, sample []string) {
	imports, up = map[netip.Prefix]time.Time{}, map[string]time.Time{}
	f, err := os.Open(path)
	if err != nil {
		return imports, up, nil
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 6 || fs[2] != "<TRACE>" {
			continue
		}
		t, err := time.ParseInLocation("2006-01-02 15:04:05.000", fs[0]+" "+fs[1], time.Local)
		if err != nil {
			continue
		}
		if len(sample) < 12 && strings.HasPrefix(fs[3], "node01") {
			sample = append(sample, sc.Text())
		}
		switch {
		case fs[4] == ">" && fs[5] == "added":
			for _, w := range fs[6:] {
				if p, err := netip.ParsePrefix(w); err == nil {
					if _, ok := imports[p]; !ok {
						imports[p] = t
					}
					break
				}
			}
		case strings.HasSuffix(fs[3], ":") && strings.Join(fs[4:], " ") == "State changed to up":
			name := strings.TrimSuffix(fs[3], ":")
			if _, ok := up[name]; !ok {
				up[name] = t
			}
		}
	}
	return imports, up, sample
}

type durations []time.Duration

// pct is the p-quantile (nearest rank, as BenchmarkClusterConvergence) in milliseconds.
func (d durations) pct(p float64) float64 {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return float64(s[int(p*float64(len(s)-1)+0.5)]) / 1e6
}

// BenchmarkBGPLeaseRoute: a node subnet lease to the route on the router, over 20 nodes (10 per
// rack, alternating) joining a routed-global network in BGP mode. A lease is the moment this
// process's etcd watch sees the subnet's lease key appear (/bgp/cluster/subnets/pods/ADDR-BITS, put
// by the node's agent when it joins the network); the route is the moment the router namespace's
// kernel announces the route to that subnet via the node (BIRD's kernel protocol; a netlink
// subscription, no polling). BIRD's own table and each session's coming up are read from its log
// (debug states and routes, ms times). The comparison peer is the host-gw path on one segment: the
// same lease to the route a node of the same rack (node01 for rack A, node02 for rack B) installs
// via the joining node (routed driver, protocol 0xb1), also from a netlink subscription; 18 samples.
//
//   - join: the network exists; the agents start one at a time, each lease and route awaited before
//     the next (a new node: its BGP session comes up as it leases, so the session's setup counts);
//   - network-create: all 20 agents run with their sessions established, then the network is
//     created: 20 leases at once on live sessions (what advertising costs, on a loaded machine).
func BenchmarkBGPLeaseRoute(b *testing.B) {
	b.Run("join", func(b *testing.B) { leaseRoute(b, false) })
	b.Run("network-create", func(b *testing.B) { leaseRoute(b, true) })
}

func leaseRoute(b *testing.B, burst bool) {
	const perRack = 10
	l := newBGPLab(b, perRack, "timeformat log iso long ms;\ndebug protocols { states, routes };\n", !burst)
	leases, onRouter := newStamps(), newStamps()
	hostgw := []*stamps{newStamps(), newStamps()} // by rack
	watchLeases(b, l.etcd, leases)
	addrs := map[string]bool{}
	for _, n := range l.nodes {
		addrs[n.addr.String()] = true
	}
	watchRoutes(b, l.router.NS, func(r netlink.Route) bool {
		gw, _ := netip.AddrFromSlice(r.Gw)
		return addrs[gw.Unmap().String()]
	}, onRouter)
	for rack := range 2 {
		watchRoutes(b, l.nodes[rack].ns, func(r netlink.Route) bool { return r.Protocol == routed.RouteProtocol }, hostgw[rack])
	}
	type sample struct {
		node             string
		subnet           netip.Prefix
		started, leased  time.Time
		routed, hostgwAt time.Time
	}
	samples := make([]sample, len(l.nodes))
	// await fills s from the lease of node i on (within 2 minutes each: a route that never comes
	// fails the run, a slow one never does).
	await := func(i int) {
		n := l.nodes[i]
		s := &samples[i]
		s.node = n.name
		name := n.name
		sn, leased, ok := leases.wait(func(_ netip.Prefix, who string) bool { return who == name }, 2*time.Minute)
		if !ok {
			b.Fatalf("%s leased no subnet of pods within 2 minutes:\n%s", n.name, n.log)
		}
		s.subnet, s.leased = sn, leased
		_, at, ok := onRouter.wait(func(p netip.Prefix, gw string) bool { return p == sn && gw == n.addr.String() }, 2*time.Minute)
		if !ok {
			out, _ := l.bird.Cmd("show", "protocols")
			b.Fatalf("%s's subnet %s not in the router's kernel via %s 2 minutes after its lease:\n%s\n%s\n%s", n.name, sn, n.addr, out, n.log, l.bird.Log())
		}
		s.routed = at
		if i >= 2 {
			rack := i % 2
			_, at, ok := hostgw[rack].wait(func(p netip.Prefix, gw string) bool { return p == sn && gw == n.addr.String() }, 2*time.Minute)
			if !ok {
				b.Fatalf("%s has no host-gw route to %s's subnet %s 2 minutes after its lease:\n%s", l.nodes[rack].name, n.name, sn, l.nodes[rack].log)
			}
			s.hostgwAt = at
		}
	}
	b.ResetTimer()
	if burst {
		for i, n := range l.nodes {
			samples[i].started = time.Now()
			benchAgent(b, n)
		}
		deadline := time.Now().Add(3 * time.Minute)
		for {
			ps, err := l.bird.Protocols()
			up := 0
			for _, n := range l.nodes {
				if ps[n.name] == "Established" {
					up++
				}
			}
			if err == nil && up == len(l.nodes) {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("%d of %d sessions established 3 minutes after the agents started: %v %v", up, len(l.nodes), ps, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
		created := time.Now()
		createPods(b, l.nodes[0].clusterHost)
		b.Logf("all %d sessions established, then the network created (podctl network create took %v)", len(l.nodes), time.Since(created).Round(time.Millisecond))
		for i := range l.nodes {
			samples[i].started = created
			await(i)
		}
	} else {
		for i, n := range l.nodes {
			samples[i].started = time.Now()
			benchAgent(b, n)
			await(i)
		}
	}
	b.StopTimer()
	imports, up, logSample := birdLog(l.bird.LogFile)
	b.Logf("BIRD's log for node01:\n%s", strings.Join(logSample, "\n"))
	var startLease, leaseRoute, leaseBird, birdKernel, leaseHostGW, sessionRoute durations
	upFirst := 0
	for _, s := range samples {
		startLease = append(startLease, s.leased.Sub(s.started))
		leaseRoute = append(leaseRoute, s.routed.Sub(s.leased))
		line := fmt.Sprintf("%s %-15s start->lease %6.0f ms, lease->router kernel %6.0f ms", s.node, s.subnet,
			ms(s.leased.Sub(s.started)), ms(s.routed.Sub(s.leased)))
		if t, ok := imports[s.subnet]; ok {
			leaseBird = append(leaseBird, t.Sub(s.leased))
			birdKernel = append(birdKernel, s.routed.Sub(t))
			line += fmt.Sprintf(" (BIRD's table %6.0f ms)", ms(t.Sub(s.leased)))
		}
		if t, ok := up[s.node]; ok {
			// From the later of lease and session up: what the route took once it could be sent.
			from := t
			if s.leased.After(t) {
				from = s.leased
				upFirst++
			}
			sessionRoute = append(sessionRoute, s.routed.Sub(from))
			line += fmt.Sprintf(", session up %+6.0f ms from the lease", ms(t.Sub(s.leased)))
		}
		if !s.hostgwAt.IsZero() {
			leaseHostGW = append(leaseHostGW, s.hostgwAt.Sub(s.leased))
			line += fmt.Sprintf(", lease->same-rack host-gw %6.0f ms", ms(s.hostgwAt.Sub(s.leased)))
		}
		b.Log(line)
	}
	if out, err := l.bird.Cmd("show", "protocols"); err == nil {
		b.Logf("router's sessions at the end:\n%s", out)
	}
	b.ReportMetric(float64(len(samples)), "nodes")
	b.ReportMetric(startLease.pct(0.5), "start-lease-p50-ms")
	b.ReportMetric(leaseRoute.pct(0.5), "lease-route-p50-ms")
	b.ReportMetric(leaseRoute.pct(0.99), "lease-route-p99-ms")
	b.ReportMetric(leaseRoute.pct(1), "lease-route-max-ms")
	if len(leaseBird) == len(samples) {
		b.ReportMetric(leaseBird.pct(0.5), "lease-bird-p50-ms")
		b.ReportMetric(leaseBird.pct(0.99), "lease-bird-p99-ms")
		b.ReportMetric(birdKernel.pct(0.5), "bird-kernel-p50-ms")
		b.ReportMetric(birdKernel.pct(1), "bird-kernel-max-ms")
	} else {
		b.Logf("BIRD's log has %d of %d imports: no BIRD table figures", len(leaseBird), len(samples))
	}
	if len(sessionRoute) == len(samples) {
		b.ReportMetric(sessionRoute.pct(0.5), "sendable-route-p50-ms")
		b.ReportMetric(sessionRoute.pct(0.99), "sendable-route-p99-ms")
		b.ReportMetric(float64(upFirst), "sessions-up-before-lease")
	} else {
		b.Logf("BIRD's log has %d of %d sessions coming up: no session figures", len(sessionRoute), len(samples))
	}
	b.ReportMetric(float64(len(leaseHostGW)), "hostgw-samples")
	b.ReportMetric(leaseHostGW.pct(0.5), "lease-hostgw-p50-ms")
	b.ReportMetric(leaseHostGW.pct(0.99), "lease-hostgw-p99-ms")
	b.ReportMetric(leaseHostGW.pct(1), "lease-hostgw-max-ms")
	if p := leaseHostGW.pct(0.5); p > 0 {
		b.ReportMetric(leaseRoute.pct(0.5)/p, "bgp/hostgw-p50")
	}
	if p := leaseHostGW.pct(0.99); p > 0 {
		b.ReportMetric(leaseRoute.pct(0.99)/p, "bgp/hostgw-p99")
	}
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// BenchmarkBGPThroughput: one TCP stream (iperf3) across the racks, pod to pod on the BGP network
// (a sandbox on node01 in rack A, client, and on node02 in rack B, server; no tunnel, the router
// forwards by the routes BIRD learned) vs host to host between the same two nodes' own addresses
// over the same router path; alternated (pod, host, pod, host...), BENCH_BGP_IPERF_ROUNDS (3) rounds
// of BENCH_BGP_IPERF_TIME (10) seconds each, medians and their ratio pod/host (target >= 0.95).
func BenchmarkBGPThroughput(b *testing.B) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Skip("needs iperf3 (apt-get install iperf3, or DEPS_BENCH=1 bash .ci/deps)")
	}
	secs, rounds := envInt("BENCH_BGP_IPERF_TIME", 10), envInt("BENCH_BGP_IPERF_ROUNDS", 3)
	l := newBGPLab(b, 1, "", true)
	onRouter := newStamps()
	watchRoutes(b, l.router.NS, func(netlink.Route) bool { return true }, onRouter)
	for _, n := range l.nodes {
		benchAgent(b, n)
	}
	for _, n := range l.nodes {
		gw := n.addr.String()
		if _, _, ok := onRouter.wait(func(_ netip.Prefix, via string) bool { return via == gw }, 2*time.Minute); !ok {
			b.Fatalf("%s's subnet not in the router's kernel 2 minutes after its agent started:\n%s\n%s", n.name, n.log, l.bird.Log())
		}
	}
	var pods []string // namespace pins
	var ips []string
	b.Cleanup(func() { // before the agents and etcd stop (cleanups run last first)
		for _, n := range l.nodes {
			_, _ = n.run("sandbox", "rm", "web")
		}
	})
	for _, n := range l.nodes {
		var sb sandboxJSON
		if err := json.Unmarshal([]byte(benchRun(b, n.clusterHost, "-o", "json", "sandbox", "create", "web", "--network", "pods")), &sb); err != nil {
			b.Fatal(err)
		}
		pods = append(pods, sb.NetNS)
		ips = append(ips, strings.Split(sb.Attachments[0].IPv4, "/")[0])
	}
	// Both ways reachable first (rack A's subnet learned by node02 from the router, and back).
	srvNS := testutil.Open(b, pods[1])
	testutil.Listen(b, srvNS, ":8080")
	cliNS := testutil.Open(b, pods[0])
	deadline := time.Now().Add(time.Minute)
	for {
		seen, err := testutil.Dial(cliNS, ips[1]+":8080")
		if err == nil && seen == ips[0] {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("pod %s -> %s across the racks: saw %q, %v\n%s", ips[0], ips[1], seen, err, agentLogs(l.nodes))
		}
		time.Sleep(200 * time.Millisecond)
	}
	noTunnels(b, l.nodes[0].ns)
	var pod, hostTput []float64
	b.ResetTimer()
	for r := range rounds {
		for _, side := range []string{"pod", "host"} {
			var g float64
			var err error
			if side == "pod" {
				g, err = testutil.Iperf3(context.Background(), pods[1], ips[1], pods[0], secs)
				pod = append(pod, g)
			} else {
				g, err = testutil.Iperf3(context.Background(), l.nodes[1].ns.Path(), l.nodes[1].addr.String(), l.nodes[0].ns.Path(), secs)
				hostTput = append(hostTput, g)
			}
			if err != nil {
				b.Fatal(err)
			}
			b.Logf("round %d/%d: %s to %s across the router %.2f Gbit/s", r+1, rounds, side, side, g)
		}
	}
	b.StopTimer()
	b.Logf("pod runs %v, host runs %v (Gbit/s, %d s each)", pod, hostTput, secs)
	b.ReportMetric(median(pod), "pod-gbps")
	b.ReportMetric(median(hostTput), "host-gbps")
	b.ReportMetric(median(pod)/median(hostTput), "pod/host")
}
