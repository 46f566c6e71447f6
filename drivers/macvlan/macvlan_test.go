package macvlan

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/netmgr/netmgr/drivers"
)

func TestPrepareShim(t *testing.T) {
	p, a := netip.MustParsePrefix, netip.MustParseAddr
	cases := []struct {
		name     string
		subnets  []netip.Prefix
		gateways []netip.Addr
		shimIP   string
		want     string // recorded shim_ip, or "" for ErrInvalid
	}{
		{"top of each subnet", []netip.Prefix{p("10.0.0.0/24"), p("2001:db8::/64")}, []netip.Addr{a("10.0.0.1"), a("2001:db8::1")}, "", "10.0.0.254,2001:db8::ffff:ffff:ffff:ffff"},
		{"gateway at the top", []netip.Prefix{p("10.0.0.0/24")}, []netip.Addr{a("10.0.0.254")}, "", "10.0.0.253"},
		{"given", []netip.Prefix{p("10.0.0.0/24")}, []netip.Addr{a("10.0.0.1")}, "10.0.0.9", "10.0.0.9"},
		{"given both", []netip.Prefix{p("10.0.0.0/24"), p("2001:db8::/64")}, []netip.Addr{a("10.0.0.1"), a("2001:db8::1")}, "2001:db8::9, 10.0.0.9", "2001:db8::9,10.0.0.9"},
		{"outside", []netip.Prefix{p("10.0.0.0/24")}, []netip.Addr{a("10.0.0.1")}, "10.0.1.9", ""},
		{"gateway", []netip.Prefix{p("10.0.0.0/24")}, []netip.Addr{a("10.0.0.1")}, "10.0.0.1", ""},
		{"network address", []netip.Prefix{p("10.0.0.0/24")}, []netip.Addr{a("10.0.0.1")}, "10.0.0.0", ""},
		{"broadcast", []netip.Prefix{p("10.0.0.0/24")}, []netip.Addr{a("10.0.0.1")}, "10.0.0.255", ""},
		{"two of a family", []netip.Prefix{p("10.0.0.0/24")}, []netip.Addr{a("10.0.0.1")}, "10.0.0.8,10.0.0.9", ""},
		{"not an address", []netip.Prefix{p("10.0.0.0/24")}, []netip.Addr{a("10.0.0.1")}, "ten", ""},
	}
	for _, tc := range cases {
		n := &drivers.Network{Name: "n", Subnets: tc.subnets, Gateways: tc.gateways, Options: map[string]string{OptShim: "true"}}
		if tc.shimIP != "" {
			n.Options[OptShimIP] = tc.shimIP
		}
		err := prepareShim(n)
		switch {
		case tc.want == "" && !errors.Is(err, drivers.ErrInvalid):
			t.Errorf("%s: err %v, want ErrInvalid", tc.name, err)
		case tc.want != "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && n.Options[OptShimIP] != tc.want:
			t.Errorf("%s: shim_ip %q, want %q", tc.name, n.Options[OptShimIP], tc.want)
		}
		if tc.want != "" && n.Options[OptShimName] != DefaultShimName("n") {
			t.Errorf("%s: shim_name %q", tc.name, n.Options[OptShimName])
		}
	}
}

func TestDefaultShimName(t *testing.T) {
	for _, n := range []string{"a", "a-very-long-network-name-indeed"} {
		s := DefaultShimName(n)
		if err := drivers.CheckIfName("shim", s); err != nil || len(s) != drivers.MaxIfNameLen {
			t.Errorf("DefaultShimName(%q) = %q: %v", n, s, err)
		}
	}
	if DefaultShimName("a") == DefaultShimName("b") {
		t.Error("two networks share a shim name")
	}
}
