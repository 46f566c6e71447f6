package netmgr_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/sandbox"
)

// lan is the Ethernet segment a macvlan parent sits on: the parent is a veth in the test host
// namespace, its peer is eth0 of another namespace holding the segment's router (the network's
// gateway), so nothing leaves the machine.
type lan struct {
	ns     *sandbox.NetNS
	parent string
}

// newLAN plugs parent (in e.host) into a new LAN namespace whose eth0 has the given addresses.
func newLAN(t *testing.T, e *env, parent string, mtu int, addrs ...string) *lan {
	t.Helper()
	ns := testutil.NewNS(t, "lan")
	hh, err := e.host.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer hh.Close()
	lh, err := ns.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer lh.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: parent, MTU: mtu}, PeerName: "eth0", PeerNamespace: netlink.NsFd(ns.Fd())}
	if err := hh.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	if err := hh.LinkSetUp(veth); err != nil {
		t.Fatal(err)
	}
	eth0, err := lh.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		na, err := netlink.ParseAddr(a)
		if err != nil {
			t.Fatal(err)
		}
		na.Flags = 0x02 // IFA_F_NODAD
		if err := lh.AddrAdd(eth0, na); err != nil {
			t.Fatal(err)
		}
	}
	if err := lh.LinkSetMTU(eth0, mtu); err != nil {
		t.Fatal(err)
	}
	if err := lh.LinkSetUp(eth0); err != nil {
		t.Fatal(err)
	}
	return &lan{ns: ns, parent: parent}
}

func macvlanNet(name, parent string, opts map[string]string, subnets ...string) netmgr.NetworkSpec {
	spec := netmgr.NetworkSpec{Name: name, Driver: "macvlan", Options: map[string]string{"parent": parent}}
	for k, v := range opts {
		spec.Options[k] = v
	}
	for _, s := range subnets {
		p := netip.MustParsePrefix(s)
		spec.Subnets = append(spec.Subnets, p)
		spec.Gateways = append(spec.Gateways, p.Addr().Next()) // the LAN's router is .1 / ::1
	}
	return spec
}

func linkOf(t *testing.T, ns *sandbox.NetNS, name string) netlink.Link {
	t.Helper()
	h, err := ns.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestMacvlanPods: two sandboxes on a macvlan network reach each other and the segment's router over
// IPv4 and IPv6, take the parent's MTU, and (without a shim) cannot be reached from the host.
func TestMacvlanPods(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	l := newLAN(t, e, "lan0", 1400, "10.50.0.1/24", "2001:db8:50::1/64")
	// The host's own address on the segment, to show what the shim is for.
	hh, err := e.host.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer hh.Close()
	a0, _ := netlink.ParseAddr("10.50.0.200/24")
	if err := hh.AddrAdd(linkOf(t, e.host, "lan0"), a0); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.CreateNetwork(ctx, macvlanNet("mv", "lan0", nil, "10.50.0.0/24", "2001:db8:50::/64")); err != nil {
		t.Fatal(err)
	}
	a, ans := e.sandbox(t, "a", "mv")
	b, bns := e.sandbox(t, "b", "mv")
	for _, s := range []*netmgr.Sandbox{a, b} {
		at := s.Attachments[0]
		if !at.IPv4.IsValid() || !at.IPv6.IsValid() || len(at.Gateways) != 2 {
			t.Fatalf("%s: attachment %+v, want IPv4, IPv6 and two gateways", s.Name, at)
		}
	}
	link := linkOf(t, ans, "eth0")
	if link.Type() != "macvlan" || link.Attrs().MTU != 1400 {
		t.Errorf("eth0 is a %s with MTU %d, want a macvlan with the parent's MTU 1400", link.Type(), link.Attrs().MTU)
	}
	if mv := link.(*netlink.Macvlan); mv.Mode != netlink.MACVLAN_MODE_BRIDGE {
		t.Errorf("mode %v, want bridge", mv.Mode)
	}
	if link.Attrs().HardwareAddr.String() != a.Attachments[0].MAC {
		t.Errorf("recorded MAC %s, kernel %s", a.Attachments[0].MAC, link.Attrs().HardwareAddr)
	}
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
	srv := testutil.Listen(t, bns, ":0")
	_, port, _ := net.SplitHostPort(srv)
	if seen, err := testutil.Dial(ans, net.JoinHostPort(b.Attachments[0].IPv6.Addr().String(), port)); err != nil || seen != a.Attachments[0].IPv6.Addr().String() {
		t.Errorf("a->b over IPv6: seen as %q (%v)", seen, err)
	}
	// The segment's router, beyond the parent, and something behind it through the default route.
	rsrv := testutil.Listen(t, l.ns, ":0")
	_, rport, _ := net.SplitHostPort(rsrv)
	for _, gw := range []string{"10.50.0.1", "2001:db8:50::1"} {
		if err := testutil.Ping(ans, gw); err != nil {
			t.Error(err)
		}
		if seen, err := testutil.Dial(bns, net.JoinHostPort(gw, rport)); err != nil || !b.Attachments[0].IPv4.Contains(netip.MustParseAddr(seen)) && !b.Attachments[0].IPv6.Contains(netip.MustParseAddr(seen)) {
			t.Errorf("b->router %s: seen as %q (%v), want b's own address", gw, seen, err)
		}
	}
	// The host's address on the parent is not reachable from its macvlans, nor they from it.
	if err := testutil.PingBlocked(e.host, a.Attachments[0].IPv4.Addr().String()); err != nil {
		t.Errorf("host reached a pod through the macvlan parent; the kernel should not deliver that: %v", err)
	}

	// Removal leaves nothing in the sandbox namespace to hold the address.
	if err := e.m.DeleteSandbox(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if err := testutil.PingBlocked(ans, b.Attachments[0].IPv4.Addr().String()); err != nil {
		t.Errorf("b's address still answers after b was removed: %v", err)
	}
}

// TestMacvlanShim: with shim=true the host reaches its pods (and they it) through a macvlan of its own.
func TestMacvlanShim(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	newLAN(t, e, "lan0", 1500, "10.51.0.1/24", "2001:db8:51::1/64")
	n, err := e.m.CreateNetwork(ctx, macvlanNet("mv", "lan0", map[string]string{"shim": "true"}, "10.51.0.0/24", "2001:db8:51::/64"))
	if err != nil {
		t.Fatal(err)
	}
	shimName := n.Options["shim_name"]
	shim6 := netip.MustParseAddr("2001:db8:51::ffff:ffff:ffff:ffff")
	if n.Options["shim_ip"] != "10.51.0.254,"+shim6.String() || !strings.HasPrefix(shimName, "nmsh") {
		t.Fatalf("shim options %v", n.Options)
	}
	shim := linkOf(t, e.host, shimName)
	if mv, ok := shim.(*netlink.Macvlan); !ok || mv.Mode != netlink.MACVLAN_MODE_BRIDGE {
		t.Fatalf("shim %s is %T %+v, want a bridge-mode macvlan", shimName, shim, shim)
	}
	a, ans := e.sandbox(t, "a", "mv")
	_, bns := e.sandbox(t, "b", "mv")
	for _, p := range []netip.Prefix{a.Attachments[0].IPv4, a.Attachments[0].IPv6} {
		if err := testutil.Ping(e.host, p.Addr().String()); err != nil {
			t.Errorf("host -> pod through the shim: %v", err)
		}
	}
	srv := testutil.Listen(t, ans, ":0")
	_, port, _ := net.SplitHostPort(srv)
	if seen, err := testutil.Dial(e.host, net.JoinHostPort(a.Attachments[0].IPv4.Addr().String(), port)); err != nil || seen != "10.51.0.254" {
		t.Errorf("host -> pod: seen as %q (%v), want the shim address 10.51.0.254", seen, err)
	}
	hsrv := testutil.Listen(t, e.host, ":0")
	_, hport, _ := net.SplitHostPort(hsrv)
	if _, err := testutil.Dial(bns, net.JoinHostPort(shim6.String(), hport)); err != nil {
		t.Errorf("pod -> host's shim over IPv6: %v", err)
	}
	// The shim address is never a pod's.
	_, err = e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "x", Networks: []netmgr.AttachSpec{{Network: "mv", IPs: []netip.Addr{netip.MustParseAddr("10.51.0.254")}}}})
	if !errors.Is(err, netmgr.ErrExists) {
		t.Errorf("static shim address: %v, want ErrExists", err)
	}
	// Removing a pod removes its host routes; removing the network, the shim.
	if err := e.m.DeleteSandbox(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	hh, err := e.host.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer hh.Close()
	routes, _ := hh.RouteList(shim, netlink.FAMILY_ALL)
	for _, r := range routes {
		if r.Dst != nil && (r.Dst.IP.Equal(a.Attachments[0].IPv4.Addr().AsSlice()) || r.Dst.IP.Equal(a.Attachments[0].IPv6.Addr().AsSlice())) {
			t.Errorf("route to removed pod left: %s", r)
		}
	}
	if err := e.m.DeleteSandbox(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if err := e.m.DeleteNetwork(ctx, "mv"); err != nil {
		t.Fatal(err)
	}
	if testutil.HasLink(t, e.host, shimName) {
		t.Error("shim left after the network was removed")
	}
}

// TestMacvlanModes: private mode keeps pods of one parent apart; passthru gives the parent to one pod.
func TestMacvlanModes(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	newLAN(t, e, "lan0", 1500, "10.52.0.1/24")
	newLAN(t, e, "lan1", 1500, "10.53.0.1/24")
	if _, err := e.m.CreateNetwork(ctx, macvlanNet("priv", "lan0", map[string]string{"mode": "private"}, "10.52.0.0/24")); err != nil {
		t.Fatal(err)
	}
	a, ans := e.sandbox(t, "a", "priv")
	b, _ := e.sandbox(t, "b", "priv")
	if err := testutil.PingBlocked(ans, b.Attachments[0].IPv4.Addr().String()); err != nil {
		t.Errorf("two pods of a private macvlan network reached each other: %v", err)
	}
	if err := testutil.Ping(ans, "10.52.0.1"); err != nil {
		t.Errorf("private pod -> router: %v", err)
	}
	if got := linkOf(t, ans, "eth0").(*netlink.Macvlan).Mode; got != netlink.MACVLAN_MODE_PRIVATE {
		t.Errorf("mode %v, want private", got)
	}
	_ = a

	if _, err := e.m.CreateNetwork(ctx, macvlanNet("pass", "lan1", map[string]string{"mode": "passthru"}, "10.53.0.0/24")); err != nil {
		t.Fatal(err)
	}
	_, pns := e.sandbox(t, "p", "pass")
	if err := testutil.Ping(pns, "10.53.0.1"); err != nil {
		t.Errorf("passthru pod -> router: %v", err)
	}
	before := e.snapshot(t)
	_, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "q", Networks: []netmgr.AttachSpec{{Network: "pass"}}})
	if !errors.Is(err, netmgr.ErrFull) {
		t.Errorf("second sandbox on a passthru network: %v, want ErrFull", err)
	}
	if after := e.snapshot(t); after != before {
		t.Errorf("failed attach changed state:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

func TestMacvlanBadInput(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	newLAN(t, e, "lan0", 1500, "10.54.0.1/24")
	newLAN(t, e, "lan1", 1500)
	newLAN(t, e, "down0", 1500)
	hh, err := e.host.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer hh.Close()
	if err := hh.LinkSetDown(linkOf(t, e.host, "down0")); err != nil {
		t.Fatal(err)
	}
	// Someone else's macvlan on lan1, in private mode.
	other := &netlink.Macvlan{LinkAttrs: netlink.LinkAttrs{Name: "theirs", ParentIndex: linkOf(t, e.host, "lan1").Attrs().Index}, Mode: netlink.MACVLAN_MODE_PRIVATE}
	if err := hh.LinkAdd(other); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.CreateNetwork(ctx, macvlanNet("mv", "lan0", nil, "10.54.0.0/24")); err != nil {
		t.Fatal(err)
	}
	e.network(t, "web", "10.55.0.0/24")
	netCase := func(spec netmgr.NetworkSpec) func() error {
		return func() error { _, err := e.m.CreateNetwork(ctx, spec); return err }
	}
	opts := func(kv ...string) map[string]string {
		m := map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	noParent := macvlanNet("x", "", nil, "10.56.0.0/24")
	delete(noParent.Options, "parent")
	mtu := macvlanNet("x", "lan0", nil, "10.56.0.0/24")
	mtu.MTU = 9000
	cases := []struct {
		name string
		do   func() error
		want error
	}{
		{"no parent option", netCase(noParent), netmgr.ErrInvalid},
		{"missing parent", netCase(macvlanNet("x", "nosuch0", nil, "10.56.0.0/24")), netmgr.ErrNotFound},
		{"parent down", netCase(macvlanNet("x", "down0", nil, "10.56.0.0/24")), netmgr.ErrInvalid},
		{"parent carries a macvlan in another mode", netCase(macvlanNet("x", "lan1", nil, "10.56.0.0/24")), netmgr.ErrInvalid},
		{"parent used by a network in another mode", netCase(macvlanNet("x", "lan0", opts("mode", "vepa"), "10.56.0.0/24")), netmgr.ErrInvalid},
		{"passthru on a used parent", netCase(macvlanNet("x", "lan0", opts("mode", "passthru"), "10.56.0.0/24")), netmgr.ErrInvalid},
		{"unknown mode", netCase(macvlanNet("x", "lan1", opts("mode", "source"), "10.56.0.0/24")), netmgr.ErrInvalid},
		{"unknown option", netCase(macvlanNet("x", "lan1", opts("colour", "red"), "10.56.0.0/24")), netmgr.ErrInvalid},
		{"no subnet", netCase(macvlanNet("x", "lan1", opts("mode", "private"))), netmgr.ErrInvalid},
		{"shim not boolean", netCase(macvlanNet("x", "lan1", opts("mode", "private", "shim", "yes please"), "10.56.0.0/24")), netmgr.ErrInvalid},
		{"shim in private mode", netCase(macvlanNet("x", "lan1", opts("mode", "private", "shim", "true"), "10.56.0.0/24")), netmgr.ErrInvalid},
		{"shim_ip outside the subnet", netCase(macvlanNet("x", "lan0", opts("shim", "true", "shim_ip", "10.99.0.9"), "10.56.0.0/24")), netmgr.ErrInvalid},
		{"shim_ip is the gateway", netCase(macvlanNet("x", "lan0", opts("shim", "true", "shim_ip", "10.56.0.1"), "10.56.0.0/24")), netmgr.ErrInvalid},
		{"shim_ip without shim", netCase(macvlanNet("x", "lan0", opts("shim_ip", "10.56.0.9"), "10.56.0.0/24")), netmgr.ErrInvalid},
		{"mtu above the parent's", netCase(mtu), netmgr.ErrInvalid},
		{"overlapping subnet", netCase(macvlanNet("x", "lan0", nil, "10.54.0.0/16")), netmgr.ErrInUse},
		{"publish on a macvlan network", func() error {
			_, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "y", Networks: []netmgr.AttachSpec{{Network: "mv"}}, Publish: publish(t, "8080:80")})
			return err
		}, netmgr.ErrInvalid},
		{"interface name too long", func() error {
			_, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "y", Networks: []netmgr.AttachSpec{{Network: "mv", IfName: "averyverylongifname"}}})
			return err
		}, netmgr.ErrInvalid},
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
			t.Log(err)
			if after := e.snapshot(t); after != before {
				t.Errorf("state changed:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
}

// TestMacvlanAndBridgeRefusals: requests the kernel would refuse late with a bare errno, or accept and
// then break (FAULTS §12, §15), are refused up front with ErrInvalid, and change nothing.
func TestMacvlanAndBridgeRefusals(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	newLAN(t, e, "lan0", 1500, "10.57.0.1/24")
	if _, err := e.m.CreateNetwork(ctx, macvlanNet("mv", "lan0", nil, "10.57.0.0/24")); err != nil {
		t.Fatal(err)
	}
	e.network(t, "b1", "10.58.0.0/24")
	netCase := func(spec netmgr.NetworkSpec) func() error {
		return func() error { _, err := e.m.CreateNetwork(ctx, spec); return err }
	}
	bridgeNet := func(name string, mtu int, subnets ...string) netmgr.NetworkSpec {
		spec := netmgr.NetworkSpec{Name: name, Driver: "bridge", MTU: mtu}
		for _, s := range subnets {
			spec.Subnets = append(spec.Subnets, netip.MustParsePrefix(s))
		}
		return spec
	}
	mv6 := macvlanNet("x2", "lan0", nil, "10.60.0.0/24", "fd00:60::/64")
	mv6.MTU = 1279
	sbCase := func(network, mac string) func() error {
		return func() error {
			_, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "y", Networks: []netmgr.AttachSpec{{Network: network, MAC: mac}}})
			return err
		}
	}
	cases := []struct {
		name string
		do   func() error
		msg  string
	}{
		{"macvlan on loopback", netCase(macvlanNet("x1", "lo", nil, "10.59.0.0/24")), "loopback"},
		{"bridge, IPv6 with mtu 1279", netCase(bridgeNet("x3", 1279, "10.61.0.0/24", "fd00:61::/64")), "IPv6 needs an MTU of at least 1280"},
		{"macvlan, IPv6 with mtu 1279", netCase(mv6), "IPv6 needs an MTU of at least 1280"},
		{"loopback subnet", netCase(bridgeNet("x4", 0, "127.0.0.0/24")), "127.0.0.0/8"},
		{"multicast subnet", netCase(bridgeNet("x5", 0, "224.0.0.0/24")), "224.0.0.0/4"},
		{"link-local IPv6 subnet", netCase(bridgeNet("x6", 0, "fe80::/64")), "fe80::/10"},
		{"broadcast mac on a bridge", sbCase("b1", "ff:ff:ff:ff:ff:ff"), "broadcast"},
		{"multicast mac on a bridge", sbCase("b1", "01:00:5e:00:00:01"), "multicast"},
		{"zero mac on a macvlan", sbCase("mv", "00:00:00:00:00:00"), "all zeros"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := e.snapshot(t)
			err := tc.do()
			if !errors.Is(err, netmgr.ErrInvalid) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("got %v, want ErrInvalid saying %q", err, tc.msg)
			}
			if msg := err.Error(); strings.Contains(msg, "\n") {
				t.Errorf("error is not one line: %q", msg)
			}
			if after := e.snapshot(t); after != before {
				t.Errorf("state changed:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
}
