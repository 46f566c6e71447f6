package dns_test

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr/dns"
	"github.com/netmgr/netmgr/netmgr/store"
	"github.com/netmgr/netmgr/netmgr/store/etcd"
)

// fakeHosts is a local HostSource the test changes.
type fakeHosts struct {
	mu    sync.Mutex
	nets  []dns.Net
	hosts []dns.Host
}

func (f *fakeHosts) Hosts(context.Context) ([]dns.Net, []dns.Host, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.nets, slices.Clone(f.hosts), nil
}

func (f *fakeHosts) set(hosts ...dns.Host) {
	f.mu.Lock()
	f.hosts = hosts
	f.mu.Unlock()
}

// namesOn is what src answers for on network: name -> addresses.
func namesOn(t *testing.T, src dns.HostSource, network string) map[string][]netip.Addr {
	t.Helper()
	_, hosts, err := src.Hosts(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]netip.Addr{}
	for _, h := range hosts {
		if a := h.Addrs[network]; len(a) > 0 {
			out[h.Name] = append(out[h.Name], a...)
		}
	}
	return out
}

// waitNames polls src (each read also publishes its node's records) until cond holds.
func waitNames(t *testing.T, what string, cond func() bool, srcs ...dns.HostSource) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after 10 s", what)
		}
		for _, s := range srcs {
			_, _, _ = s.Hosts(context.Background())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Two nodes' ClusterHosts on a real etcd: a node's sandboxes on a network that spans nodes reach the
// other node, its addresses on a node-local network do not; a removed sandbox goes; the records
// go with the node's lease and come back when the node publishes with a new one.
func TestClusterHosts(t *testing.T) {
	testutil.RequireEtcd(t)
	e := testutil.StartEtcd(t, testutil.EtcdOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	open := func() *etcd.Store {
		s, err := etcd.New(ctx, etcd.Options{Endpoints: []string{e.Endpoint}, Prefix: "/t/", Dialer: e.Dial})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	sa, sb := open(), open()
	la, _ := store.Leases(sa)
	lease1, err := la.Grant(ctx, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var leaseA atomic.Int64
	leaseA.Store(int64(lease1))
	lb, _ := store.Leases(sb)
	leaseB, err := lb.Grant(ctx, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}

	ov, br := netip.MustParseAddr("10.244.1.2"), netip.MustParseAddr("10.88.0.2")
	nets := []dns.Net{{Name: "ov", Spans: true, Gateways: []netip.Addr{netip.MustParseAddr("10.244.1.1")}},
		{Name: "br", Gateways: []netip.Addr{netip.MustParseAddr("10.88.0.1")}}}
	locA := &fakeHosts{nets: nets}
	locA.set(dns.Host{Name: "web", Aliases: []string{"www"}, Addrs: map[string][]netip.Addr{"ov": {ov}, "br": {br}}},
		dns.Host{Name: "only-local", Addrs: map[string][]netip.Addr{"br": {netip.MustParseAddr("10.88.0.3")}}})
	locB := &fakeHosts{nets: nets}
	locB.set(dns.Host{Name: "client", Addrs: map[string][]netip.Addr{"ov": {netip.MustParseAddr("10.244.2.2")}}})
	a := dns.NewClusterHosts(ctx, locA, sa, "a", func() store.LeaseID { return store.LeaseID(leaseA.Load()) }, testutil.Logger(t))
	b := dns.NewClusterHosts(ctx, locB, sb, "b", func() store.LeaseID { return leaseB }, testutil.Logger(t))

	waitNames(t, "web on b", func() bool { return len(namesOn(t, b, "ov")["web"]) > 0 }, a, b)
	if got := namesOn(t, b, "ov"); !slices.Equal(got["web"], []netip.Addr{ov}) || len(got) != 2 {
		t.Errorf("b's names on ov: %v, want its client and a's web at %s", got, ov)
	}
	if got := namesOn(t, b, "br"); len(got) != 0 {
		t.Errorf("b's names on its node-local br: %v, want none of a's (a node-local network is the node's own)", got)
	}
	// What a published: web with its address on ov only; only-local (no spanning network) not at all.
	kvs, _, err := sa.List(ctx, dns.KeyHosts)
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range kvs {
		switch kv.Key {
		case dns.HostKey("a", "web"):
			if want := `{"node":"a","name":"web","aliases":["www"],"addrs":{"ov":["10.244.1.2"]}}`; string(kv.Value) != want {
				t.Errorf("a's record of web: %s, want %s", kv.Value, want)
			}
		case dns.HostKey("b", "client"):
		default:
			t.Errorf("unexpected record %s: %s", kv.Key, kv.Value)
		}
	}
	_, hosts, _ := b.Hosts(ctx)
	for _, h := range hosts {
		if h.Name == "web" && !slices.Equal(h.Aliases, []string{"www"}) {
			t.Errorf("web's aliases on b: %v", h.Aliases)
		}
	}
	waitNames(t, "client on a", func() bool { return len(namesOn(t, a, "ov")["client"]) > 0 }, a, b)
	if got := namesOn(t, a, "ov"); !slices.Equal(got["web"], []netip.Addr{ov}) {
		t.Errorf("a's own web: %v (its own records must not come back twice from the store)", got["web"])
	}

	// A sandbox removed on a goes from b.
	locA.set()
	waitNames(t, "web gone from b", func() bool { return len(namesOn(t, b, "ov")["web"]) == 0 }, a, b)

	// a's lease ends (the node died): its records go; a new lease (registered again) brings them back.
	locA.set(dns.Host{Name: "web", Addrs: map[string][]netip.Addr{"ov": {ov}}})
	waitNames(t, "web back on b", func() bool { return len(namesOn(t, b, "ov")["web"]) > 0 }, a, b)
	if err := la.Revoke(ctx, lease1); err != nil {
		t.Fatal(err)
	}
	waitNames(t, "web gone with a's lease", func() bool { return len(namesOn(t, b, "ov")["web"]) == 0 }, b)
	lease2, err := la.Grant(ctx, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	leaseA.Store(int64(lease2))
	waitNames(t, "web published again with a's new lease", func() bool { return len(namesOn(t, b, "ov")["web"]) > 0 }, a, b)
}
