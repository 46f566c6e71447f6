package netmgr_test

import (
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/netmgr/netmgr/drivers"
	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/store"
	"github.com/netmgr/netmgr/sandbox"
)

// joinBridge is a driver whose networks span nodes (drivers.Joiner): each node that joins gets a
// bridge for its own subnet, made by the bridge driver. It stands in for overlay and routed in the
// tests of the Manager's side of joining; the drivers test their own plumbing.
type joinBridge struct {
	drivers.Driver // the bridge driver
	mu             sync.Mutex
	peers          map[string][]drivers.NodeView // network -> last SyncPeers
	joins          int
}

func (d *joinBridge) Join(ctx context.Context, n *drivers.Network, node *drivers.NodeView) error {
	d.mu.Lock()
	d.joins++
	d.mu.Unlock()
	node.Attrs = map[string]string{"seen": node.Node}
	return d.Driver.CreateNetwork(ctx, onNode(n, *node))
}

// onNode is n with the node's subnets and gateways, as the bridge driver wants them.
func onNode(n *drivers.Network, node drivers.NodeView) *drivers.Network {
	c := *n
	c.Subnets, c.Gateways = node.Subnets, node.Gateways
	return &c
}

func (d *joinBridge) Leave(ctx context.Context, n *drivers.Network, node drivers.NodeView) error {
	return d.Driver.DeleteNetwork(ctx, onNode(n, node))
}

func (d *joinBridge) SyncPeers(ctx context.Context, n *drivers.Network, self drivers.NodeView, peers []drivers.NodeView) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.peers == nil {
		d.peers = map[string][]drivers.NodeView{}
	}
	d.peers[n.Name] = peers
	return nil
}

// clusterStore is a bolt file shared by the test's nodes that claims leases (never used here), so
// that the Manager takes it for a cluster store; down makes every call fail as an unreachable etcd's.
type clusterStore struct {
	*store.Bolt
	down  atomic.Bool
	calls atomic.Int64
}

var errUnreachable = errors.New("cluster store unreachable")

func (s *clusterStore) Get(ctx context.Context, key string) (store.KV, error) {
	s.calls.Add(1)
	if s.down.Load() {
		return store.KV{}, errUnreachable
	}
	return s.Bolt.Get(ctx, key)
}

func (s *clusterStore) List(ctx context.Context, prefix string) ([]store.KV, int64, error) {
	s.calls.Add(1)
	if s.down.Load() {
		return nil, 0, errUnreachable
	}
	return s.Bolt.List(ctx, prefix)
}

func (s *clusterStore) Txn(ctx context.Context, cmps []store.Cmp, ops []store.Op) error {
	s.calls.Add(1)
	if s.down.Load() {
		return errUnreachable
	}
	return s.Bolt.Txn(ctx, cmps, ops)
}

func (s *clusterStore) Grant(context.Context, time.Duration) (store.LeaseID, error) {
	return 0, store.ErrNotSupported
}
func (s *clusterStore) KeepAlive(context.Context, store.LeaseID) error { return store.ErrNotSupported }
func (s *clusterStore) Revoke(context.Context, store.LeaseID) error    { return store.ErrNotSupported }

type joinNode struct {
	m    *netmgr.Manager
	host *sandbox.NetNS
	drv  *joinBridge
}

func newJoinNode(t *testing.T, node string, cs store.Store) *joinNode {
	t.Helper()
	ctx := context.Background()
	host := testutil.NewNS(t, "host-"+node)
	rt, err := netmgr.OpenRuntimeStore(ctx, filepath.Join(t.TempDir(), "runtime.db"))
	if err != nil {
		t.Fatal(err)
	}
	jn := &joinNode{host: host}
	m, err := netmgr.New(ctx, netmgr.WithNode(node), netmgr.WithStores(cs, rt),
		netmgr.WithStateDir(t.TempDir()), netmgr.WithRunDir(t.TempDir()), netmgr.WithHostNetNS(host.Path()),
		netmgr.WithDriver("joinbridge", func(env drivers.Env) (drivers.Driver, error) {
			f, _ := drivers.Lookup("bridge")
			b, err := f(env)
			jn.drv = &joinBridge{Driver: b}
			return jn.drv, err
		}))
	if err != nil {
		t.Fatal(err)
	}
	jn.m = m
	t.Cleanup(func() {
		ctx := context.Background()
		sbs, _ := m.Sandboxes(ctx)
		for _, s := range sbs {
			if err := m.DeleteSandbox(ctx, s.Name); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
		js, _ := m.JoinedNetworks(ctx)
		for _, j := range js {
			if err := m.LeaveNetwork(ctx, j.Network, true); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
		m.Close()
		rt.Close()
	})
	return jn
}

func view(node, subnet string) drivers.NodeView {
	sn := netip.MustParsePrefix(subnet)
	return drivers.NodeView{Node: node, Subnets: []netip.Prefix{sn}, Gateways: []netip.Addr{sn.Addr().Next()}}
}

// A network that spans nodes needs a cluster store: on a host's own bolt file it is refused, and
// nothing is recorded.
func TestSpanningNetworkNeedsClusterStore(t *testing.T) {
	testutil.RequireNetAdmin(t)
	ctx := context.Background()
	host := testutil.NewNS(t, "host")
	m, err := netmgr.New(ctx, netmgr.WithStateDir(t.TempDir()), netmgr.WithRunDir(t.TempDir()), netmgr.WithHostNetNS(host.Path()),
		netmgr.WithDriver("joinbridge", func(env drivers.Env) (drivers.Driver, error) {
			f, _ := drivers.Lookup("bridge")
			b, err := f(env)
			return &joinBridge{Driver: b}, err
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	_, err = m.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "ov", Driver: "joinbridge", Subnets: []netip.Prefix{netip.MustParsePrefix("10.60.0.0/16")}})
	if !errors.Is(err, netmgr.ErrInvalid) {
		t.Fatalf("create on a bolt store: %v, want ErrInvalid", err)
	}
	t.Log(err)
	if nets, _ := m.Networks(ctx); len(nets) != 0 {
		t.Fatalf("refused create recorded %v", nets)
	}
}

// A network that spans nodes is one record in the cluster store and has no plumbing anywhere until a
// node joins it; each node allocates its sandboxes' addresses from its own subnet, in its own runtime
// state, and a sandbox create on a joined network reads nothing from the cluster store: it works while
// that store is down.
func TestJoinedNetwork(t *testing.T) {
	testutil.RequireNetAdmin(t)
	ctx := context.Background()
	b, err := store.OpenBolt(filepath.Join(t.TempDir(), "cluster.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	cs := &clusterStore{Bolt: b}
	a, bn := newJoinNode(t, "a", cs), newJoinNode(t, "b", cs)

	cidr := netip.MustParsePrefix("10.60.0.0/16")
	if _, err := a.m.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "ov", Driver: "joinbridge", Subnets: []netip.Prefix{cidr},
		Gateways: []netip.Addr{netip.MustParseAddr("10.60.0.1")}}); !errors.Is(err, netmgr.ErrInvalid) {
		t.Fatalf("a gateway for a cluster CIDR: %v, want ErrInvalid", err)
	}
	n, err := a.m.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "ov", Driver: "joinbridge", Subnets: []netip.Prefix{cidr}})
	if err != nil {
		t.Fatal(err)
	}
	if len(n.Gateways) != 0 || n.Node != "" || n.Scope != "global" {
		t.Fatalf("cluster network: gateways %v node %q, want none", n.Gateways, n.Node)
	}
	if brs := bridgesIn(t, a.host); len(brs) != 0 {
		t.Fatalf("create plumbed %v before any node joined", brs)
	}
	if _, err := a.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "early", Networks: []netmgr.AttachSpec{{Network: "ov"}}}); !errors.Is(err, netmgr.ErrNotFound) {
		t.Fatalf("sandbox before join: %v, want ErrNotFound", err)
	} else {
		t.Log(err)
	}
	if _, err := a.m.JoinNetwork(ctx, "ov", view("a", "10.61.0.0/24")); !errors.Is(err, netmgr.ErrInvalid) {
		t.Fatalf("join with a subnet outside the CIDR: %v, want ErrInvalid", err)
	}
	if _, err := a.m.JoinNetwork(ctx, "ov", view("b", "10.60.1.0/24")); !errors.Is(err, netmgr.ErrInvalid) {
		t.Fatalf("join with another node's view: %v, want ErrInvalid", err)
	}
	ja, err := a.m.JoinNetwork(ctx, "ov", view("a", "10.60.1.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	if ja.View.Attrs["seen"] != "a" {
		t.Fatalf("attrs the driver published: %v", ja.View.Attrs)
	}
	if _, err := bn.m.JoinNetwork(ctx, "ov", view("b", "10.60.2.0/24")); err != nil {
		t.Fatal(err)
	}
	if brs := bridgesIn(t, a.host); len(brs) != 1 {
		t.Fatalf("node a bridges after join: %v", brs)
	}

	// The cluster store goes away: sandboxes are still created and deleted on joined networks.
	cs.down.Store(true)
	before := cs.calls.Load()
	sa, err := a.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "p", Networks: []netmgr.AttachSpec{{Network: "ov"}}})
	if err != nil {
		t.Fatalf("create with the cluster store down: %v", err)
	}
	sb, err := bn.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "p", Networks: []netmgr.AttachSpec{{Network: "ov"}}})
	if err != nil {
		t.Fatalf("create with the cluster store down: %v", err)
	}
	if n := cs.calls.Load() - before; n != 0 {
		t.Errorf("sandbox creates made %d cluster store calls, want 0", n)
	}
	if got := sa.Attachments[0].Addrs[0]; !netip.MustParsePrefix("10.60.1.0/24").Contains(got.Addr()) || got.Bits() != 24 {
		t.Errorf("node a sandbox address %v, want one of 10.60.1.0/24", got)
	}
	if got := sb.Attachments[0].Addrs[0]; !netip.MustParsePrefix("10.60.2.0/24").Contains(got.Addr()) {
		t.Errorf("node b sandbox address %v, want one of 10.60.2.0/24", got)
	}
	if gw := sa.Attachments[0].Gateways; len(gw) != 1 || gw[0] != netip.MustParseAddr("10.60.1.1") {
		t.Errorf("node a sandbox gateways %v, want the node gateway 10.60.1.1", gw)
	}
	ns, err := sandbox.Open(sa.NetNS)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := testutil.Ping(ns, "10.60.1.1"); err != nil {
		t.Errorf("sandbox to its node gateway: %v", err)
	}
	cs.down.Store(false)

	// Peers: the Manager hands the driver the other nodes, never itself.
	if err := a.m.SyncPeers(ctx, "ov", []drivers.NodeView{view("a", "10.60.1.0/24"), view("b", "10.60.2.0/24")}); err != nil {
		t.Fatal(err)
	}
	a.drv.mu.Lock()
	got := a.drv.peers["ov"]
	a.drv.mu.Unlock()
	if len(got) != 1 || got[0].Node != "b" {
		t.Fatalf("peers given to the driver: %+v, want only b", got)
	}

	// A changed view of a network in use is refused; leaving it in use is refused unless forced.
	if _, err := a.m.JoinNetwork(ctx, "ov", view("a", "10.60.3.0/24")); !errors.Is(err, netmgr.ErrInUse) {
		t.Fatalf("changed view in use: %v, want ErrInUse", err)
	}
	if err := a.m.LeaveNetwork(ctx, "ov", false); !errors.Is(err, netmgr.ErrInUse) {
		t.Fatalf("leave in use: %v, want ErrInUse", err)
	}
	for _, nd := range []*joinNode{a, bn} {
		if err := nd.m.DeleteSandbox(ctx, "p"); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.m.LeaveNetwork(ctx, "ov", false); err != nil {
		t.Fatal(err)
	}
	if err := a.m.LeaveNetwork(ctx, "ov", false); err != nil {
		t.Fatalf("second leave: %v", err)
	}
	if brs := bridgesIn(t, a.host); len(brs) != 0 {
		t.Fatalf("node a bridges after leave: %v", brs)
	}
	if err := bn.m.DeleteNetwork(ctx, "ov"); err != nil {
		t.Fatal(err)
	}
	if brs := bridgesIn(t, bn.host); len(brs) != 0 {
		t.Fatalf("node b bridges after delete: %v", brs)
	}
	if js, _ := bn.m.JoinedNetworks(ctx); len(js) != 0 {
		t.Fatalf("node b still carries %v after the delete", js)
	}
}

// bridgesIn lists the bridges in ns.
func bridgesIn(t *testing.T, ns *sandbox.NetNS) []string {
	t.Helper()
	h, err := ns.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range links {
		if l.Type() == "bridge" {
			out = append(out, l.Attrs().Name)
		}
	}
	return out
}
