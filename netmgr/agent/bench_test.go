package agent_test

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/cluster"
)

// The cluster benchmarks of issue 9, run by bench/cluster/run.sh (make bench) with -benchtime 1x:
// each runs its fixed workload once and reports its figures as metrics.

const benchSandboxes = 100

// BenchmarkClusterSandboxCreate: sandbox create and delete per op, N=100, on an overlay network of a
// cluster store (etcd) against a bridge network on a host's own bbolt files, side by side in one run.
// A create on a joined network reads only the node's own state: no etcd round trip.
func BenchmarkClusterSandboxCreate(b *testing.B) {
	tb := newTestbed(b, 1)
	h := tb.hosts[0]
	createOverlay(b, h, "ov", netip.MustParsePrefix("10.244.0.0/16"))
	tb.start(h)
	waitJoined(b, "ov", h)

	local := testutil.NewNS(b, "bridgehost")
	m, err := netmgr.New(context.Background(), netmgr.WithStateDir(b.TempDir()), netmgr.WithRunDir(b.TempDir()), netmgr.WithHostNetNS(local.Path()))
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	if _, err := m.CreateNetwork(context.Background(), netmgr.NetworkSpec{Name: "br", Subnets: []netip.Prefix{netip.MustParsePrefix("10.88.0.0/16")}}); err != nil {
		b.Fatal(err)
	}
	defer m.DeleteNetwork(context.Background(), "br")

	run := func(m *netmgr.Manager, network string) (create, del time.Duration) {
		ctx := context.Background()
		start := time.Now()
		for i := range benchSandboxes {
			if _, err := m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: fmt.Sprintf("s%d", i), Networks: []netmgr.AttachSpec{{Network: network}}}); err != nil {
				b.Fatal(err)
			}
		}
		create = time.Since(start) / benchSandboxes
		start = time.Now()
		for i := range benchSandboxes {
			if err := m.DeleteSandbox(ctx, fmt.Sprintf("s%d", i)); err != nil {
				b.Fatal(err)
			}
		}
		return create, time.Since(start) / benchSandboxes
	}
	b.ResetTimer()
	// Alternate the sides, twice each, so that a slow moment of the machine does not land on one.
	var oc, od, bc, bd []time.Duration
	for range 2 {
		c, d := run(h.m, "ov")
		oc, od = append(oc, c), append(od, d)
		c, d = run(m, "br")
		bc, bd = append(bc, c), append(bd, d)
	}
	ms := func(ds []time.Duration) float64 { return float64(slices.Min(ds)) / 1e6 }
	b.ReportMetric(ms(oc), "overlay-create-ms/op")
	b.ReportMetric(ms(bc), "bridge-create-ms/op")
	b.ReportMetric(ms(oc)/ms(bc), "create-ratio")
	b.ReportMetric(ms(od), "overlay-delete-ms/op")
	b.ReportMetric(ms(bd), "bridge-delete-ms/op")
	b.ReportMetric(ms(od)/ms(bd), "delete-ratio")
}

// BenchmarkClusterConvergence: from a node's agent start to every peer programmed (route, neighbour
// and FDB entry for the node's subnet on each of 3 peers), over 20 joins of a fourth host; p50 and
// p99. Between joins the node is removed (node rm), so each join is a new member for its peers.
func BenchmarkClusterConvergence(b *testing.B) {
	const joins = 20
	tb := newTestbed(b, 4)
	peers, h4 := tb.hosts[:3], tb.hosts[3]
	createOverlay(b, peers[0], "ov", netip.MustParsePrefix("10.244.0.0/16"))
	for _, h := range peers {
		tb.start(h)
	}
	waitJoined(b, "ov", peers...)
	var took []time.Duration
	b.ResetTimer()
	for range joins {
		started := time.Now()
		tb.start(h4)
		var sn netip.Prefix
		for !sn.IsValid() {
			if js, err := h4.m.JoinedNetworks(context.Background()); err == nil && len(js) == 1 {
				sn = js[0].View.Subnets[0]
			}
			if time.Since(started) > 20*time.Second {
				b.Fatal("host4 did not join")
			}
			time.Sleep(time.Millisecond)
		}
		for _, p := range peers {
			for {
				if r, n, f := peerState(b, p, sn, h4.addr); r && n && f {
					break
				}
				if time.Since(started) > 20*time.Second {
					b.Fatalf("%s not programmed for host4", p.name)
				}
				time.Sleep(time.Millisecond)
			}
		}
		took = append(took, time.Since(started))
		h4.kill()
		if _, err := cluster.RemoveNode(context.Background(), peers[0].cs, h4.name); err != nil {
			b.Fatal(err)
		}
		for _, p := range peers {
			for {
				if r, _, _ := peerState(b, p, sn, h4.addr); !r {
					break
				}
				time.Sleep(time.Millisecond)
			}
		}
	}
	slices.Sort(took)
	pct := func(p float64) float64 { return float64(took[int(p*float64(len(took)-1)+0.5)]) / 1e6 }
	b.ReportMetric(pct(0.5), "join-p50-ms")
	b.ReportMetric(pct(0.99), "join-p99-ms")
}
