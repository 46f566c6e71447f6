package firewall

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// netCluster is a cluster network as an overlay driver describes it: its host interfaces (the
// node's bridge and VXLAN device), its cluster CIDRs, masquerade for egress, and no masquerade
// towards the cluster CIDRs, whose pods on other hosts see the sender's pod address. The IPv6
// prefix outside any subnet's family is ignored for IPv4 and the other way round.
var netCluster = Network{
	Name:       "cluster",
	Ifaces:     []string{"nmob7", "nmox7"},
	Subnets:    []netip.Prefix{netip.MustParsePrefix("10.60.0.0/16"), netip.MustParsePrefix("fd00:60::/56")},
	Masquerade: true,
	NoMasqueradeTo: []netip.Prefix{
		netip.MustParsePrefix("fd00:60::/56"), netip.MustParsePrefix("10.60.0.0/16"),
		netip.MustParsePrefix("10.61.1.7/16"), // host bits ignored, sorted
		netip.MustParsePrefix("10.60.0.0/16"), // a duplicate
	},
}

// TestNoMasqueradeToRecorded: a network's NoMasqueradeTo destinations become "daddr != D" matches
// in its masquerade rules, one per destination of the rule's family, in a stable order
// (testdata/nomasq.golden, which TestNoMasqueradeToTraffic checks against the kernel).
func TestNoMasqueradeToRecorded(t *testing.T) {
	fw, k := newFakeFirewall(t)
	c := fakeConn(t, k)
	ctx := t.Context()
	if err := fw.Apply(ctx, []Network{netCluster, netWeb}); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	rs, ok := readRulesetFrom(t, c)
	if !ok {
		t.Fatal("table absent after Apply")
	}
	var post []string
	for _, r := range rs.rules[chainPostrouting] {
		if strings.HasPrefix(r, "cluster:") {
			post = append(post, r)
		}
	}
	if len(post) != 2 {
		t.Fatalf("cluster's postrouting rules = %q, want one per subnet", post)
	}
	// The IPv4 rule compares two IPv4 destinations (daddr at offset 16), the IPv6 rule one IPv6
	// destination (at offset 24).
	v4, v6 := strings.Count(post[0]+post[1], "Offset:16 Len:4"), strings.Count(post[0]+post[1], "Offset:24 Len:16")
	if v4 != 2 || v6 != 1 || !strings.Contains(post[0], "Op:1") {
		t.Errorf("cluster's postrouting rules have %d IPv4 and %d IPv6 destination matches, want 2 and 1:\n%s", v4, v6, strings.Join(post, "\n"))
	}
	golden(t, "nomasq.golden", rs.String())

	t.Run("invalid", func(t *testing.T) {
		bad := netCluster
		bad.NoMasqueradeTo = []netip.Prefix{{}}
		sent := len(k.sent)
		if err := fw.Apply(ctx, []Network{bad}); !errors.Is(err, ErrInvalid) {
			t.Fatalf("Apply(invalid NoMasqueradeTo) = %v, want ErrInvalid", err)
		}
		if len(k.sent) != sent {
			t.Errorf("invalid Apply sent %v", k.sent[sent:])
		}
	})
}

// TestNoMasqueradeToTraffic: with real packets, a masquerading network's traffic to a destination
// in NoMasqueradeTo leaves with the sender's own address, and to any other destination with the
// host's; the kernel holds the ruleset the no-root test checks.
func TestNoMasqueradeToTraffic(t *testing.T) {
	ns := newNetNS(t)
	fw := newFirewall(t, ns)
	if err := fw.Apply(t.Context(), []Network{netCluster, netWeb}); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	rs, _ := readRuleset(t, ns)
	checkGolden(t, "nomasq.golden", rs.String())

	web := &testNet{
		Network: Network{Name: "web", Ifaces: []string{"br-web"}, Masquerade: true,
			Subnets: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/24")}},
		gateway: netip.MustParsePrefix("10.2.0.1/24"), addr: netip.MustParsePrefix("10.2.0.2/24"),
	}
	host, outside := topology(t, []*testNet{web})
	outsideAddr := netip.MustParseAddr("192.0.2.2")
	echoServer(t, outside, outsideAddr)
	hfw := newFirewall(t, host)
	for _, tc := range []struct {
		keep []netip.Prefix
		want string
	}{
		{nil, "192.0.2.1"},
		{[]netip.Prefix{netip.MustParsePrefix("192.0.2.0/25")}, "10.2.0.2"},
		{[]netip.Prefix{netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("fd00::/8")}, "192.0.2.1"},
	} {
		n := web.Network
		n.NoMasqueradeTo = tc.keep
		if err := hfw.Apply(t.Context(), []Network{n}); err != nil {
			t.Fatalf("Apply: %v", err)
		}
		seen, ok := probe(t, web.ns, outsideAddr, 10e9)
		if !ok || seen != tc.want {
			t.Errorf("NoMasqueradeTo %v: outside saw %q (answered %v), want %s", tc.keep, seen, ok, tc.want)
		}
	}
}
