package firewall

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// The tests in this file need no root and no kernel: the Firewall talks to a fakeKernel. TestApply
// checks the same golden files against a real kernel, so the fake cannot drift from it unnoticed.

var update = flag.Bool("update", false, "rewrite testdata/*.golden from what the no-root tests generate")

// newFakeFirewall returns a Firewall whose netlink requests go to a fresh fakeKernel.
func newFakeFirewall(t *testing.T) (*Firewall, *fakeKernel) {
	t.Helper()
	k := &fakeKernel{}
	fw, err := New(-1, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	fw.testDial = k.dial
	t.Cleanup(func() { fw.Close() })
	return fw, k
}

// fakeConn is a connection to k for reading back what the Firewall left there.
func fakeConn(t *testing.T, k *fakeKernel) *nftables.Conn {
	t.Helper()
	c, err := nftables.New(nftables.WithTestDial(k.dial))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// foreignString renders the chains of iptables-nft's filter tables, family by family, with their
// rules: where Apply accepts netmgr's bridges beside a foreign FORWARD policy.
func foreignString(t *testing.T, c *nftables.Conn) string {
	t.Helper()
	var b strings.Builder
	for _, fam := range foreignFamilies {
		chains, err := c.ListChainsOfTableFamily(fam)
		if err != nil {
			t.Fatalf("list %s chains: %v", familyName(fam), err)
		}
		chains = slices.DeleteFunc(chains, func(ch *nftables.Chain) bool { return ch.Table.Name != foreignTable })
		slices.SortFunc(chains, func(a, b *nftables.Chain) int { return strings.Compare(a.Name, b.Name) })
		for _, ch := range chains {
			fmt.Fprintf(&b, "%s %s chain %s", familyName(fam), foreignTable, ch.Name)
			if ch.Hooknum != nil {
				fmt.Fprintf(&b, " hook %d priority %d policy %v", *ch.Hooknum, *ch.Priority, *ch.Policy)
			}
			b.WriteString("\n")
			rules, err := c.GetRules(ch.Table, ch)
			if err != nil {
				t.Fatalf("list rules of %s: %v", ch.Name, err)
			}
			for _, r := range rules {
				name, _ := networkFromUserData(r.UserData)
				fmt.Fprintf(&b, "\t%s:", name)
				for _, e := range r.Exprs {
					fmt.Fprintf(&b, " %+v", e)
				}
				b.WriteString("\n")
			}
		}
	}
	return b.String()
}

// golden compares got with testdata/name, or writes it there under -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run %s -update to create it)", err, t.Name())
	}
	if got != string(want) {
		t.Errorf("ruleset differs from %s (go test -update rewrites it; review the diff):\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

// checkGolden compares got, read back from a kernel, with testdata/name, which the no-root tests
// check against the fakeKernel; it never rewrites the file.
func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	want, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("the kernel holds another ruleset than testdata/%s (which the no-root tests check):\ngot:\n%s\nwant:\n%s", name, got, want)
	}
}

// TestApplyRecorded is TestApply without a kernel: the messages Apply sends, applied by a
// fakeKernel and read back, give the expected tables, chains, rules and set elements.
func TestApplyRecorded(t *testing.T) {
	fw, k := newFakeFirewall(t)
	c := fakeConn(t, k)
	ctx := t.Context()

	if err := fw.Apply(ctx, []Network{netWeb, netIsolated}); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	first, ok := readRulesetFrom(t, c)
	if !ok {
		t.Fatal("table absent after Apply")
	}
	fwd, post := first.chains[chainForward], first.chains[chainPostrouting]
	if fwd == nil || fwd.Type != nftables.ChainTypeFilter || *fwd.Hooknum != *nftables.ChainHookForward ||
		*fwd.Priority != *nftables.ChainPriorityFilter || *fwd.Policy != nftables.ChainPolicyAccept {
		t.Errorf("chain %s = %+v, want filter hook forward priority 0 policy accept", chainForward, fwd)
	}
	if post == nil || post.Type != nftables.ChainTypeNAT || *post.Hooknum != *nftables.ChainHookPostrouting ||
		*post.Priority != *nftables.ChainPriorityNATSource || *post.Policy != nftables.ChainPolicyAccept {
		t.Errorf("chain %s = %+v, want nat hook postrouting priority 100 policy accept", chainPostrouting, post)
	}
	if want := []string{"br-int", "br-web"}; !slices.Equal(first.bridges, want) {
		t.Errorf("set %s = %q, want %q", setIfaces, first.bridges, want)
	}
	for _, c := range []struct {
		chain string
		want  map[string]int
	}{
		{chainForward, map[string]int{"isolated": 3, "web": 3}},
		{chainInput, map[string]int{"isolated": 3}},
		{chainPostrouting, map[string]int{"web": 2}},
		{chainHairpin, map[string]int{"web": 2}},
	} {
		if got := first.countRules(c.chain); fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("%s rules per network = %v, want %v", c.chain, got, c.want)
		}
	}
	foreign := foreignString(t, c)
	for _, want := range []string{"ip filter chain FORWARD", "ip6 filter chain FORWARD", "ip filter chain " + foreignChain} {
		if !strings.Contains(foreign, want) {
			t.Errorf("no %q in the foreign tables:\n%s", want, foreign)
		}
	}
	golden(t, "apply.golden", first.String()+foreign)
	if got, err := fw.Networks(ctx); err != nil || !slices.Equal(got, []string{"isolated", "web"}) {
		t.Errorf("Networks() = %q, %v; want [isolated web]", got, err)
	}

	t.Run("idempotent", func(t *testing.T) {
		web := netWeb
		web.Subnets = slices.Clone(web.Subnets)
		slices.Reverse(web.Subnets)
		if err := fw.Apply(ctx, []Network{netIsolated, web}); err != nil {
			t.Fatalf("Apply: %v", err)
		}
		again, _ := readRulesetFrom(t, c)
		if again.String() != first.String() || foreignString(t, c) != foreign {
			t.Errorf("second Apply changed the ruleset:\n%s%s\nwant:\n%s%s", again, foreignString(t, c), first, foreign)
		}
	})

	t.Run("invalid input sends nothing", func(t *testing.T) {
		bad := netWeb
		bad.Ifaces = []string{"a-bridge-name-too-long"}
		sent := len(k.sent)
		if err := fw.Apply(ctx, []Network{netIsolated, bad}); !errors.Is(err, ErrInvalid) {
			t.Fatalf("Apply(invalid) = %v, want ErrInvalid", err)
		}
		if len(k.sent) != sent {
			t.Errorf("invalid Apply sent %v", k.sent[sent:])
		}
	})

	t.Run("one transaction", func(t *testing.T) {
		// The kernel refuses the set elements of a new ruleset: the old one stays whole, because
		// deleting the table and adding the new one are a single batch.
		before, _ := readRulesetFrom(t, c)
		k.failOn = "newsetelem"
		defer func() { k.failOn = "" }()
		if err := fw.Apply(ctx, []Network{netWeb}); err == nil {
			t.Fatal("Apply succeeded although the kernel refused its set elements")
		}
		if after, _ := readRulesetFrom(t, c); after.String() != before.String() {
			t.Errorf("a refused Apply changed the ruleset:\n%s\nwant:\n%s", after, before)
		}
	})

	t.Run("replace", func(t *testing.T) {
		if err := fw.Apply(ctx, []Network{netWeb}); err != nil {
			t.Fatalf("Apply: %v", err)
		}
		rs, _ := readRulesetFrom(t, c)
		if got, want := rs.countRules(chainForward), map[string]int{"web": 3}; fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("forward rules per network = %v, want %v", got, want)
		}
		if got := rs.countRules(chainInput); len(got) != 0 {
			t.Errorf("input rules left of the internal network: %v", got)
		}
		if want := []string{"br-web"}; !slices.Equal(rs.bridges, want) {
			t.Errorf("set %s = %q, want %q", setIfaces, rs.bridges, want)
		}
		if f := foreignString(t, c); strings.Contains(f, "isolated") || !strings.Contains(f, "web") {
			t.Errorf("foreign accepts after replacing the networks by web alone:\n%s", f)
		}
		if got, err := fw.Networks(ctx); err != nil || !slices.Equal(got, []string{"web"}) {
			t.Errorf("Networks() = %q, %v; want [web]", got, err)
		}
	})

	t.Run("remove", func(t *testing.T) {
		for i := range 2 {
			if err := fw.Remove(ctx); err != nil {
				t.Fatalf("Remove #%d: %v", i+1, err)
			}
		}
		if _, ok := readRulesetFrom(t, c); ok {
			t.Error("table present after Remove")
		}
		if f := foreignString(t, c); f != "" {
			t.Errorf("foreign chains left after Remove (the tables were netmgr's own):\n%s", f)
		}
	})

	t.Run("empty", func(t *testing.T) {
		if err := fw.Apply(ctx, []Network{netWeb}); err != nil {
			t.Fatalf("Apply: %v", err)
		}
		if err := fw.Apply(ctx, nil); err != nil {
			t.Fatalf("Apply(nil): %v", err)
		}
		if _, ok := readRulesetFrom(t, c); ok {
			t.Error("table present after Apply(nil)")
		}
	})
}

// portsString renders the ports table: its maps with their elements, sorted, and its chains with
// their rules. It is "" if the table is absent.
func portsString(t *testing.T, c *nftables.Conn) string {
	t.Helper()
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatalf("list tables: %v", err)
	}
	i := slices.IndexFunc(tables, func(tb *nftables.Table) bool { return tb.Name == PortsTableName })
	if i < 0 {
		return ""
	}
	tb := tables[i]
	var b strings.Builder
	sets, err := c.GetSets(tb)
	if err != nil {
		t.Fatalf("list sets: %v", err)
	}
	slices.SortFunc(sets, func(a, b *nftables.Set) int { return strings.Compare(a.Name, b.Name) })
	for _, s := range sets {
		fmt.Fprintf(&b, "map %s: %s -> %s (map %v, concatenation %v)\n", s.Name, s.KeyType.Name, s.DataType.Name, s.IsMap, s.Concatenation)
		elems, err := c.GetSetElements(s)
		if err != nil {
			t.Fatalf("list elements of %s: %v", s.Name, err)
		}
		var lines []string
		for _, e := range elems {
			lines = append(lines, fmt.Sprintf("\t%x : %x %q\n", e.Key, e.Val, e.Comment))
		}
		slices.Sort(lines)
		b.WriteString(strings.Join(lines, ""))
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatalf("list chains: %v", err)
	}
	chains = slices.DeleteFunc(chains, func(ch *nftables.Chain) bool { return ch.Table.Name != PortsTableName })
	slices.SortFunc(chains, func(a, b *nftables.Chain) int { return strings.Compare(a.Name, b.Name) })
	for _, ch := range chains {
		fmt.Fprintf(&b, "chain %s type %s hook %d priority %d policy %v\n", ch.Name, ch.Type, *ch.Hooknum, *ch.Priority, *ch.Policy)
		rules, err := c.GetRules(tb, ch)
		if err != nil {
			t.Fatalf("list rules of %s: %v", ch.Name, err)
		}
		for _, r := range rules {
			b.WriteString("\t")
			for _, e := range r.Exprs {
				fmt.Fprintf(&b, " %+v", e)
			}
			b.WriteString("\n")
		}
	}
	return b.String()
}

// TestPortsRecorded is TestPortsAddRemove without a kernel: maps, their elements and the DNAT
// chains, read back from a fakeKernel, and compared with testdata/ports.golden, which
// TestPortsAddRemove checks against the kernel.
func TestPortsRecorded(t *testing.T) {
	fw, k := newFakeFirewall(t)
	c := fakeConn(t, k)
	ctx := t.Context()
	list := func() []Port {
		t.Helper()
		ps, err := fw.Ports(ctx)
		if err != nil {
			t.Fatalf("Ports: %v", err)
		}
		return ps
	}
	if ps := list(); len(ps) != 0 {
		t.Fatalf("Ports without a table = %v", ps)
	}
	if err := fw.RemovePorts(ctx, []Port{portWeb}); err != nil {
		t.Fatalf("RemovePorts without a table: %v", err)
	}
	all := []Port{portWeb, portWebUDP, portOnAddr, portWeb6, portOnAddr6}
	if err := fw.AddPorts(ctx, all); err != nil {
		t.Fatalf("AddPorts: %v", err)
	}
	want := slices.Clone(all)
	sortPorts(want)
	if got := list(); fmt.Sprint(got) != fmt.Sprint(want) || got[0].Owner != "web" {
		t.Fatalf("Ports = %v, want %v", got, want)
	}
	table := portsString(t, c)
	golden(t, "ports.golden", table)
	if err := fw.AddPorts(ctx, all); err != nil {
		t.Fatalf("AddPorts again: %v", err)
	}
	if again := portsString(t, c); again != table {
		t.Errorf("second AddPorts changed the table:\n%s\nwas:\n%s", again, table)
	}

	// The same host port to another target is refused, and nothing of the batch is applied.
	other := portWeb
	other.Target = ap("10.2.0.3:80")
	extra := Port{Protocol: "tcp", HostPort: 9999, Target: ap("10.2.0.3:99")}
	if err := fw.AddPorts(ctx, []Port{extra, other}); !errors.Is(err, unix.EEXIST) {
		t.Fatalf("AddPorts of a published host port to another target: %v, want EEXIST", err)
	}
	if got := list(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("failed AddPorts changed the ports: %v", got)
	}
	// Removing it as given leaves the other target's port alone.
	if err := fw.RemovePorts(ctx, []Port{other}); err != nil {
		t.Fatalf("RemovePorts of a port published to another target: %v", err)
	}
	if got := list(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("RemovePorts of another target's port changed the ports: %v", got)
	}

	for range 2 {
		if err := fw.RemovePorts(ctx, []Port{portWeb, portOnAddr6}); err != nil {
			t.Fatalf("RemovePorts: %v", err)
		}
	}
	want = []Port{portWebUDP, portOnAddr, portWeb6}
	sortPorts(want)
	if got := list(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after RemovePorts: %v, want %v", got, want)
	}

	added, removed, err := fw.SyncPorts(ctx, []Port{portWeb, portWebUDP})
	if err != nil {
		t.Fatalf("SyncPorts: %v", err)
	}
	wantRemoved := []Port{portOnAddr, portWeb6}
	sortPorts(wantRemoved)
	if fmt.Sprint(added) != fmt.Sprint([]Port{portWeb}) || fmt.Sprint(removed) != fmt.Sprint(wantRemoved) {
		t.Errorf("SyncPorts added %v and removed %v, want [%v] and %v", added, removed, portWeb, wantRemoved)
	}

	// Someone flushes the chains: EnsurePorts puts the rules back and keeps the ports.
	k.mu.Lock()
	for _, tb := range k.tables {
		if tb.name == PortsTableName {
			for _, ch := range tb.chains {
				ch.rules = nil
			}
		}
	}
	k.mu.Unlock()
	if err := fw.EnsurePorts(ctx); err != nil {
		t.Fatal(err)
	}
	if err := fw.AddPorts(ctx, all); err != nil {
		t.Fatal(err)
	}
	if err := fw.RemovePorts(ctx, []Port{}); err != nil {
		t.Fatal(err)
	}
	if got := portsString(t, c); got != table {
		t.Errorf("EnsurePorts after a flush and the same ports again give another table:\n%s\nwant:\n%s", got, table)
	}

	if err := fw.Apply(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if out := portsString(t, c); out != "" {
		t.Errorf("ports table left after Apply(nil):\n%s", out)
	}
}
