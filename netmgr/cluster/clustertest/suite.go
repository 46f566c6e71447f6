// Package clustertest is the test suite of package cluster, written against any store so that it runs
// on the in-memory store of the unit tests and on a real etcd alike: Run(t, newBackend). It also has
// Faulty, a store wrapper that injects outages, cut watches and held watches.
package clustertest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/netmgr/netmgr/netmgr/cluster"
	"github.com/netmgr/netmgr/netmgr/ipam"
	"github.com/netmgr/netmgr/netmgr/store"
)

// Backend is one store under test, fresh and empty for one test (for etcd: a key prefix of its own,
// store.WithPrefix, with Compact on the underlying client).
type Backend struct {
	// Open returns another client of the backend (as another host's agent holds); the suite closes it.
	// It must be a store.Leaser.
	Open func(t *testing.T) store.Store
	// Compact compacts the backend's history up to its current revision.
	Compact func(t *testing.T)
	// Advance lets the clock of the backend's leases run d; nil sleeps d (a real etcd).
	Advance func(d time.Duration)
	// TTL is the node lease TTL the tests register with (0: 300 ms; on etcd, a few seconds).
	TTL time.Duration
}

// Run runs every test of the suite as a subtest, each on a backend of its own from newBackend.
func Run(t *testing.T, newBackend func(t *testing.T) Backend) {
	for _, tc := range []struct {
		name string
		fn   func(*env)
	}{
		{"RegisterKeepAliveExpiry", testRegisterKeepAliveExpiry},
		{"DuplicateLiveName", testDuplicateLiveName},
		{"LeaseLostRegistersAgain", testLeaseLost},
		{"NameTakenWhileAway", testNameTakenWhileAway},
		{"SameNameSameSubnet", testSameNameSameSubnet},
		{"ConcurrentLeasesUnique", testConcurrentUnique},
		{"GracePeriodReclaim", testGraceReclaim},
		{"RemoveNode", testRemoveNode},
		{"WatchCompactionAttrs", testWatchCompaction},
		{"StoreErrorsRecovered", testStoreErrors},
		{"Validation", testValidation},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBackend(t)
			if b.TTL == 0 {
				b.TTL = 300 * time.Millisecond
			}
			e := &env{t: t, b: b, ctx: context.Background()}
			e.log = slog.New(slog.NewTextHandler(&testWriter{t: t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
			tc.fn(e)
		})
	}
}

// testWriter logs through t until the test ends (goroutines may still log while they stop).
type testWriter struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
	once sync.Once
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.once.Do(func() {
		w.t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	})
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSpace(string(p)))
	}
	return len(p), nil
}

type env struct {
	t   *testing.T
	b   Backend
	ctx context.Context
	log *slog.Logger
}

// hang is how long a test waits for something before it calls it a hang (never a speed measure).
const hang = 30 * time.Second

func (e *env) open() store.Store {
	s := e.b.Open(e.t)
	e.t.Cleanup(func() { s.Close() })
	return s
}

func (e *env) advance(d time.Duration) {
	if e.b.Advance != nil {
		e.b.Advance(d)
		return
	}
	time.Sleep(d)
}

func (e *env) opts(extra ...cluster.Option) []cluster.Option {
	return append([]cluster.Option{cluster.WithTTL(e.b.TTL), cluster.WithLogger(e.log)}, extra...)
}

func (e *env) register(st store.Store, name string, addr string, opts ...cluster.Option) *cluster.Member {
	e.t.Helper()
	m, err := cluster.Register(e.ctx, st, cluster.Node{Name: name, Address: netip.MustParseAddr(addr)}, e.opts(opts...)...)
	if err != nil {
		e.t.Fatalf("register %s: %v", name, err)
	}
	e.t.Cleanup(m.Close)
	return m
}

// endLease ends a lease now through another client, as if its TTL had passed (an agent dead or cut
// off longer than the TTL).
func (e *env) endLease(id store.LeaseID) {
	e.t.Helper()
	l, err := store.Leases(e.open())
	if err != nil {
		e.t.Fatal(err)
	}
	if err := l.Revoke(e.ctx, id); err != nil {
		e.t.Fatalf("revoke lease %d: %v", id, err)
	}
}

func pool(t *testing.T, cidr string, bits int) ipam.SubnetPool {
	t.Helper()
	p, err := ipam.NewSubnetPool(netip.MustParsePrefix(cidr), bits)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func (e *env) lease(m *cluster.Member, network string, pools ...ipam.SubnetPool) []netip.Prefix {
	e.t.Helper()
	got, err := m.LeaseSubnets(e.ctx, network, pools)
	if err != nil {
		e.t.Fatalf("lease %s of %s: %v", network, m.Node().Name, err)
	}
	return got
}

// watcher reads WatchNodes' snapshots.
type watcher struct {
	e    *env
	ch   <-chan []cluster.Node
	last []cluster.Node
	n    int // snapshots read
}

func (e *env) watch(st store.Store) *watcher {
	ctx, cancel := context.WithCancel(e.ctx)
	e.t.Cleanup(cancel)
	return &watcher{e: e, ch: cluster.WatchNodes(ctx, st, cluster.WithLogger(e.log))}
}

// until reads snapshots until ok holds for one and returns it; it fails the test after a hang.
func (w *watcher) until(what string, ok func([]cluster.Node) bool) []cluster.Node {
	w.e.t.Helper()
	if w.n > 0 && ok(w.last) {
		return w.last
	}
	timeout := time.After(hang)
	for {
		select {
		case nodes, open := <-w.ch:
			if !open {
				w.e.t.Fatalf("%s: watch channel closed", what)
			}
			w.last = nodes
			w.n++
			if ok(nodes) {
				return nodes
			}
		case <-timeout:
			w.e.t.Fatalf("%s: not seen in %v; last set: %s", what, hang, describe(w.last))
		}
	}
}

// names returns a predicate: the set is exactly these nodes.
func names(want ...string) func([]cluster.Node) bool {
	return func(nodes []cluster.Node) bool {
		var got []string
		for _, n := range nodes {
			got = append(got, n.Name)
		}
		return slices.Equal(got, want)
	}
}

func find(nodes []cluster.Node, name string) (cluster.Node, bool) {
	for _, n := range nodes {
		if n.Name == name {
			return n, true
		}
	}
	return cluster.Node{}, false
}

func describe(nodes []cluster.Node) string {
	var parts []string
	for _, n := range nodes {
		parts = append(parts, fmt.Sprintf("%s(%s %v ready=%v %v)", n.Name, n.Address, n.Subnets(), n.Ready, n.Networks))
	}
	return "[" + strings.Join(parts, " ") + "]"
}

func (e *env) eventually(what string, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(hang)
	for !cond() {
		if time.Now().After(deadline) {
			e.t.Fatalf("%s: not after %v", what, hang)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// testRegisterKeepAliveExpiry: a registered node is seen by a watcher on another client, stays alive
// across several TTLs while its goroutine keeps the lease alive, and once its agent stops (Close,
// lease left to expire) it is gone from the watcher's set after the TTL.
func testRegisterKeepAliveExpiry(e *env) {
	f := NewFaulty(e.open())
	m := e.register(f, "a", "198.18.0.1")
	w := e.watch(e.open())
	got := w.until("a registered", names("a"))
	if got[0].Address != netip.MustParseAddr("198.18.0.1") || got[0].Identity == "" {
		e.t.Fatalf("record %s", describe(got))
	}
	lease := m.Lease()
	for i := 0; i < 6; i++ { // 3 TTLs, each half a TTL after a keep-alive
		k := f.Kept.Load()
		e.eventually("a keep-alive", func() bool { return f.Kept.Load() > k })
		e.advance(e.b.TTL / 2)
	}
	if m.Lease() != lease {
		e.t.Fatalf("lease %d became %d: the keep-alive did not keep it", lease, m.Lease())
	}
	if _, err := cluster.GetNode(e.ctx, e.open(), "a"); err != nil {
		e.t.Fatalf("after 3 TTLs kept alive: %v", err)
	}
	m.Close()
	e.advance(e.b.TTL + e.b.TTL/2)
	w.until("a gone after its TTL", names())
	if _, err := cluster.GetNode(e.ctx, e.open(), "a"); !errors.Is(err, cluster.ErrNotFound) {
		e.t.Fatalf("after expiry: %v, want ErrNotFound", err)
	}
}

// testDuplicateLiveName: a name alive under another agent is refused with ErrExists in one line and
// the record is untouched; the same agent (same identity) restarting within the TTL takes it over;
// once the lease has ended, anyone may register the name.
func testDuplicateLiveName(e *env) {
	s1, s2 := e.open(), e.open()
	m := e.register(s1, "a", "198.18.0.1", cluster.WithIdentity("host-a"))
	kv0, err := s1.Get(e.ctx, cluster.KeyNodes+"a")
	if err != nil {
		e.t.Fatal(err)
	}
	f2 := NewFaulty(s2)
	_, err = cluster.Register(e.ctx, f2, cluster.Node{Name: "a", Address: netip.MustParseAddr("198.18.0.2")}, e.opts()...)
	if f2.Grants.Load() != 0 {
		e.t.Errorf("the refused register granted %d leases", f2.Grants.Load())
	}
	want := `already exists: node "a" is alive, registered by another agent (underlay address 198.18.0.1): stop that agent (its record goes within its lease TTL) or choose another node name`
	if !errors.Is(err, cluster.ErrExists) || err.Error() != want {
		e.t.Fatalf("second agent: %v\n want %s", err, want)
	}
	kv1, err := s1.Get(e.ctx, cluster.KeyNodes+"a")
	if err != nil || kv1.Rev != kv0.Rev || string(kv1.Value) != string(kv0.Value) {
		e.t.Fatalf("the refused register changed the record: %v %s -> %s", err, kv0.Value, kv1.Value)
	}
	// The same host's agent, killed and restarted within the TTL, takes its record over.
	m.Close()
	m2 := e.register(s2, "a", "198.18.0.3", cluster.WithIdentity("host-a"))
	n, err := cluster.GetNode(e.ctx, s1, "a")
	if err != nil || n.Address != netip.MustParseAddr("198.18.0.3") {
		e.t.Fatalf("after the takeover: %+v %v", n, err)
	}
	// Once its lease ends, another agent may take the name.
	m2.Close()
	e.endLease(m2.Lease())
	e.register(e.open(), "a", "198.18.0.4")

	// Agents that claim one free name at once, on two clients: exactly one gets it.
	var clients []store.Store
	for range 2 {
		f := NewFaulty(e.open())
		f.SetLatency(time.Millisecond)
		clients = append(clients, f)
	}
	const agents = 8
	errs := make([]error, agents)
	var wg sync.WaitGroup
	for i := range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m, err := cluster.Register(e.ctx, clients[i%2], cluster.Node{Name: "b", Address: netip.AddrFrom4([4]byte{198, 18, 2, byte(i)})}, e.opts()...)
			if err == nil {
				e.t.Cleanup(m.Close)
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	won := 0
	for _, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, cluster.ErrExists):
			e.t.Fatalf("concurrent register: %v", err)
		}
	}
	if won != 1 {
		e.t.Fatalf("%d agents registered node b at once, want 1 (errors %v)", won, errs)
	}
}

// testLeaseLost: a lease that ends under a live agent (an outage longer than the TTL) is granted again
// and the record written again, with the same subnets.
func testLeaseLost(e *env) {
	m := e.register(e.open(), "a", "198.18.0.1")
	subnets := e.lease(m, "pods", pool(e.t, "10.1.0.0/16", 24))
	w := e.watch(e.open())
	w.until("a with its subnet", func(n []cluster.Node) bool {
		return names("a")(n) && slices.Equal(n[0].Subnets(), subnets)
	})
	old := m.Lease()
	e.endLease(old)
	e.eventually("a new lease", func() bool { l := m.Lease(); return l != old && l != store.NoLease })
	got := w.until("a registered again", func(n []cluster.Node) bool {
		_, err := cluster.GetNode(e.ctx, e.open(), "a")
		return err == nil && names("a")(n)
	})
	if !slices.Equal(got[0].Subnets(), subnets) {
		e.t.Fatalf("subnets %v after registering again, want %v", got[0].Subnets(), subnets)
	}
}

// testNameTakenWhileAway: an agent cut off longer than its TTL, whose name another agent registered
// meanwhile, neither takes the record back nor grants leases while that one lives, and registers again
// once it is gone.
func testNameTakenWhileAway(e *env) {
	f := NewFaulty(e.open())
	m1 := e.register(f, "a", "198.18.0.1")
	sa := e.lease(m1, "pods", pool(e.t, "10.1.0.0/16", 24))
	f.SetDown(true)
	e.advance(2 * e.b.TTL) // m1's lease ends
	e.eventually("a's record gone", func() bool {
		_, err := cluster.GetNode(e.ctx, e.open(), "a")
		return errors.Is(err, cluster.ErrNotFound)
	})
	m2 := e.register(e.open(), "a", "198.18.0.2")
	if got := e.lease(m2, "pods", pool(e.t, "10.1.0.0/16", 24)); !slices.Equal(got, sa) {
		e.t.Fatalf("the name's subnet %v, want %v", got, sa)
	}
	grants := f.Grants.Load()
	f.SetDown(false)
	calls := f.Calls.Load()
	e.eventually("m1 tried a few times", func() bool { return f.Calls.Load() > calls+6 })
	n, err := cluster.GetNode(e.ctx, e.open(), "a")
	if err != nil || n.Address != netip.MustParseAddr("198.18.0.2") || f.Grants.Load() != grants || m1.Lease() != store.NoLease {
		e.t.Fatalf("while another agent holds the name: record %+v %v, %d grants, lease %d", n, err, f.Grants.Load()-grants, m1.Lease())
	}
	m2.Close()
	e.endLease(m2.Lease())
	e.eventually("m1 registered again", func() bool {
		n, err := cluster.GetNode(e.ctx, e.open(), "a")
		return err == nil && n.Address == netip.MustParseAddr("198.18.0.1") && slices.Equal(n.Subnets(), sa)
	})
}

// testSameNameSameSubnet: a node back under its name (a new process) gets its subnets again; a free
// hint is honoured; a hint another live node holds is not.
func testSameNameSameSubnet(e *env) {
	v4, v6 := pool(e.t, "10.1.0.0/16", 24), pool(e.t, "fd00:1::/48", 64)
	m1 := e.register(e.open(), "a", "198.18.0.1")
	first := e.lease(m1, "pods", v4, v6)
	if len(first) != 2 || !v4.Contains(first[0]) || !v6.Contains(first[1]) {
		e.t.Fatalf("leased %v", first)
	}
	m1.Close()
	e.endLease(m1.Lease())
	m2 := e.register(e.open(), "a", "198.18.0.1")
	if again := e.lease(m2, "pods", v4, v6); !slices.Equal(again, first) {
		e.t.Fatalf("back under its name: %v, want %v", again, first)
	}
	if n := m2.Node(); !slices.Equal(n.Networks["pods"].Subnets, first) {
		e.t.Fatalf("record %+v", n)
	}
	hint := netip.MustParsePrefix("10.1.77.0/24")
	if hint == first[0] {
		hint = netip.MustParsePrefix("10.1.78.0/24")
	}
	mb := e.register(e.open(), "b", "198.18.0.2")
	if got, err := mb.LeaseSubnets(e.ctx, "pods", []ipam.SubnetPool{v4}, hint); err != nil || !slices.Equal(got, []netip.Prefix{hint}) {
		e.t.Fatalf("free hint: %v %v, want %v", got, err, hint)
	}
	mc := e.register(e.open(), "c", "198.18.0.3")
	got, err := mc.LeaseSubnets(e.ctx, "pods", []ipam.SubnetPool{v4}, first[0])
	if err != nil || got[0] == first[0] || got[0] == hint {
		e.t.Fatalf("hint held by a live node: %v %v", got, err)
	}
	leases, err := cluster.ListSubnets(e.ctx, e.open(), "pods", nil)
	if err != nil {
		e.t.Fatal(err)
	}
	owners := map[netip.Prefix]string{}
	for _, l := range leases {
		owners[l.Subnet] = l.Node
	}
	if len(leases) != 4 || owners[first[0]] != "a" || owners[first[1]] != "a" || owners[hint] != "b" || owners[got[0]] != "c" {
		e.t.Fatalf("leases %+v", leases)
	}
}

// testConcurrentUnique: many nodes on two clients lease at once from a pool with fewer subnets than
// nodes: every subnet goes to one node, the rest get ErrFull and keep nothing (not even the IPv6
// subnet of the pool that had room).
func testConcurrentUnique(e *env) {
	var s []store.Store
	for range 2 {
		f := NewFaulty(e.open())
		f.SetLatency(time.Millisecond) // a store across a network: reads and writes far apart
		s = append(s, f)
	}
	v6, v4 := pool(e.t, "fd00:2::/56", 64), pool(e.t, "10.2.0.0/20", 24) // 256 and 16 subnets
	const n = 24
	type result struct {
		name string
		got  []netip.Prefix
		err  error
	}
	results := make([]result, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("node%02d", i)
			results[i].name = name
			m, err := cluster.Register(e.ctx, s[i%2], cluster.Node{Name: name, Address: netip.AddrFrom4([4]byte{198, 18, 1, byte(i)})}, e.opts()...)
			if err != nil {
				results[i].err = err
				return
			}
			e.t.Cleanup(m.Close)
			results[i].got, results[i].err = m.LeaseSubnets(e.ctx, "pods", []ipam.SubnetPool{v6, v4})
		}()
	}
	wg.Wait()
	holder := map[netip.Prefix]string{}
	full := 0
	for _, r := range results {
		if errors.Is(r.err, cluster.ErrFull) {
			if !strings.Contains(r.err.Error(), "no free /24 left in 10.2.0.0/20 (16 leased") {
				e.t.Errorf("%s: %v", r.name, r.err)
			}
			full++
			continue
		}
		if r.err != nil {
			e.t.Fatalf("%s: %v", r.name, r.err)
		}
		for _, p := range r.got {
			if o, dup := holder[p]; dup {
				e.t.Fatalf("%s leased to %s and %s", p, o, r.name)
			}
			holder[p] = r.name
		}
	}
	if full != n-16 || len(holder) != 32 {
		e.t.Fatalf("%d full, %d subnets leased; want %d full, 32 leased", full, len(holder), n-16)
	}
	leases, err := cluster.ListSubnets(e.ctx, s[0], "pods", nil)
	if err != nil {
		e.t.Fatal(err)
	}
	if len(leases) != 32 {
		e.t.Fatalf("%d leases in the store, want 32 (the full nodes' IPv6 subnets freed): %+v", len(leases), leases)
	}
	for _, l := range leases {
		if holder[l.Subnet] != l.Node {
			e.t.Fatalf("store says %s is %s's, the callers say %s's", l.Subnet, l.Node, holder[l.Subnet])
		}
	}
}

// clock is a test clock for subnet lease timestamps.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

// testGraceReclaim: a dead node's subnet is taken by another node only once the grace period after
// its last renewal is over, and never a live node's however old its renewal.
func testGraceReclaim(e *env) {
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	opts := []cluster.Option{cluster.WithClock(c.now), cluster.WithGrace(time.Hour), cluster.WithRenewInterval(100 * time.Hour)}
	p := pool(e.t, "10.3.0.0/23", 24) // two subnets
	ma := e.register(e.open(), "a", "198.18.0.1", opts...)
	sa := e.lease(ma, "net1", p)
	c.add(time.Minute) // a's lease is the older one: only its being alive keeps it from being taken
	mb := e.register(e.open(), "b", "198.18.0.2", opts...)
	sb := e.lease(mb, "net1", p)
	mb.Close()
	e.endLease(mb.Lease()) // b is dead
	mc := e.register(e.open(), "c", "198.18.0.3", opts...)
	want := `no room: network "net1": no free /24 left in 10.3.0.0/23 (2 leased; a dead node's subnet is reclaimed 1h0m0s after its last renewal, or at once by podctl node rm)`
	if _, err := mc.LeaseSubnets(e.ctx, "net1", []ipam.SubnetPool{p}); !errors.Is(err, cluster.ErrFull) || err.Error() != want {
		e.t.Fatalf("within the grace period: %v\n want %s", err, want)
	}
	c.add(58 * time.Minute)
	if _, err := mc.LeaseSubnets(e.ctx, "net1", []ipam.SubnetPool{p}); !errors.Is(err, cluster.ErrFull) {
		e.t.Fatalf("59 minutes on: %v, want ErrFull", err)
	}
	c.add(2 * time.Minute)
	if got := e.lease(mc, "net1", p); !slices.Equal(got, sb) {
		e.t.Fatalf("after the grace period: %v, want b's %v (a's %v is alive)", got, sb, sa)
	}
	leases, err := cluster.ListSubnets(e.ctx, e.open(), "net1", nil)
	if err != nil || len(leases) != 2 {
		e.t.Fatalf("%+v %v", leases, err)
	}
	for _, l := range leases {
		if (l.Subnet == sa[0]) != (l.Node == "a") || (l.Subnet == sb[0]) != (l.Node == "c") {
			e.t.Fatalf("leases %+v", leases)
		}
	}
	// b comes back too late: its subnet is c's now and a's is alive.
	mb2 := e.register(e.open(), "b", "198.18.0.2", opts...)
	if _, err := mb2.LeaseSubnets(e.ctx, "net1", []ipam.SubnetPool{p}, sb[0]); !errors.Is(err, cluster.ErrFull) {
		e.t.Fatalf("b back after the grace period: %v, want ErrFull", err)
	}
}

// testRemoveNode: RemoveNode of a dead node (its lease not yet expired) removes it from the peers'
// sets at once and frees its subnets; of a live node, the node registers again with its subnets; of
// an unknown name, ErrNotFound.
func testRemoveNode(e *env) {
	p := pool(e.t, "10.4.0.0/16", 24)
	ma := e.register(e.open(), "a", "198.18.0.1")
	sa := e.lease(ma, "pods", p)
	mb := e.register(e.open(), "b", "198.18.0.2")
	sb := e.lease(mb, "pods", p)
	w := e.watch(e.open())
	w.until("a and b", names("a", "b"))
	ma.Close() // dead, its lease not yet expired
	freed, err := cluster.RemoveNode(e.ctx, e.open(), "a")
	if err != nil || len(freed) != 1 || freed[0].Subnet != sa[0] || freed[0].Node != "a" || freed[0].Network != "pods" {
		e.t.Fatalf("remove a: %+v %v", freed, err)
	}
	w.until("a removed", names("b"))
	leases, err := cluster.ListSubnets(e.ctx, e.open(), "", nil)
	if err != nil || len(leases) != 1 || leases[0].Node != "b" {
		e.t.Fatalf("leases after removing a: %+v %v", leases, err)
	}
	if _, err := cluster.RemoveNode(e.ctx, e.open(), "a"); !errors.Is(err, cluster.ErrNotFound) {
		e.t.Fatalf("remove a again: %v", err)
	}
	if _, err := cluster.RemoveNode(e.ctx, e.open(), "a/b"); !errors.Is(err, cluster.ErrInvalid) {
		e.t.Fatalf("bad name: %v", err)
	}
	// A live node removed registers again at its next check, with its subnet.
	if _, err := cluster.RemoveNode(e.ctx, e.open(), "b"); err != nil {
		e.t.Fatal(err)
	}
	w.until("b back with its subnet", func(n []cluster.Node) bool {
		return names("b")(n) && slices.Equal(n[0].Subnets(), sb)
	})
	e.eventually("b's lease back", func() bool {
		l, err := cluster.ListSubnets(e.ctx, e.open(), "", nil)
		return err == nil && len(l) == 1 && l[0].Node == "b" && l[0].Subnet == sb[0]
	})
}

// testWatchCompaction: a watcher whose watch must start again after the history it needs was
// compacted lists again and converges, and sees an attribute change that came with no key added or
// removed (which a diff by key misses), then keys gone and new.
func testWatchCompaction(e *env) {
	s1 := e.open()
	ma := e.register(s1, "a", "198.18.0.1")
	if err := ma.SetAttrs(e.ctx, "ov", map[string]string{"vtep-mac": "02:00:00:00:00:01"}); err != nil {
		e.t.Fatal(err)
	}
	mb := e.register(s1, "b", "198.18.0.2")
	f := NewFaulty(e.open())
	w := e.watch(f)
	mac := func(want string) func([]cluster.Node) bool {
		return func(n []cluster.Node) bool {
			a, ok := find(n, "a")
			return ok && a.Networks["ov"].Attrs["vtep-mac"] == want
		}
	}
	w.until("a and b", func(n []cluster.Node) bool { return names("a", "b")(n) && mac("02:00:00:00:00:01")(n) })
	// cut the watch, hold its restart, change behind its back, compact, let it go
	behind := func(change func()) {
		f.HoldWatches()
		f.CutWatches()
		e.eventually("the watcher listed again and waits to watch", func() bool { return f.Held.Load() == 1 })
		change()
		e.b.Compact(e.t)
		compd := f.Compd.Load()
		f.ReleaseWatches()
		e.eventually("the watch hit the compaction", func() bool { return f.Compd.Load() > compd })
	}
	behind(func() {
		if err := ma.SetAttrs(e.ctx, "ov", map[string]string{"vtep-mac": "02:00:00:00:00:02"}); err != nil {
			e.t.Fatal(err)
		}
	})
	w.until("a's new VTEP MAC after the re-list", func(n []cluster.Node) bool { return names("a", "b")(n) && mac("02:00:00:00:00:02")(n) })
	behind(func() {
		if err := mb.Leave(e.ctx); err != nil {
			e.t.Fatal(err)
		}
		e.register(s1, "c", "198.18.0.3")
		if err := ma.SetReady(e.ctx, true); err != nil {
			e.t.Fatal(err)
		}
	})
	got := w.until("a ready and c, b gone", func(n []cluster.Node) bool {
		a, _ := find(n, "a")
		return names("a", "c")(n) && a.Ready
	})
	want, _, err := cluster.ListNodes(e.ctx, s1, nil)
	if err != nil || describe(got) != describe(want) {
		e.t.Fatalf("watcher %s, store %s (%v)", describe(got), describe(want), err)
	}
}

// testStoreErrors: a store outage shorter than the TTL loses nothing (a change made during it is
// published after it); one longer than the TTL ends the lease, and the node registers again with its
// subnet once the store is back; watchers on the failing client converge too.
func testStoreErrors(e *env) {
	f := NewFaulty(e.open())
	m := e.register(f, "a", "198.18.0.1")
	sa := e.lease(m, "pods", pool(e.t, "10.5.0.0/16", 24))
	w := e.watch(e.open())
	wf := e.watch(f)
	w.until("a", names("a"))
	wf.until("a (failing client)", names("a"))
	lease := m.Lease()

	f.SetDown(true)
	if err := m.SetAttrs(e.ctx, "pods", map[string]string{"k": "v1"}); !errors.Is(err, ErrUnavailable) {
		e.t.Fatalf("publish while down: %v", err)
	}
	f.SetDown(false)
	attr := func(n []cluster.Node) bool { return names("a")(n) && n[0].Networks["pods"].Attrs["k"] == "v1" }
	w.until("the change made while down, published after", attr)
	wf.until("the change, on the failing client's watcher", attr)
	if m.Lease() != lease {
		e.t.Fatalf("a short outage changed the lease")
	}

	f.SetDown(true)
	e.advance(2 * e.b.TTL)
	w.until("a gone: its lease ended during the outage", names())
	f.SetDown(false)
	back := func(n []cluster.Node) bool {
		return names("a")(n) && slices.Equal(n[0].Subnets(), sa) && n[0].Networks["pods"].Attrs["k"] == "v1"
	}
	w.until("a back with its subnet and attributes", back)
	wf.until("a back, on the failing client's watcher", back)
	if l := m.Lease(); l == lease || l == store.NoLease {
		e.t.Fatalf("lease %d after the long outage (was %d)", l, lease)
	}
}

// testValidation: bad input is refused with one clear line and nothing changed.
func testValidation(e *env) {
	st := e.open()
	type plain struct{ store.Store } // a store without leases
	if _, err := cluster.Register(e.ctx, plain{st}, cluster.Node{Name: "a", Address: netip.MustParseAddr("198.18.0.1")}); !errors.Is(err, store.ErrNotSupported) {
		e.t.Errorf("store without leases: %v", err)
	}
	for _, tc := range []struct {
		node cluster.Node
		opts []cluster.Option
		msg  string
	}{
		{cluster.Node{Name: "a/b", Address: netip.MustParseAddr("198.18.0.1")}, nil,
			`invalid argument: node name "a/b" must be 1-63 characters of letters, digits, '_', '.', '-', starting with a letter or digit`},
		{cluster.Node{Name: "a"}, nil, `invalid argument: node "a": no underlay address`},
		{cluster.Node{Name: "a", Address: netip.MustParseAddr("198.18.0.1")}, []cluster.Option{cluster.WithTTL(-time.Second)},
			"invalid argument: node lease TTL -1s: must be positive"},
	} {
		if _, err := cluster.Register(e.ctx, st, tc.node, tc.opts...); !errors.Is(err, cluster.ErrInvalid) || err.Error() != tc.msg {
			e.t.Errorf("%+v: %v\n want %s", tc.node, err, tc.msg)
		}
	}
	if kvs, _, err := st.List(e.ctx, "cluster/"); err != nil || len(kvs) != 0 {
		e.t.Fatalf("refused registers left %v %v", kvs, err)
	}
	m := e.register(st, "a", "198.18.0.1")
	cidr := netip.MustParsePrefix("10.6.0.0/24")
	for _, tc := range []struct {
		pools []ipam.SubnetPool
		msg   string
	}{
		{[]ipam.SubnetPool{{CIDR: cidr, Bits: 24}}, `invalid argument: network "pods": node prefix /24 leaves 1 node subnet in the cluster CIDR 10.6.0.0/24, fewer than 2: it must be longer than /24`},
		{[]ipam.SubnetPool{{CIDR: cidr, Bits: 16}}, `invalid argument: network "pods": node prefix /16 is larger than the cluster CIDR 10.6.0.0/24: it must be longer than /24`},
		{[]ipam.SubnetPool{{CIDR: cidr, Bits: 26}, {CIDR: netip.MustParsePrefix("10.7.0.0/24"), Bits: 26}}, `invalid argument: network "pods": two pools of one address family ([{10.6.0.0/24 26} {10.7.0.0/24 26}])`},
	} {
		if _, err := m.LeaseSubnets(e.ctx, "pods", tc.pools); !errors.Is(err, cluster.ErrInvalid) || err.Error() != tc.msg {
			e.t.Errorf("%v: %v\n want %s", tc.pools, err, tc.msg)
		}
	}
	if l, err := cluster.ListSubnets(e.ctx, st, "", nil); err != nil || len(l) != 0 {
		e.t.Fatalf("refused leases left %+v %v", l, err)
	}
}
