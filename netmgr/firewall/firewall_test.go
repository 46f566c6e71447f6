package firewall

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/nftables"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/netmgr/netmgr/internal/testutil"
)

// newNetNS returns a fresh network namespace that lives until the test ends.
// The namespace is created on a throwaway goroutine so that the test
// goroutine's thread never leaves its namespace; if that thread cannot get
// back, it stays locked and dies with the goroutine.
func newNetNS(t *testing.T) netns.NsHandle {
	t.Helper()
	testutil.RequireRoot(t)
	type result struct {
		ns  netns.NsHandle
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("get current netns: %w", err)}
			return
		}
		defer orig.Close()
		ns, err := netns.New()
		if serr := netns.Set(orig); serr != nil {
			if err == nil {
				ns.Close()
			}
			ch <- result{err: fmt.Errorf("restore netns: %w", serr)}
			return
		}
		runtime.UnlockOSThread()
		ch <- result{ns: ns, err: err}
	}()
	r := <-ch
	if errors.Is(r.err, unix.EPERM) {
		t.Skipf("cannot create network namespace: %v", r.err)
	}
	if r.err != nil {
		t.Fatalf("create netns: %v", r.err)
	}
	t.Cleanup(func() { r.ns.Close() })
	return r.ns
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func newFirewall(t *testing.T, ns netns.NsHandle) *Firewall {
	t.Helper()
	fw, err := New(int(ns), testLogger(t))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { fw.Close() })
	return fw
}

// ruleset is what the kernel holds in the netmgr table, read back with
// google/nftables, with handles left out so that snapshots can be compared.
type ruleset struct {
	chains  map[string]*nftables.Chain
	rules   map[string][]string // chain name -> "network: exprs"
	bridges []string
}

func readRuleset(t *testing.T, ns netns.NsHandle) (ruleset, bool) {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatalf("open nftables conn: %v", err)
	}
	return readRulesetFrom(t, c)
}

// readRulesetFrom is readRuleset over c, a kernel's or a fakeKernel's connection.
func readRulesetFrom(t *testing.T, c *nftables.Conn) (ruleset, bool) {
	t.Helper()
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatalf("list tables: %v", err)
	}
	i := slices.IndexFunc(tables, func(tb *nftables.Table) bool { return tb.Name == TableName })
	if i < 0 {
		return ruleset{}, false
	}
	tb := tables[i]
	rs := ruleset{chains: map[string]*nftables.Chain{}, rules: map[string][]string{}}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatalf("list chains: %v", err)
	}
	for _, ch := range chains {
		if ch.Table.Name != TableName {
			continue
		}
		rs.chains[ch.Name] = ch
		rules, err := c.GetRules(tb, ch)
		if err != nil {
			t.Fatalf("get rules of %s: %v", ch.Name, err)
		}
		for _, r := range rules {
			name, _ := networkFromUserData(r.UserData)
			var b strings.Builder
			fmt.Fprintf(&b, "%s:", name)
			for _, e := range r.Exprs {
				fmt.Fprintf(&b, " %+v", e)
			}
			rs.rules[ch.Name] = append(rs.rules[ch.Name], b.String())
		}
	}
	set, err := c.GetSetByName(tb, setIfaces)
	if err != nil {
		t.Fatalf("get set %s: %v", setIfaces, err)
	}
	elems, err := c.GetSetElements(set)
	if err != nil {
		t.Fatalf("get elements of set %s: %v", setIfaces, err)
	}
	for _, e := range elems {
		rs.bridges = append(rs.bridges, unix.ByteSliceToString(e.Key))
	}
	slices.Sort(rs.bridges)
	return rs, true
}

// countRules returns the number of rules per network in chain.
func (rs ruleset) countRules(chain string) map[string]int {
	m := map[string]int{}
	for _, r := range rs.rules[chain] {
		name, _, _ := strings.Cut(r, ":")
		m[name]++
	}
	return m
}

func (rs ruleset) String() string {
	var b strings.Builder
	for _, ch := range []string{chainForward, chainPostrouting, chainHairpin, chainInput} {
		fmt.Fprintf(&b, "chain %s\n", ch)
		for _, r := range rs.rules[ch] {
			fmt.Fprintf(&b, "\t%s\n", r)
		}
	}
	fmt.Fprintf(&b, "bridges %q\n", rs.bridges)
	return b.String()
}

// nftList returns `nft list table inet netmgr` as seen inside ns, or skips
// the calling test if nft is not installed.
func nftList(t *testing.T, ns netns.NsHandle) string {
	t.Helper()
	nft, err := exec.LookPath("nft")
	if err != nil {
		t.Skip("nft not installed")
	}
	path := fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(ns))
	out, err := exec.Command("nsenter", "--net="+path, nft, "list", "table", "inet", TableName).CombinedOutput()
	if err != nil {
		t.Fatalf("nft list table: %v\n%s", err, out)
	}
	return string(out)
}

var (
	netIsolated = Network{
		Name:       "isolated",
		Ifaces:     []string{"br-int"},
		Subnets:    []netip.Prefix{netip.MustParsePrefix("10.10.0.0/24")},
		Internal:   true,
		Masquerade: true, // ignored for internal networks
	}
	netWeb = Network{
		Name:   "web",
		Ifaces: []string{"br-web"},
		Subnets: []netip.Prefix{
			netip.MustParsePrefix("fd00:20::/64"),
			netip.MustParsePrefix("10.20.0.0/16"),
		},
		Masquerade: true,
	}
)

func TestApply(t *testing.T) {
	ns := newNetNS(t)
	fw := newFirewall(t, ns)
	ctx := t.Context()

	if err := fw.Apply(ctx, []Network{netWeb, netIsolated}); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	first, ok := readRuleset(t, ns)
	if !ok {
		t.Fatal("table absent after Apply")
	}
	t.Logf("ruleset:\n%s", first)
	// The no-root TestApplyRecorded checks the same file against a fakeKernel.
	kc, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatal(err)
	}
	checkGolden(t, "apply.golden", first.String()+foreignString(t, kc))

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
	if got, want := first.countRules(chainForward), map[string]int{"isolated": 3, "web": 3}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("forward rules per network = %v, want %v", got, want)
	}
	if got, want := first.countRules(chainInput), map[string]int{"isolated": 3}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("input rules per network = %v, want %v", got, want)
	}
	if got, want := first.countRules(chainPostrouting), map[string]int{"web": 2}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("postrouting rules per network = %v, want %v", got, want)
	}
	if got, err := fw.Networks(ctx); err != nil || !slices.Equal(got, []string{"isolated", "web"}) {
		t.Errorf("Networks() = %q, %v; want [isolated web]", got, err)
	}

	t.Run("idempotent", func(t *testing.T) {
		// Same networks in another order give the same ruleset.
		web := netWeb
		web.Subnets = slices.Clone(web.Subnets)
		slices.Reverse(web.Subnets)
		if err := fw.Apply(ctx, []Network{netIsolated, web}); err != nil {
			t.Fatalf("Apply: %v", err)
		}
		again, _ := readRuleset(t, ns)
		if again.String() != first.String() {
			t.Errorf("second Apply changed the ruleset:\n%s\nwant:\n%s", again, first)
		}
	})

	t.Run("invalid input leaves ruleset", func(t *testing.T) {
		bad := netWeb
		bad.Ifaces = []string{"a-bridge-name-too-long"}
		err := fw.Apply(ctx, []Network{netIsolated, bad})
		if !errors.Is(err, ErrInvalid) {
			t.Fatalf("Apply(invalid) = %v, want ErrInvalid", err)
		}
		if got, _ := readRuleset(t, ns); got.String() != first.String() {
			t.Errorf("invalid Apply changed the ruleset:\n%s", got)
		}
	})

	t.Run("cancelled context leaves ruleset", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if err := fw.Apply(cctx, []Network{netWeb}); !errors.Is(err, context.Canceled) {
			t.Fatalf("Apply(cancelled) = %v, want context.Canceled", err)
		}
		if got, _ := readRuleset(t, ns); got.String() != first.String() {
			t.Errorf("cancelled Apply changed the ruleset:\n%s", got)
		}
	})

	t.Run("replace", func(t *testing.T) {
		if err := fw.Apply(ctx, []Network{netWeb}); err != nil {
			t.Fatalf("Apply: %v", err)
		}
		rs, _ := readRuleset(t, ns)
		if got, want := rs.countRules(chainForward), map[string]int{"web": 3}; fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("forward rules per network = %v, want %v", got, want)
		}
		if got, want := rs.countRules(chainPostrouting), map[string]int{"web": 2}; fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("postrouting rules per network = %v, want %v", got, want)
		}
		if want := []string{"br-web"}; !slices.Equal(rs.bridges, want) {
			t.Errorf("set %s = %q, want %q", setIfaces, rs.bridges, want)
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
		if _, ok := readRuleset(t, ns); ok {
			t.Error("table present after Remove")
		}
		if got, err := fw.Networks(ctx); err != nil || len(got) != 0 {
			t.Errorf("Networks() = %q, %v; want none", got, err)
		}
	})

	t.Run("empty", func(t *testing.T) {
		if err := fw.Apply(ctx, []Network{netWeb}); err != nil {
			t.Fatalf("Apply: %v", err)
		}
		if err := fw.Apply(ctx, nil); err != nil {
			t.Fatalf("Apply(nil): %v", err)
		}
		if _, ok := readRuleset(t, ns); ok {
			t.Error("table present after Apply(nil)")
		}
	})

	t.Run("closed", func(t *testing.T) {
		fw := newFirewall(t, ns)
		fw.Close()
		if err := fw.Apply(ctx, []Network{netWeb}); err == nil {
			t.Error("Apply after Close succeeded")
		}
	})
}

// TestApplyNft checks that nft reads the rules back as the intended
// nft syntax, which pins down the expression encoding.
func TestApplyNft(t *testing.T) {
	ns := newNetNS(t)
	fw := newFirewall(t, ns)
	if err := fw.Apply(t.Context(), []Network{netIsolated, netWeb}); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	out := nftList(t, ns)
	t.Logf("nft list table:\n%s", out)
	for _, want := range []string{
		`type ifname`,
		`"br-int"`,
		`"br-web"`,
		`type filter hook forward priority filter; policy accept;`,
		`iifname "br-int" oifname != "br-int" drop comment "network=isolated"`,
		`oifname "br-int" iifname != "br-int" drop comment "network=isolated"`,
		`iifname "br-int" oifname != "br-int" oifname @ifaces drop comment "network=isolated"`,
		`iifname "br-web" oifname != "br-web" oifname @ifaces drop comment "network=web"`,
		`type nat hook postrouting priority srcnat; policy accept;`,
		// nft hides the "meta nfproto" dependency of ip/ip6 in an inet table.
		`ip saddr 10.20.0.0/16 oifname != "br-web" masquerade comment "network=web"`,
		`ip6 saddr fd00:20::/64 oifname != "br-web" masquerade comment "network=web"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("nft output lacks %q", want)
		}
	}
	if strings.Contains(out, "10.10.0.0") {
		t.Error("internal network is masqueraded")
	}
}

// TestConcurrent applies rulesets to several namespaces at once; run with
// -race it checks that Firewalls share no unsynchronized state.
func TestConcurrent(t *testing.T) {
	const n = 4
	fws := make([]*Firewall, n)
	for i := range fws {
		fws[i] = newFirewall(t, newNetNS(t))
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i, fw := range fws {
		wg.Go(func() {
			for range 5 {
				if err := fw.Apply(t.Context(), []Network{netIsolated, netWeb}); err != nil {
					errs[i] = err
					return
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}

func TestValidate(t *testing.T) {
	valid := Network{Name: "n", Ifaces: []string{"br0"}, Subnets: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
	with := func(f func(*Network)) []Network {
		n := valid
		f(&n)
		return []Network{n}
	}
	for _, tc := range []struct {
		name string
		nets []Network
	}{
		{"empty interface", with(func(n *Network) { n.Ifaces = []string{""} })},
		{"long interface", with(func(n *Network) { n.Ifaces = []string{"0123456789abcdef"} })},
		{"interface with slash", with(func(n *Network) { n.Ifaces = []string{"br/0"} })},
		{"interface with space", with(func(n *Network) { n.Ifaces = []string{"br 0"} })},
		{"interface dot", with(func(n *Network) { n.Ifaces = []string{"."} })},
		{"invalid prefix", with(func(n *Network) { n.Subnets = append(n.Subnets, netip.Prefix{}) })},
		{"4in6 prefix", with(func(n *Network) { n.Subnets = []netip.Prefix{netip.MustParsePrefix("::ffff:10.0.0.0/104")} })},
		{"empty name", with(func(n *Network) { n.Name = "" })},
		{"long name", with(func(n *Network) { n.Name = strings.Repeat("x", maxNameLen+1) })},
		{"duplicate name", []Network{valid, {Name: "n", Ifaces: []string{"br1"}}}},
		{"duplicate interface", []Network{valid, {Name: "m", Ifaces: []string{"br0"}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The fd is not a namespace: were validation to let the input
			// through, the netlink dial would fail instead of touching the
			// caller's namespace.
			f, err := os.Open(os.DevNull)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			fw, err := New(int(f.Fd()), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer fw.Close()
			if err := fw.Apply(t.Context(), tc.nets); !errors.Is(err, ErrInvalid) {
				t.Errorf("Apply = %v, want ErrInvalid", err)
			}
		})
	}
	if _, err := New(0, nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("New(0) = %v, want ErrInvalid", err)
	}
	if n, err := normalize(with(func(n *Network) { n.Name = strings.Repeat("x", maxNameLen) })); err != nil {
		t.Errorf("normalize(longest name) = %v", err)
	} else if ud := networkUserData(n[0].Name); len(ud) > maxUserData {
		t.Errorf("userdata is %d bytes, kernel allows %d", len(ud), maxUserData)
	}
}

func TestNormalize(t *testing.T) {
	got, err := normalize([]Network{
		{Name: "b", Ifaces: []string{"br-b"}, Subnets: []netip.Prefix{
			netip.MustParsePrefix("10.1.2.3/16"),
			netip.MustParsePrefix("fd00::1/64"),
			netip.MustParsePrefix("10.1.0.0/16"),
		}},
		{Name: "a", Ifaces: []string{"br-a"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []Network{
		{Name: "a", Ifaces: []string{"br-a"}, Subnets: []netip.Prefix{}},
		{Name: "b", Ifaces: []string{"br-b"}, Subnets: []netip.Prefix{
			netip.MustParsePrefix("10.1.0.0/16"),
			netip.MustParsePrefix("fd00::/64"),
		}},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("normalize = %v, want %v", got, want)
	}
}

func TestUserData(t *testing.T) {
	for _, tc := range []struct {
		ud   []byte
		want string
		ok   bool
	}{
		{networkUserData("web"), "web", true},
		{nil, "", false},
		{[]byte{0, 200, 'x'}, "", false}, // truncated TLV
		{[]byte{0, 4, 'a', 'b', 'c', 0}, "", false},
		{append([]byte{7, 1, 0}, networkUserData("db")...), "db", true},
	} {
		if got, ok := networkFromUserData(tc.ud); got != tc.want || ok != tc.ok {
			t.Errorf("networkFromUserData(%q) = %q, %v; want %q, %v", tc.ud, got, ok, tc.want, tc.ok)
		}
	}
}

func TestPrefixMask(t *testing.T) {
	for _, tc := range []struct {
		bits, size int
		want       string
	}{
		{0, 4, "00000000"},
		{12, 4, "fff00000"},
		{24, 4, "ffffff00"},
		{31, 4, "fffffffe"},
		{64, 16, "ffffffffffffffff0000000000000000"},
	} {
		if got := fmt.Sprintf("%x", prefixMask(tc.bits, tc.size)); got != tc.want {
			t.Errorf("prefixMask(%d, %d) = %s, want %s", tc.bits, tc.size, got, tc.want)
		}
	}
}

// TestApplyNetworkWithoutInterface: a network with no host interface of its own (a routed network,
// whose sandboxes hang off per-endpoint veths that come and go) must not fail every other network's
// rules; it simply contributes no interface-keyed rules.
func TestApplyNetworkWithoutInterface(t *testing.T) {
	ns := newNetNS(t)
	fw := newFirewall(t, ns)
	routed := Network{Name: "routed", Subnets: []netip.Prefix{netip.MustParsePrefix("10.30.0.0/24")}, Masquerade: true}
	if err := fw.Apply(t.Context(), []Network{netWeb, routed}); err != nil {
		t.Fatalf("Apply(web, a network without an interface) = %v, want the others applied", err)
	}
	rs, ok := readRuleset(t, ns)
	if !ok {
		t.Fatal("table absent after Apply")
	}
	if got, want := rs.countRules(chainForward), map[string]int{"web": 3}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("forward rules per network = %v, want %v", got, want)
	}
	if got, want := rs.countRules(chainPostrouting), map[string]int{"web": 2}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("postrouting rules per network = %v, want %v", got, want)
	}
}

// TestApplyNftSeveralInterfaces: a network with more than one host interface gets its rules for each
// of them, and "leaving the network" means leaving by none of them.
func TestApplyNftSeveralInterfaces(t *testing.T) {
	ns := newNetNS(t)
	fw := newFirewall(t, ns)
	two := Network{Name: "two", Ifaces: []string{"nmr-b", "nmr-a", "nmr-b"}, Internal: true,
		Subnets: []netip.Prefix{netip.MustParsePrefix("10.40.0.0/24")}}
	web := netWeb
	web.Ifaces = []string{"br-web", "vx-web"}
	if err := fw.Apply(t.Context(), []Network{two, web}); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	rs, _ := readRuleset(t, ns)
	if want := []string{"br-web", "nmr-a", "nmr-b", "vx-web"}; !slices.Equal(rs.bridges, want) {
		t.Errorf("set %s = %q, want %q", setIfaces, rs.bridges, want)
	}
	if got, want := rs.countRules(chainForward), map[string]int{"two": 6, "web": 6}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("forward rules per network = %v, want %v", got, want)
	}
	out := nftList(t, ns)
	t.Logf("nft list table:\n%s", out)
	for _, want := range []string{
		`iifname "nmr-a" oifname != "nmr-a" oifname != "nmr-b" drop comment "network=two"`,
		`oifname "nmr-b" iifname != "nmr-a" iifname != "nmr-b" drop comment "network=two"`,
		`iifname "vx-web" oifname != "br-web" oifname != "vx-web" oifname @ifaces drop comment "network=web"`,
		`ip saddr 10.20.0.0/16 oifname != "br-web" oifname != "vx-web" masquerade comment "network=web"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("nft output lacks %q", want)
		}
	}
}
