package drivers_test

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netmgr/netmgr/drivers"
	"github.com/netmgr/netmgr/internal/testutil"
)

// The first interface of a namespace gets the default routes; a second one, whose network has a
// gateway of a family that already has its default route, gets none of that family, and its endpoint
// says so, without touching the caller's slice.
func TestConfigureInterfaceKeepsTheFirstDefaultRoute(t *testing.T) {
	ns := testutil.NewNS(t, "iface")
	h, err := ns.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for _, n := range []string{"eth0", "eth1"} {
		if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: n}, PeerName: n + "p"}); err != nil {
			t.Fatal(err)
		}
		p, err := h.LinkByName(n + "p")
		if err == nil {
			err = h.LinkSetUp(p)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	pfx, addr := netip.MustParsePrefix, netip.MustParseAddr
	ep0 := &drivers.Endpoint{Sandbox: "s0", IfName: "eth0", Addrs: []netip.Prefix{pfx("10.9.0.2/24")}, Gateways: []netip.Addr{addr("10.9.0.1")}}
	if _, err := drivers.ConfigureInterface(h, ep0); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ep0.Gateways, []netip.Addr{addr("10.9.0.1")}) {
		t.Errorf("first interface: gateways %v, want its own", ep0.Gateways)
	}
	planned := []netip.Addr{addr("10.8.0.1"), addr("fd00:8::1")}
	ep1 := &drivers.Endpoint{Sandbox: "s1", IfName: "eth1", Addrs: []netip.Prefix{pfx("10.8.0.2/24"), pfx("fd00:8::2/64")}, Gateways: planned}
	if _, err := drivers.ConfigureInterface(h, ep1); err != nil {
		t.Fatalf("second interface: %v", err)
	}
	if !slices.Equal(ep1.Gateways, []netip.Addr{addr("fd00:8::1")}) {
		t.Errorf("second interface: gateways %v, want only the IPv6 one (IPv4 has its default route)", ep1.Gateways)
	}
	if planned[0] != addr("10.8.0.1") || planned[1] != addr("fd00:8::1") {
		t.Errorf("the caller's gateways were overwritten: %v", planned)
	}
	for fam, want := range map[int]string{netlink.FAMILY_V4: "eth0", netlink.FAMILY_V6: "eth1"} {
		routes, err := h.RouteList(nil, fam)
		if err != nil {
			t.Fatal(err)
		}
		var devs []string
		for _, r := range routes {
			if r.Dst != nil {
				if ones, _ := r.Dst.Mask.Size(); ones != 0 {
					continue
				}
			}
			l, err := h.LinkByIndex(r.LinkIndex)
			if err != nil {
				t.Fatal(err)
			}
			devs = append(devs, l.Attrs().Name)
		}
		if !slices.Equal(devs, []string{want}) {
			t.Errorf("family %d: default routes on %v, want one on %s", fam, devs, want)
		}
	}
}

// A default route of another type counts only where it collides: an "unreachable default" with the
// route's own metric makes the add fail with EEXIST, taken as "the namespace has its default route"
// (the path two attachments racing into one namespace take); one with a high metric, as some setups
// keep as a fallback, does not stop the interface's own default route.
func TestConfigureInterfaceOtherDefaultRoutes(t *testing.T) {
	pfx, addr := netip.MustParsePrefix, netip.MustParseAddr
	for _, tc := range []struct {
		name     string
		priority int
		want     []netip.Addr
	}{
		{"same metric", 0, nil},
		{"high metric", 4278198272, []netip.Addr{addr("10.7.0.1")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := testutil.NewNS(t, "iface")
			h, err := ns.NewHandle()
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			if err := h.RouteAdd(&netlink.Route{Dst: drivers.IPNet(pfx("0.0.0.0/0")), Type: unix.RTN_UNREACHABLE, Priority: tc.priority}); err != nil {
				t.Fatal(err)
			}
			if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0p"}); err != nil {
				t.Fatal(err)
			}
			ep := &drivers.Endpoint{Sandbox: "s", IfName: "eth0", Addrs: []netip.Prefix{pfx("10.7.0.2/24")}, Gateways: []netip.Addr{addr("10.7.0.1")}}
			if _, err := drivers.ConfigureInterface(h, ep); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(ep.Gateways, tc.want) {
				t.Errorf("gateways %v, want %v", ep.Gateways, tc.want)
			}
		})
	}
}

// A driver decides the sandbox's routes: a routed driver's default route via an on-link link-local
// next hop, on an interface whose only address is a /32, is set as given and reported back; the
// offered gateways are not used when Routes are given.
func TestConfigureInterfaceDriverRoutes(t *testing.T) {
	ns := testutil.NewNS(t, "iface")
	h, err := ns.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0p"}); err != nil {
		t.Fatal(err)
	}
	if p, err := h.LinkByName("eth0p"); err != nil || h.LinkSetUp(p) != nil {
		t.Fatal("peer up", err)
	}
	pfx, addr := netip.MustParsePrefix, netip.MustParseAddr
	want := []drivers.Route{{Dst: pfx("0.0.0.0/0"), Gw: addr("169.254.1.1"), OnLink: true}}
	ep := &drivers.Endpoint{Sandbox: "s0", IfName: "eth0", Addrs: []netip.Prefix{pfx("10.7.0.5/32")},
		Gateways: []netip.Addr{addr("10.7.0.1")}, Routes: slices.Clone(want)}
	if _, err := drivers.ConfigureInterface(h, ep); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ep.Routes, want) {
		t.Errorf("routes after attach %v, want %v", ep.Routes, want)
	}
	if len(ep.Gateways) != 1 || ep.Gateways[0] != addr("169.254.1.1") {
		t.Errorf("gateways after attach %v, want the default route's next hop", ep.Gateways)
	}
	routes, err := h.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range routes {
		if r.Dst == nil || r.Dst.IP.IsUnspecified() {
			found = found || (r.Gw.Equal(addr("169.254.1.1").AsSlice()) && r.Flags&int(netlink.FLAG_ONLINK) != 0)
			if r.Gw.Equal(addr("10.7.0.1").AsSlice()) {
				t.Errorf("default route via the offered gateway %v, want the driver's", r.Gw)
			}
		}
	}
	if !found {
		t.Errorf("no on-link default route via 169.254.1.1 in %v", routes)
	}
}
