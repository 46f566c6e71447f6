package portmap

import (
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/netmgr/netmgr/netmgr/firewall"
	"github.com/netmgr/netmgr/netmgr/store"
)

func openStore(t *testing.T) *store.Bolt {
	t.Helper()
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "ports.db"), store.WithNoSync())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func mustParse(t *testing.T, specs ...string) []Mapping {
	t.Helper()
	var out []Mapping
	for _, s := range specs {
		m, err := Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m...)
	}
	return out
}

var (
	t4 = netip.MustParseAddr("10.0.0.2")
	t6 = netip.MustParseAddr("fd00::2")
)

func noHostAddrs() (map[netip.Addr]bool, error) { return nil, errors.New("asked for host addresses") }

// take plans and commits req, as the Manager does with the sandbox's record.
func take(t *testing.T, st store.Store, req Request) (*Reservation, error) {
	t.Helper()
	res, err := Plan(context.Background(), st, req)
	if err != nil {
		return nil, err
	}
	return res, st.Txn(context.Background(), res.Cmps, res.Ops)
}

// TestPlanKeysAndTargets: a plan takes each port's holder key (with the owner as value) and rewrites
// its guard, compares both, and records the targets of the mapping's families.
func TestPlanKeysAndTargets(t *testing.T) {
	st := openStore(t)
	res, err := take(t, st, Request{Owner: "a", Network: "n", Target4: t4, Target6: t6,
		Mappings: mustParse(t, "8080:80", "0.0.0.0:53:53/UDP"), HostAddrs: noHostAddrs})
	if err != nil {
		t.Fatal(err)
	}
	want := []Record{
		{Mapping: Mapping{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}, Network: "n", Target4: t4, Target6: t6},
		{Mapping: Mapping{HostIP: netip.MustParseAddr("0.0.0.0"), HostPort: 53, ContainerPort: 53, Protocol: "udp"}, Network: "n", Target4: t4},
	}
	if !slices.Equal(res.Records, want) {
		t.Errorf("records %+v, want %+v", res.Records, want)
	}
	kvs, _, err := st.List(context.Background(), KeyPrefix)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, kv := range kvs {
		keys = append(keys, kv.Key+"="+string(kv.Value))
	}
	if w := []string{"ports/tcp/08080=", "ports/tcp/08080/*=a", "ports/udp/00053=", "ports/udp/00053/0.0.0.0=a"}; !slices.Equal(keys, w) {
		t.Errorf("keys %v, want %v", keys, w)
	}
	if len(res.Cmps) != 4 || len(res.Ops) != 4 {
		t.Errorf("cmps %v ops %v, want 4 each", res.Cmps, res.Ops)
	}
	if ops := ReleaseOps(res.Records); len(ops) != 4 || !ops[0].Delete || ops[0].Key != "ports/tcp/08080/*" || ops[1].Key != "ports/tcp/08080" {
		t.Errorf("release ops %+v", ops)
	}
}

// TestPlanConflicts: the conflict rules, against the request itself and against what others hold.
func TestPlanConflicts(t *testing.T) {
	st := openStore(t)
	host := netip.MustParseAddr("192.0.2.1")
	hostAddrs := func() (map[netip.Addr]bool, error) { return map[netip.Addr]bool{host: true}, nil }
	if _, err := take(t, st, Request{Owner: "a", Network: "n", Target4: t4, Mappings: mustParse(t, "192.0.2.1:8080:80"), HostAddrs: hostAddrs}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		specs []string
		want  error
		says  string
	}{
		{[]string{"8080:80"}, ErrExists, `already published by sandbox "a"`},           // a wildcard over a's address
		{[]string{"0.0.0.0:8080:80"}, ErrExists, `already published by sandbox "a"`},   // the family's wildcard
		{[]string{"192.0.2.1:8080:81"}, ErrExists, `already published by sandbox "a"`}, // the same address
		{[]string{"8081:80", "8081:81"}, ErrInvalid, "the same host port twice"},
		{[]string{"0.0.0.0:9000:80", "9000:81"}, ErrInvalid, "the same host port twice"},
		{[]string{"192.0.2.9:8080:80"}, ErrInvalid, "not an address of the host"},
		{[]string{"[::]:9001:80"}, ErrInvalid, "no address of that family"},
	} {
		_, err := Plan(context.Background(), st, Request{Owner: "b", Network: "n", Target4: t4, Mappings: mustParse(t, c.specs...), HostAddrs: hostAddrs})
		if !errors.Is(err, c.want) || err == nil || !strings.Contains(err.Error(), c.says) {
			t.Errorf("plan %v = %v, want %v saying %q", c.specs, err, c.want, c.says)
		}
	}
	// Not conflicts: another protocol, another family's wildcard, another address.
	if _, err := take(t, st, Request{Owner: "b", Network: "n", Target4: t4, Target6: t6,
		Mappings: mustParse(t, "8080:80/udp", "[::]:8080:80"), HostAddrs: hostAddrs}); err != nil {
		t.Errorf("udp and IPv6 beside a's tcp on 192.0.2.1: %v", err)
	}
	if _, err := Plan(context.Background(), st, Request{Owner: "c", Network: "n", Target4: t4,
		Mappings: []Mapping{{HostPort: 1, ContainerPort: 1, Protocol: "sctp"}}, HostAddrs: hostAddrs}); !errors.Is(err, ErrInvalid) {
		t.Errorf("sctp: %v, want ErrInvalid", err)
	}
}

// TestPlanManyPorts: a range of more than eight ports reads its protocol's keys in one list, with the
// same conflicts found; and a plan whose guards another taker rewrote since fails its commit.
func TestPlanManyPorts(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	if _, err := take(t, st, Request{Owner: "a", Network: "n", Target4: t4, Mappings: mustParse(t, "7005:80"), HostAddrs: noHostAddrs}); err != nil {
		t.Fatal(err)
	}
	_, err := Plan(ctx, st, Request{Owner: "b", Network: "n", Target4: t4, Mappings: mustParse(t, "7000-7019:8000-8019"), HostAddrs: noHostAddrs})
	if !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "7005") {
		t.Errorf("range over a's port: %v, want ErrExists naming 7005", err)
	}
	res, err := Plan(ctx, st, Request{Owner: "b", Network: "n", Target4: t4, Mappings: mustParse(t, "7100-7119:8000-8019"), HostAddrs: noHostAddrs})
	if err != nil || len(res.Records) != 20 {
		t.Fatalf("free range: %v, %d records", err, len(res.Records))
	}
	if _, err := take(t, st, Request{Owner: "c", Network: "n", Target4: t4, Mappings: mustParse(t, "7110:80/tcp"), HostAddrs: noHostAddrs}); err != nil {
		t.Fatal(err)
	}
	if err := st.Txn(ctx, res.Cmps, res.Ops); !errors.Is(err, store.ErrConflict) {
		t.Errorf("commit of a plan whose port another took since: %v, want ErrConflict", err)
	}
}

// TestRepairDecisions: keys no record names go unless their owner is busy, guards go once no holder
// is under them, and the firewall's ports are compared with the records' by what they match.
func TestRepairDecisions(t *testing.T) {
	kv := func(k, v string) store.KV { return store.KV{Key: k, Value: []byte(v), Rev: 1} }
	a := []Record{{Mapping: Mapping{HostPort: 80, ContainerPort: 80, Protocol: "tcp"}, Network: "n", Target4: t4}}
	kvs := []store.KV{
		kv("ports/tcp/00080", ""), kv("ports/tcp/00080/*", "a"),
		kv("ports/tcp/00081", ""), kv("ports/tcp/00081/*", "gone"),
		kv("ports/tcp/00082", ""), kv("ports/tcp/00082/*", "busy"),
		kv("ports/udp/00083", ""),
	}
	held := HeldKeys(a)
	var orphans []string
	for _, o := range Orphans(kvs, held, func(owner string) bool { return owner == "busy" }) {
		orphans = append(orphans, o.Key)
	}
	if !slices.Equal(orphans, []string{"ports/tcp/00081/*"}) {
		t.Errorf("orphans %v, want only gone's holder", orphans)
	}
	var empty []string
	for _, g := range EmptyGuards(kvs, held) {
		empty = append(empty, g.Key)
	}
	if !slices.Equal(empty, []string{"ports/udp/00083"}) {
		t.Errorf("empty guards %v, want the udp one", empty)
	}

	want := map[string][]firewall.Port{"a": FirewallPorts("a", a)}
	stale := firewall.Port{Protocol: "tcp", HostPort: 99, Target: netip.AddrPortFrom(t4, 99), Owner: "x"}
	d := Compare([]firewall.Port{stale}, want)
	if !d.Wanted || len(d.Stale) != 1 || d.Stale[0] != stale || len(d.Missing["a"]) != 1 {
		t.Errorf("diff %+v, want the stale port and a's missing one", d)
	}
	d = Compare(append(FirewallPorts("other-owner", a), stale), want)
	if len(d.Missing) != 0 || len(d.Stale) != 1 {
		t.Errorf("a port present under another owner name counts as present: %+v", d)
	}
	if got := Still(d.Stale, "a", a); len(got) != 0 {
		t.Errorf("Still(stale) = %v, want none", got)
	}
	if got := Still(FirewallPorts("a", a), "a", a); len(got) != 1 {
		t.Errorf("Still(a's own) = %v, want it", got)
	}
}
