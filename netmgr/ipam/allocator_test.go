package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/netmgr/netmgr/netmgr/store"
)

// fakeKeys is a key list in memory: the allocations a store holds, with a commit that checks the
// compares the way a store transaction does.
type fakeKeys struct {
	mu    sync.Mutex
	kv    map[string][]byte
	lists int
}

func newFakeKeys(keys ...string) *fakeKeys {
	f := &fakeKeys{kv: map[string][]byte{}}
	for _, k := range keys {
		f.kv[k] = []byte("someone")
	}
	return f
}

func (f *fakeKeys) List(_ context.Context, prefix string) ([]store.KV, int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lists++
	var out []store.KV
	for k, v := range f.kv {
		if strings.HasPrefix(k, prefix) {
			out = append(out, store.KV{Key: k, Value: v, Rev: 1})
		}
	}
	return out, 1, nil
}

func (f *fakeKeys) commit(a *Allocation) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range a.Cmps {
		if _, ok := f.kv[c.Key]; ok != (c.Rev != 0) {
			return store.ErrConflict
		}
	}
	for _, op := range a.Ops {
		f.kv[op.Key] = op.Value
	}
	return nil
}

func pool(t *testing.T, subnet, gw string) Pool {
	t.Helper()
	var g netip.Addr
	if gw != "" {
		g = netip.MustParseAddr(gw)
	}
	p, err := NewPool(netip.MustParsePrefix(subnet), g)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func addrs(a *Allocation) []string {
	var out []string
	for _, p := range a.Addrs {
		out = append(out, p.String())
	}
	return out
}

// TestAllocatorSequential: each allocation takes the next free address after the last one chosen, and
// the allocation carries the key, an Absent compare and a Put of the owner for it.
func TestAllocatorSequential(t *testing.T) {
	ctx := context.Background()
	keys := newFakeKeys()
	al := NewAllocator()
	req := Request{Name: `network "n"`, Prefix: "ipam/n/", Pools: []Pool{pool(t, "10.1.0.0/24", "")}, Owner: []byte("sb")}
	var got []string
	for i := 0; i < 3; i++ {
		a, err := al.Allocate(ctx, keys, req)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, addrs(a)...)
		k := "ipam/n/" + a.Addrs[0].Addr().String()
		if !slices.Equal(a.Keys, []string{k}) || len(a.Cmps) != 1 || a.Cmps[0] != store.Absent(k) ||
			len(a.Ops) != 1 || a.Ops[0].Key != k || string(a.Ops[0].Value) != "sb" || a.Ops[0].Delete {
			t.Fatalf("allocation %+v", a)
		}
		if err := keys.commit(a); err != nil {
			t.Fatal(err)
		}
		al.Release(a.Keys...)
	}
	if want := []string{"10.1.0.2/24", "10.1.0.3/24", "10.1.0.4/24"}; !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if keys.lists != 3 {
		t.Errorf("%d lists for 3 allocations, want one each", keys.lists)
	}
	// Freeing an address does not hand it out again at once: the cursor moves on.
	delete(keys.kv, "ipam/n/10.1.0.3")
	a, err := al.Allocate(ctx, keys, req)
	if err != nil || a.Addrs[0].String() != "10.1.0.5/24" {
		t.Fatalf("after a free: %v %v, want 10.1.0.5/24", a, err)
	}
}

// TestAllocatorStartsAfterHighest: a fresh process (no cursor) starts after the highest recorded
// address of each family, not at a hole a delete left.
func TestAllocatorStartsAfterHighest(t *testing.T) {
	keys := newFakeKeys("ipam/n/10.1.0.2", "ipam/n/10.1.0.7", "ipam/n/fd00:1::9", "ipam/other/10.1.0.50")
	req := Request{Name: `network "n"`, Prefix: "ipam/n/", Pools: []Pool{pool(t, "10.1.0.0/24", ""), pool(t, "fd00:1::/64", "")}}
	a, err := NewAllocator().Allocate(context.Background(), keys, req)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := addrs(a), []string{"10.1.0.8/24", "fd00:1::a/64"}; !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

// TestAllocatorWrapAround: past the end of the subnet the search wraps to its start, skipping the
// network, gateway, broadcast, reserved and taken addresses.
func TestAllocatorWrapAround(t *testing.T) {
	ctx := context.Background()
	keys := newFakeKeys("ipam/n/10.1.0.6", "ipam/n/10.1.0.2")
	req := Request{Name: `network "n"`, Prefix: "ipam/n/", Pools: []Pool{pool(t, "10.1.0.0/29", "")},
		Reserved: map[netip.Addr]bool{netip.MustParseAddr("10.1.0.3"): true}}
	al := NewAllocator()
	a, err := al.Allocate(ctx, keys, req) // after the highest, .6: .7 is broadcast, wrap: .1 gw, .2 taken, .3 reserved
	if err != nil || a.Addrs[0].String() != "10.1.0.4/29" {
		t.Fatalf("got %v %v, want 10.1.0.4/29", a, err)
	}
	keys.commit(a)
	al.Release(a.Keys...)
	a, err = al.Allocate(ctx, keys, req)
	if err != nil || a.Addrs[0].String() != "10.1.0.5/29" {
		t.Fatalf("got %v %v, want 10.1.0.5/29", a, err)
	}
}

// TestAllocatorExhausted: a full pool is ErrExhausted (netmgr reports it as ErrFull), and nothing
// stays pending from a request whose other pool did have room.
func TestAllocatorExhausted(t *testing.T) {
	ctx := context.Background()
	keys := newFakeKeys("ipam/n/10.1.0.2")
	al := NewAllocator()
	req := Request{Name: `network "n"`, Prefix: "ipam/n/", Pools: []Pool{pool(t, "fd00:1::/64", ""), pool(t, "10.1.0.0/30", "")}}
	_, err := al.Allocate(ctx, keys, req)
	if !errors.Is(err, ErrExhausted) || err.Error() != "address pool exhausted: 10.1.0.0/30" {
		t.Fatalf("full pool: %v, want ErrExhausted", err)
	}
	if len(al.pending) != 0 {
		t.Fatalf("pending after a failed allocation: %v", al.pending)
	}
	// The IPv6 address chosen before the failure is free for the next request.
	req.Pools = req.Pools[:1]
	a, err := al.Allocate(ctx, keys, req)
	if err != nil || a.Addrs[0].String() != "fd00:1::3/64" {
		t.Fatalf("got %v %v, want fd00:1::3/64 (the cursor moved past ::2, which is free again)", a, err)
	}
}

// TestAllocatorStatic: static requests are checked against the pool, its gateway, reserved, recorded
// and pending addresses, with the messages and error classes netmgr has always reported.
func TestAllocatorStatic(t *testing.T) {
	ctx := context.Background()
	keys := newFakeKeys("ipam/n/10.2.0.9")
	al := NewAllocator()
	held, err := al.Allocate(ctx, keys, Request{Prefix: "ipam/n/", Pools: []Pool{pool(t, "10.2.0.0/24", "10.2.0.254")},
		Static: []netip.Addr{netip.MustParseAddr("10.2.0.11")}})
	if err != nil {
		t.Fatal(err)
	}
	pools := []Pool{pool(t, "10.2.0.0/24", "10.2.0.254"), pool(t, "fd00:2::/64", "")}
	for _, tc := range []struct {
		static []string
		pools  []Pool
		want   error
		msg    string
	}{
		{[]string{"10.2.0.10"}, pools, nil, ""},
		{[]string{"10.2.0.10", "fd00:2::10"}, pools, nil, ""},
		{[]string{"fd00:2::ffff"}, pools, nil, ""},
		{[]string{"10.2.1.10"}, pools, ErrOutOfRange, "address outside subnet: 10.2.1.10 is not a host address of 10.2.0.0/24"},
		{[]string{"10.2.0.0"}, pools, ErrOutOfRange, "address outside subnet: 10.2.0.0 is not a host address of 10.2.0.0/24"},
		{[]string{"10.2.0.255"}, pools, ErrOutOfRange, "address outside subnet: 10.2.0.255 is not a host address of 10.2.0.0/24"},
		{[]string{"fd00:2::"}, pools, ErrOutOfRange, "address outside subnet: fd00:2:: is not a host address of fd00:2::/64"},
		{[]string{"fd00:3::5"}, pools, ErrOutOfRange, "address outside subnet: fd00:3::5 is not a host address of fd00:2::/64"},
		{[]string{"10.2.0.254"}, pools, ErrTaken, "address already in use: 10.2.0.254 is the gateway of 10.2.0.0/24"},
		{[]string{"fd00:2::1"}, pools, ErrTaken, "address already in use: fd00:2::1 is the gateway of fd00:2::/64"},
		{[]string{"10.2.0.9"}, pools, ErrTaken, "address already in use: 10.2.0.9"},
		{[]string{"10.2.0.11"}, pools, ErrTaken, "address already in use: 10.2.0.11"}, // pending
		{[]string{"10.2.0.7"}, pools, ErrTaken, "address already in use: 10.2.0.7"},   // reserved
		{[]string{"10.2.0.5", "10.2.0.6"}, pools, ErrInvalid, "10.2.0.5 and 10.2.0.6: at most one static address per family"},
		{[]string{"fd00:2::5"}, pools[:1], ErrInvalid, `fd00:2::5 is not in any subnet of network "n" ([10.2.0.0/24])`},
	} {
		var static []netip.Addr
		for _, s := range tc.static {
			static = append(static, netip.MustParseAddr(s))
		}
		req := Request{Name: `network "n"`, Prefix: "ipam/n/", Pools: tc.pools, Static: static,
			Reserved: map[netip.Addr]bool{netip.MustParseAddr("10.2.0.7"): true}}
		a, err := al.Allocate(ctx, keys, req)
		if tc.want == nil {
			if err != nil {
				t.Errorf("%v: %v", tc.static, err)
				continue
			}
			if len(a.Addrs) != len(tc.pools) {
				t.Errorf("%v: got %v, want one address per pool", tc.static, addrs(a))
			}
			for _, s := range static {
				if !slices.ContainsFunc(a.Addrs, func(p netip.Prefix) bool { return p.Addr() == s }) {
					t.Errorf("%v: got %v", tc.static, addrs(a))
				}
			}
			al.Release(a.Keys...)
			continue
		}
		if !errors.Is(err, tc.want) || err.Error() != tc.msg {
			t.Errorf("%v: %v, want %v %q", tc.static, err, tc.want, tc.msg)
		}
	}
	al.Release(held.Keys...)
	if len(al.pending) != 0 {
		t.Fatalf("pending left: %v", al.pending)
	}
}

// TestAllocatorIPv6: an IPv6 pool starts after its gateway, and a huge pool does not walk its size.
func TestAllocatorIPv6(t *testing.T) {
	ctx := context.Background()
	keys := newFakeKeys()
	al := NewAllocator()
	req := Request{Prefix: "ipam/v6/", Pools: []Pool{pool(t, "fd00:6::/48", "")}}
	var got []string
	for i := 0; i < 2; i++ {
		a, err := al.Allocate(ctx, keys, req)
		if err != nil {
			t.Fatal(err)
		}
		keys.commit(a)
		al.Release(a.Keys...)
		got = append(got, addrs(a)...)
	}
	if want := []string{"fd00:6::2/48", "fd00:6::3/48"}; !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if _, ok := keys.kv["ipam/v6/fd00:6::3"]; !ok {
		t.Fatalf("keys %v", keys.kv)
	}
}

// TestAllocatorPendingConcurrent: goroutines that allocate at once from one list of keys, none of them
// committed yet, each get a different address; once the cursor wraps, the pending set is what tells
// them apart, so a full pool of pending addresses is exhausted, not handed out twice.
func TestAllocatorPendingConcurrent(t *testing.T) {
	p4 := pool(t, "10.3.0.0/26", "")
	n := p4.Size()
	keys := newFakeKeys()
	al := NewAllocator()
	req := Request{Prefix: "ipam/n/", Pools: []Pool{p4, pool(t, "fd00:3::/64", "")}}
	var wg sync.WaitGroup
	got := make([]*Allocation, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], errs[i] = al.Allocate(context.Background(), keys, req)
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	for i := range n {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		for _, k := range got[i].Keys {
			if seen[k] {
				t.Fatalf("%s chosen twice", k)
			}
			seen[k] = true
		}
	}
	if len(seen) != 2*n || len(al.pending) != 2*n {
		t.Fatalf("%d keys, %d pending, want %d", len(seen), len(al.pending), 2*n)
	}
	v4 := Request{Prefix: "ipam/n/", Pools: []Pool{p4}}
	if a, err := al.Allocate(context.Background(), keys, v4); !errors.Is(err, ErrExhausted) {
		t.Fatalf("every address pending: got %v %v, want ErrExhausted", a, err)
	}
	freed := got[n/2].Keys[0]
	al.Release(freed)
	a, err := al.Allocate(context.Background(), keys, v4)
	if err != nil || a.Keys[0] != freed {
		t.Fatalf("after releasing %s: got %v %v", freed, a, err)
	}
}

// TestAllocatorConcurrentCommits: goroutines that allocate, commit with the allocation's compares and
// release, retrying on a conflict as netmgr does, fill a pool exactly with no address twice.
func TestAllocatorConcurrentCommits(t *testing.T) {
	keys := newFakeKeys()
	al := NewAllocator()
	p := pool(t, "10.4.0.0/26", "")
	req := Request{Prefix: "ipam/n/", Pools: []Pool{p}}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var got []string
	errc := make(chan error, p.Size())
	for range p.Size() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for attempt := 0; ; attempt++ {
				a, err := al.Allocate(context.Background(), keys, req)
				if err != nil {
					errc <- err
					return
				}
				err = keys.commit(a)
				al.Release(a.Keys...)
				if err == nil {
					mu.Lock()
					got = append(got, a.Keys...)
					mu.Unlock()
					return
				}
				if !errors.Is(err, store.ErrConflict) || attempt > 1000 {
					errc <- fmt.Errorf("attempt %d: %w", attempt, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	slices.Sort(got)
	if len(slices.Compact(got)) != p.Size() || len(keys.kv) != p.Size() {
		t.Fatalf("%d distinct keys, %d in the store, want %d", len(got), len(keys.kv), p.Size())
	}
	if _, err := al.Allocate(context.Background(), keys, req); !errors.Is(err, ErrExhausted) {
		t.Fatalf("full pool: %v", err)
	}
}
