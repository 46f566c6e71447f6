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

// checkGolden compares what conn holds after Apply(netWeb, netIsolated) with testdata/apply.golden,
// without ever rewriting it: for TestApply, against the kernel.
func checkGolden(t *testing.T, rs ruleset, c *nftables.Conn) {
	t.Helper()
	want, err := os.ReadFile(filepath.Join("testdata", "apply.golden"))
	if err != nil {
		t.Fatal(err)
	}
	if got := rs.String() + foreignString(t, c); got != string(want) {
		t.Errorf("the kernel holds another ruleset than testdata/apply.golden (which the no-root tests check):\ngot:\n%s\nwant:\n%s", got, want)
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
		t.Errorf("set %s = %q, want %q", setBridges, first.bridges, want)
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
		bad.Bridge = "a-bridge-name-too-long"
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
			t.Errorf("set %s = %q, want %q", setBridges, rs.bridges, want)
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
