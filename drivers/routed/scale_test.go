package routed_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/netmgr/netmgr/drivers/routed"
	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/store"
)

// TestScale1500: 1,500 sandboxes on one routed network of one host (past the bridge's 1023 ports)
// all get addresses and reach their neighbours (sampled pings), the host holds one permanent
// neighbour per pod (none learned, so the kernel's gc_thresh never drops one), and deleting them
// leaves no host route, link or allocation.
func TestScale1500(t *testing.T) {
	if testing.Short() {
		t.Skip("1,500 sandboxes take about a minute")
	}
	const n = 1500
	e := newEnv(t)
	ctx := context.Background()
	e.network(t, "big", routed.Name, "10.70.0.0/20")
	start := time.Now()
	ips := make([]string, n)
	paths := make([]string, n)
	for i := range n {
		sb, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: fmt.Sprintf("s%d", i), Networks: []netmgr.AttachSpec{{Network: "big"}}})
		if err != nil {
			t.Fatalf("sandbox %d: %v", i, err)
		}
		ips[i], paths[i] = ip4(sb), sb.NetNS
	}
	t.Logf("%d creates in %v (%.2f ms/op)", n, time.Since(start), float64(time.Since(start).Microseconds())/1000/n)
	seen := map[string]bool{}
	for _, ip := range ips {
		if ip == "" || seen[ip] {
			t.Fatalf("address %q missing or given twice", ip)
		}
		seen[ip] = true
	}
	nb, err := e.hh.NeighList(0, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	perm := 0
	for _, x := range nb {
		if x.State == netlink.NUD_PERMANENT && strings.HasPrefix(x.IP.String(), "10.70.") {
			perm++
		}
	}
	if perm != n {
		t.Errorf("host has %d permanent neighbours for pods, want %d", perm, n)
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 12 {
		i, j := r.IntN(n), r.IntN(n)
		if i == j {
			continue
		}
		ns := testutil.Open(t, paths[i])
		if err := testutil.Ping(ns, ips[j]); err != nil {
			t.Errorf("s%d -> s%d (%s): %v", i, j, ips[j], err)
		}
		ns.Close()
	}
	// The first and the last, across the whole range.
	ns := testutil.Open(t, paths[0])
	if err := testutil.Ping(ns, ips[n-1]); err != nil {
		t.Errorf("s0 -> s%d: %v", n-1, err)
	}
	ns.Close()

	rtStore, err := store.OpenBolt(filepath.Join(e.runDir, "runtime.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer rtStore.Close()
	if kvs, _, err := rtStore.List(ctx, "ipam/big/"); err != nil || len(kvs) != n {
		t.Fatalf("%d allocations recorded (%v), want %d", len(kvs), err, n)
	}

	start = time.Now()
	for i := range n {
		if err := e.m.DeleteSandbox(ctx, fmt.Sprintf("s%d", i)); err != nil {
			t.Fatalf("delete s%d: %v", i, err)
		}
	}
	t.Logf("%d deletes in %v", n, time.Since(start))
	// The kernel destroys the namespaces, and their veths, in the background.
	var left []string
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		links, _ := e.hh.LinkList()
		left = left[:0]
		for _, l := range links {
			if strings.HasPrefix(l.Attrs().Name, routed.LocalPrefix) {
				left = append(left, l.Attrs().Name)
			}
		}
		if len(left) == 0 {
			break
		}
	}
	if len(left) > 0 {
		t.Fatalf("%d host ends left, e.g. %s", len(left), left[0])
	}
	routes, _ := e.hh.RouteList(nil, netlink.FAMILY_V4)
	for _, rt := range routes {
		if rt.Dst != nil && strings.HasPrefix(rt.Dst.IP.String(), "10.70.") && rt.Dst.String() != "10.70.0.0/20" {
			t.Errorf("route left: %v", rt)
		}
	}
	kvs, _, err := rtStore.List(ctx, "ipam/big/")
	if err != nil {
		t.Fatal(err)
	}
	if len(kvs) != 0 {
		t.Errorf("%d allocations left, e.g. %s", len(kvs), kvs[0].Key)
	}
	if sbs, _, _ := rtStore.List(ctx, "sandboxes/"); len(sbs) != 0 {
		t.Errorf("%d sandbox records left", len(sbs))
	}
}
