package netmgr_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/sandbox"
)

func dualStack(spec *netmgr.NetworkSpec) {
	spec.Subnets = append(spec.Subnets, netip.MustParsePrefix("fd00:60::/64"))
}

// TestDualStack: two sandboxes of a bridge network with an IPv4 and an IPv6 subnet get an address of
// each family at once (no duplicate address detection wait) and a default route of each, reach each
// other over both, and reach an outside namespace over both through the host's masquerade; a port
// published on them answers over IPv6 too.
func TestDualStack(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	n := e.network(t, "ds", "10.60.0.0/24", dualStack)
	if len(n.Subnets) != 2 || len(n.Gateways) != 2 || n.Gateways[1] != netip.MustParseAddr("fd00:60::1") {
		t.Fatalf("network %+v", n)
	}
	out4 := testutil.NewOutside(t, e.host)
	out6 := testutil.NewOutsideNet(t, e.host, "2001:db8::1/64", "2001:db8::2/64", "up6")

	a, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "a", Networks: []netmgr.AttachSpec{{Network: "ds"}}, Publish: publish(t, "8080:80")})
	if err != nil {
		t.Fatal(err)
	}
	ans := testutil.Open(t, a.NetNS)
	b, bns := e.sandbox(t, "b", "ds")
	for _, s := range []*netmgr.Sandbox{a, b} {
		at := s.Attachments[0]
		if !n.Subnets[0].Contains(at.IPv4.Addr()) || !n.Subnets[1].Contains(at.IPv6.Addr()) || at.IPv6.Bits() != 64 {
			t.Fatalf("%s: addresses %s %s", s.Name, at.IPv4, at.IPv6)
		}
	}

	// In the kernel: the IPv6 address is usable at once (nodad, never tentative), and there is an IPv6
	// default route via the gateway.
	h, err := ans.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	addrs, _ := h.AddrList(eth0, netlink.FAMILY_V6)
	found := false
	for _, ad := range addrs {
		if ad.IP.Equal(a.Attachments[0].IPv6.Addr().AsSlice()) {
			found = true
			if ad.Flags&unix.IFA_F_NODAD == 0 || ad.Flags&unix.IFA_F_TENTATIVE != 0 {
				t.Errorf("IPv6 address flags %#x, want nodad and not tentative", ad.Flags)
			}
		}
	}
	if !found {
		t.Fatalf("IPv6 address %s not on eth0: %v", a.Attachments[0].IPv6, addrs)
	}
	routes, _ := h.RouteList(eth0, netlink.FAMILY_V6)
	def := false
	for _, r := range routes {
		def = def || (r.Dst == nil || r.Dst.String() == "::/0") && r.Gw.Equal(net.ParseIP("fd00:60::1"))
	}
	if !def {
		t.Errorf("no IPv6 default route via fd00:60::1: %v", routes)
	}
	// Forwarding is on for both families in the host namespace.
	for _, k := range []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"} {
		var v []byte
		if err := e.host.Do(func() (err error) { v, err = os.ReadFile(k); return err }); err != nil || strings.TrimSpace(string(v)) != "1" {
			t.Errorf("%s = %q (%v) in the host namespace, want 1", k, v, err)
		}
	}

	// Pod to pod over both families, no translation.
	for _, p := range []struct {
		from *sandbox.NetNS
		to   netip.Prefix
	}{
		{ans, b.Attachments[0].IPv4}, {ans, b.Attachments[0].IPv6},
		{bns, a.Attachments[0].IPv4}, {bns, a.Attachments[0].IPv6},
	} {
		if err := testutil.Ping(p.from, p.to.Addr().String()); err != nil {
			t.Error(err)
		}
	}
	srv := testutil.Listen(t, bns, "[::]:0")
	_, port, _ := net.SplitHostPort(srv)
	if seen, err := testutil.Dial(ans, net.JoinHostPort(b.Attachments[0].IPv6.Addr().String(), port)); err != nil || seen != a.Attachments[0].IPv6.Addr().String() {
		t.Errorf("a->b over IPv6: seen as %q (%v), want %s", seen, err, a.Attachments[0].IPv6.Addr())
	}

	// To the outside over both, masqueraded to the host's address of each family.
	o4 := testutil.Listen(t, out4.NS, out4.Addr.String()+":0")
	o6 := testutil.Listen(t, out6.NS, "[2001:db8::2]:0")
	for _, c := range []struct {
		from *sandbox.NetNS
		srv  string
		want string
	}{
		{ans, o4, "192.0.2.1"}, {bns, o4, "192.0.2.1"},
		{ans, o6, "2001:db8::1"}, {bns, o6, "2001:db8::1"},
	} {
		if seen, err := testutil.Dial(c.from, c.srv); err != nil || seen != c.want {
			t.Errorf("pod -> outside %s: seen as %q (%v), want %s", c.srv, seen, err, c.want)
		}
	}
	for _, dst := range []string{"192.0.2.2", "2001:db8::2"} {
		if err := testutil.Ping(bns, dst); err != nil {
			t.Error(err)
		}
	}

	// The published port answers over IPv6 from the outside, which sees its own address.
	testutil.Listen(t, ans, "[::]:80")
	if seen, err := testutil.Dial(out6.NS, "[2001:db8::1]:8080"); err != nil || seen != "2001:db8::2" {
		t.Errorf("outside -> [2001:db8::1]:8080: seen as %q (%v)", seen, err)
	}
	if seen, err := testutil.Dial(out4.NS, "192.0.2.1:8080"); err != nil || seen != "192.0.2.2" {
		t.Errorf("outside -> 192.0.2.1:8080: seen as %q (%v)", seen, err)
	}
	if err := e.m.DeleteSandbox(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := testutil.DialBlocked(out6.NS, "[2001:db8::1]:8080"); err != nil {
		t.Errorf("IPv6 published port answers after its sandbox was removed: %v", err)
	}
}

func TestDualStackBadInput(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.network(t, "ds", "10.61.0.0/24", func(s *netmgr.NetworkSpec) {
		s.Subnets = append(s.Subnets, netip.MustParsePrefix("fd00:61::/64"))
	})
	p, a := netip.MustParsePrefix, netip.MustParseAddr
	netCase := func(spec netmgr.NetworkSpec) func() error {
		return func() error { _, err := e.m.CreateNetwork(ctx, spec); return err }
	}
	sbCase := func(ips ...string) func() error {
		return func() error {
			as := netmgr.AttachSpec{Network: "ds"}
			for _, ip := range ips {
				as.IPs = append(as.IPs, a(ip))
			}
			_, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "y", Networks: []netmgr.AttachSpec{as}})
			return err
		}
	}
	cases := []struct {
		name string
		do   func() error
		want error
	}{
		{"two IPv6 subnets", netCase(netmgr.NetworkSpec{Name: "x", Subnets: []netip.Prefix{p("fd00:70::/64"), p("fd00:71::/64")}}), netmgr.ErrInvalid},
		{"IPv6 subnet with host bits", netCase(netmgr.NetworkSpec{Name: "x", Subnets: []netip.Prefix{p("10.70.0.0/24"), p("fd00:70::1/64")}}), netmgr.ErrInvalid},
		{"IPv6 subnet too small", netCase(netmgr.NetworkSpec{Name: "x", Subnets: []netip.Prefix{p("fd00:70::/127")}}), netmgr.ErrInvalid},
		{"IPv4-mapped IPv6 subnet", netCase(netmgr.NetworkSpec{Name: "x", Subnets: []netip.Prefix{p("::ffff:10.70.0.0/120")}}), netmgr.ErrInvalid},
		{"IPv6 gateway without an IPv6 subnet", netCase(netmgr.NetworkSpec{Name: "x", Subnets: []netip.Prefix{p("10.70.0.0/24")}, Gateways: []netip.Addr{a("fd00:70::1")}}), netmgr.ErrInvalid},
		{"IPv6 gateway outside its subnet", netCase(netmgr.NetworkSpec{Name: "x", Subnets: []netip.Prefix{p("fd00:70::/64")}, Gateways: []netip.Addr{a("fd00:71::1")}}), netmgr.ErrInvalid},
		{"overlapping IPv6 subnet", netCase(netmgr.NetworkSpec{Name: "x", Subnets: []netip.Prefix{p("fd00:61::/48")}}), netmgr.ErrInUse},
		{"static IPv6 outside the subnet", sbCase("fd00:99::5"), netmgr.ErrInvalid},
		{"static IPv6 is the gateway", sbCase("fd00:61::1"), netmgr.ErrExists},
		{"two static IPv6 addresses", sbCase("fd00:61::5", "fd00:61::6"), netmgr.ErrInvalid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := e.snapshot(t)
			err := tc.do()
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if msg := err.Error(); strings.Contains(msg, "\n") || msg == "" {
				t.Errorf("error is not one line: %q", msg)
			}
			if after := e.snapshot(t); after != before {
				t.Errorf("state changed:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
}
