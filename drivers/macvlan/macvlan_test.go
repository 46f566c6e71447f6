package macvlan

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/netmgr/netmgr/drivers"
	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/sandbox"
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

type testHost struct {
	d    *Driver
	host *sandbox.NetNS
	hh   *netlink.Handle
}

// newTestHost is a macvlan driver in a fresh test namespace, with veth parents (Ethernet, up) of the
// given MTUs named par0, par1, ...
func newTestHost(t *testing.T, mtus ...int) *testHost {
	t.Helper()
	host := testutil.NewNS(t, "host")
	hh, err := host.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hh.Close)
	for i, mtu := range mtus {
		name := fmt.Sprintf("par%d", i)
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu}, PeerName: name + "p"}
		if err := hh.LinkAdd(v); err != nil {
			t.Fatal(err)
		}
		if err := hh.LinkSetUp(v); err != nil {
			t.Fatal(err)
		}
	}
	d, err := New(drivers.Env{Host: host, HostHandle: hh})
	if err != nil {
		t.Fatal(err)
	}
	return &testHost{d: d.(*Driver), host: host, hh: hh}
}

func mvNet(parent string, mtu int, subnets ...string) *drivers.Network {
	n := &drivers.Network{ID: "id", Name: "mv", MTU: mtu, Options: map[string]string{OptParent: parent}}
	for _, s := range subnets {
		p := netip.MustParsePrefix(s)
		n.Subnets = append(n.Subnets, p)
		n.Gateways = append(n.Gateways, p.Addr().Next())
	}
	return n
}

// TestPrepareNetworkRefusals: a loopback parent was accepted and failed at the first attach with a bare
// EINVAL; an IPv6 network with an MTU below 1280 (its own or the parent's) failed the same way
// (FAULTS §15).
func TestPrepareNetworkRefusals(t *testing.T) {
	h := newTestHost(t, 1500, 1279)
	for _, tc := range []struct {
		name string
		n    *drivers.Network
		msg  string
	}{
		{"loopback parent", mvNet("lo", 0, "10.60.0.0/24"), "loopback"},
		{"ipv6 with mtu 1279", mvNet("par0", 1279, "10.60.0.0/24", "fd00:60::/64"), "IPv6 needs an MTU of at least 1280"},
		{"ipv6 on a parent of mtu 1279", mvNet("par1", 0, "fd00:60::/64"), "IPv6 needs an MTU of at least 1280"},
	} {
		err := h.d.PrepareNetwork(tc.n, nil)
		if !errors.Is(err, drivers.ErrInvalid) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: %v, want ErrInvalid saying %q", tc.name, err, tc.msg)
		}
	}
	if err := h.d.PrepareNetwork(mvNet("par1", 0, "10.60.0.0/24"), nil); err != nil {
		t.Errorf("ipv4 on a parent of mtu 1279: %v", err)
	}
	if err := h.d.PrepareEndpoint(mvNet("par0", 0, "10.60.0.0/24"), &drivers.Endpoint{IfName: "eth0", MAC: "ff:ff:ff:ff:ff:ff"}); !errors.Is(err, drivers.ErrInvalid) {
		t.Errorf("broadcast mac: %v, want ErrInvalid", err)
	}
}

// TestAttachRollsBackWhenHandleFails: when no handle into the sandbox can be had, Attach leaves no
// macvlan there (REVIEW §1.10: it used to create the macvlan first and return before its rollback).
func TestAttachRollsBackWhenHandleFails(t *testing.T) {
	h := newTestHost(t, 1500)
	n := mvNet("par0", 0, "10.60.0.0/24")
	ctx := context.Background()
	if err := h.d.PrepareNetwork(n, nil); err != nil {
		t.Fatal(err)
	}
	if err := h.d.CreateNetwork(ctx, n); err != nil {
		t.Fatal(err)
	}
	sb := testutil.NewNS(t, "sb")
	ep := &drivers.Endpoint{ID: "e1", Sandbox: "s1", IfName: "eth0", Addrs: []netip.Prefix{netip.MustParsePrefix("10.60.0.2/24")}}
	if err := h.d.PrepareEndpoint(n, ep); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("no handle")
	newHandle = func(*sandbox.NetNS) (*netlink.Handle, error) { return nil, boom }
	err := h.d.Attach(ctx, n, ep, sb)
	newHandle = (*sandbox.NetNS).NewHandle
	if !errors.Is(err, boom) {
		t.Fatalf("Attach: %v, want the handle's error", err)
	}
	if testutil.HasLink(t, sb, "eth0") {
		t.Fatal("the macvlan eth0 was left in the sandbox")
	}
}
