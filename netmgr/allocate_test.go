package netmgr

import (
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"

	"github.com/netmgr/netmgr/drivers"
	"github.com/netmgr/netmgr/netmgr/ipam"
	"github.com/netmgr/netmgr/netmgr/store"
)

// allocManager is a Manager with only what allocate uses: a runtime store and the allocator. No root.
func allocManager(t *testing.T) *Manager {
	t.Helper()
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "rt.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return &Manager{rt: st, drivers: map[string]drivers.Driver{}, ipam: ipam.NewAllocator()}
}

func allocTest(ctx context.Context, m *Manager, rec *networkRecord, static []netip.Addr, owner string) ([]netip.Prefix, []string, []store.Cmp, []store.Op, error) {
	a, err := m.allocate(ctx, rec, static, owner)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	return a.Addrs, a.Keys, a.Cmps, a.Ops, nil
}

// TestAllocateErrorsKeepMessages: the errors of address allocation, as a Manager operation reports
// them, keep the messages and errors.Is classes they had before the allocator moved into ipam.
func TestAllocateErrorsKeepMessages(t *testing.T) {
	ctx := context.Background()
	m := allocManager(t)
	net := func(name string, subnets ...string) *networkRecord {
		rec := &networkRecord{Name: name, Driver: "none"}
		for _, s := range subnets {
			p := netip.MustParsePrefix(s)
			rec.Subnets, rec.Gateways = append(rec.Subnets, p), append(rec.Gateways, p.Addr().Next())
		}
		return rec
	}
	if err := m.rt.Txn(ctx, nil, []store.Op{
		store.Put(ipamKey("n", netip.MustParseAddr("10.5.0.9")), []byte("other")),
		store.Put(ipamKey("small", netip.MustParseAddr("10.7.0.2")), []byte("other")),
	}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		rec    *networkRecord
		static []string
		want   error
		msg    string
	}{
		{net("drv"), []string{"10.5.0.5"}, ErrInvalid, `network "drv" has no subnets in netmgr (its driver assigns the addresses); static addresses cannot be given`},
		{net("n", "10.5.0.0/24"), []string{"10.5.0.5", "10.5.0.6"}, ErrInvalid, `10.5.0.5 and 10.5.0.6: at most one static address per family`},
		{net("n", "10.5.0.0/24"), []string{"fd00:5::5"}, ErrInvalid, `fd00:5::5 is not in any subnet of network "n" ([10.5.0.0/24])`},
		{net("n", "10.5.0.0/24"), []string{"10.6.0.5"}, ErrInvalid, `address outside subnet: 10.6.0.5 is not a host address of 10.5.0.0/24`},
		{net("n", "10.5.0.0/24"), []string{"10.5.0.255"}, ErrInvalid, `address outside subnet: 10.5.0.255 is not a host address of 10.5.0.0/24`},
		{net("n", "10.5.0.0/24"), []string{"10.5.0.1"}, ErrExists, `address already in use: 10.5.0.1 is the gateway of 10.5.0.0/24`},
		{net("n", "10.5.0.0/24"), []string{"10.5.0.9"}, ErrExists, `address already in use: 10.5.0.9`},
		{net("small", "10.7.0.0/30"), nil, ErrFull, `address pool exhausted: 10.7.0.0/30`},
	} {
		var static []netip.Addr
		for _, s := range tc.static {
			static = append(static, netip.MustParseAddr(s))
		}
		_, _, _, _, err := allocTest(ctx, m, tc.rec, static, "sb")
		err = opErr("create", "sandbox", "sb", err)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s %v: %v, want %v", tc.rec.Name, tc.static, err, tc.want)
		}
		if want := `create sandbox "sb": ` + tc.want.Error() + ": " + tc.msg; err == nil || err.Error() != want {
			t.Errorf("%s %v:\n got %v\nwant %s", tc.rec.Name, tc.static, err, want)
		}
	}
}

// TestAllocateKeys: an allocation is keyed by ipamKey, compared absent and written with the owner, and
// a network without subnets gets nothing.
func TestAllocateKeys(t *testing.T) {
	ctx := context.Background()
	m := allocManager(t)
	rec := &networkRecord{Name: "n", Driver: "none",
		Subnets:  []netip.Prefix{netip.MustParsePrefix("10.5.0.0/24"), netip.MustParsePrefix("fd00:5::/64")},
		Gateways: []netip.Addr{netip.MustParseAddr("10.5.0.1"), netip.MustParseAddr("fd00:5::1")}}
	addrs, keys, cmps, ops, err := allocTest(ctx, m, rec, []netip.Addr{netip.MustParseAddr("fd00:5::77")}, "sb")
	if err != nil {
		t.Fatal(err)
	}
	wantKeys := []string{"ipam/n/10.5.0.2", "ipam/n/fd00:5::77"}
	if !slices.Equal(keys, wantKeys) || addrs[0].String() != "10.5.0.2/24" || addrs[1].String() != "fd00:5::77/64" {
		t.Fatalf("got %v %v", addrs, keys)
	}
	for i, k := range wantKeys {
		if cmps[i] != store.Absent(k) || ops[i].Key != k || string(ops[i].Value) != "sb" || ops[i].Delete {
			t.Fatalf("cmps %v ops %v", cmps, ops)
		}
	}
	m.ipam.Release(keys...)
	addrs, keys, _, _, err = allocTest(ctx, m, &networkRecord{Name: "drv", Driver: "none"}, nil, "sb")
	if err != nil || addrs != nil || keys != nil {
		t.Fatalf("no subnets: %v %v %v", addrs, keys, err)
	}
}
