package firewall

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// netRouted and netRouted2 are routed networks: their host interfaces are their veths, keyed by
// one wildcard each.
var (
	netRouted = Network{
		Name:       "rt1",
		Ifaces:     []string{"nmr1a2b*"},
		Subnets:    []netip.Prefix{netip.MustParsePrefix("10.30.0.0/16")},
		Masquerade: true,
	}
	netRouted2 = Network{
		Name:       "rt2",
		Ifaces:     []string{"nmr3c4d*"},
		Subnets:    []netip.Prefix{netip.MustParsePrefix("10.31.0.0/16")},
		Masquerade: true,
	}
)

// TestWildcardRecorded: a wildcard interface compares only its prefix (nft's "nmr1a2b*"), stays out
// of the exact-match set, and every other network gets a rule that drops its traffic to the
// wildcard's interfaces, so that routed networks are isolated from bridges and from each other.
func TestWildcardRecorded(t *testing.T) {
	fw, k := newFakeFirewall(t)
	c := fakeConn(t, k)
	if err := fw.Apply(t.Context(), []Network{netWeb, netRouted, netRouted2}); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	rs, ok := readRulesetFrom(t, c)
	if !ok {
		t.Fatal("table absent after Apply")
	}
	if len(rs.bridges) != 1 || rs.bridges[0] != "br-web" {
		t.Errorf("set %s = %q, want only the exact name br-web", setIfaces, rs.bridges)
	}
	// web: isolation via the set, two wildcard drops, two direct-access rules; each routed
	// network: the set rule, one wildcard drop (the other's), two direct-access rules.
	if got := rs.countRules(chainForward); got["web"] != 5 || got["rt1"] != 4 || got["rt2"] != 4 {
		t.Errorf("forward rules per network = %v, want web 5, rt1 4, rt2 4", got)
	}
	golden(t, "wildcard.golden", rs.String()+foreignString(t, c))
}

// TestWildcardInvalid: a wildcard that would match another network's interfaces, a bare "*" and a
// '*' inside a name are refused before anything is sent.
func TestWildcardInvalid(t *testing.T) {
	fw, k := newFakeFirewall(t)
	for _, c := range []struct {
		name string
		nets []Network
	}{
		{"wildcard covers a bridge", []Network{netRouted, {Name: "b", Ifaces: []string{"nmr1a2bx"}}}},
		{"bridge under a later wildcard", []Network{{Name: "b", Ifaces: []string{"nmr1a2bx"}}, netRouted}},
		{"wildcards overlap", []Network{netRouted, {Name: "b", Ifaces: []string{"nmr1*"}}}},
		{"bare star", []Network{{Name: "b", Ifaces: []string{"*"}}}},
		{"inner star", []Network{{Name: "b", Ifaces: []string{"nm*r"}}}},
	} {
		sent := len(k.sent)
		if err := fw.Apply(t.Context(), c.nets); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Apply = %v, want ErrInvalid", c.name, err)
		}
		if len(k.sent) != sent {
			t.Errorf("%s: invalid Apply sent %v", c.name, k.sent[sent:])
		}
	}
}

// TestWildcardNft: the kernel takes the wildcard rules, and nft prints them as wildcards.
func TestWildcardNft(t *testing.T) {
	ns := newNetNS(t)
	fw := newFirewall(t, ns)
	if err := fw.Apply(t.Context(), []Network{netWeb, netRouted, netRouted2}); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	out := nftList(t, ns)
	for _, want := range []string{
		`iifname "br-web" oifname "nmr1a2b*" drop comment "network=web"`,
		`iifname "nmr1a2b*" oifname "nmr3c4d*" drop comment "network=rt1"`,
		`iifname "nmr1a2b*" oifname != "nmr1a2b*" oifname @ifaces drop comment "network=rt1"`,
		`ip saddr 10.30.0.0/16 oifname != "nmr1a2b*" masquerade comment "network=rt1"`,
		`ip saddr 10.30.0.0/16 oifname "nmr1a2b*" masquerade comment "network=rt1"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("nft output lacks %q:\n%s", want, out)
		}
	}
}
