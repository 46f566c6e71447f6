package netmgr_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netmgr/netmgr/drivers"
	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/sandbox"
)

// routedNextHop is the next hop a routed driver gives its sandboxes: link-local, answered by the host
// end (proxy ARP), on no subnet of the sandbox.
var routedNextHop = netip.MustParseAddr("169.254.1.1")

// routedDriver plumbs like a routed (ptp) driver: a veth per endpoint, the sandbox's addresses as /32s
// (so no subnet gateway is on-link), and, for an offered IPv4 gateway, a default route via the
// link-local next hop on-link instead of the gateway. It ignores the network's subnet gateways, which
// is the point: the route is the driver's decision.
type routedDriver struct{ env drivers.Env }

var (
	_ drivers.Driver           = (*routedDriver)(nil)
	_ drivers.EndpointRestorer = (*routedDriver)(nil)
)

func (*routedDriver) PrepareNetwork(*drivers.Network, []*drivers.Network) error { return nil }
func (*routedDriver) CreateNetwork(context.Context, *drivers.Network) error     { return nil }
func (*routedDriver) DeleteNetwork(context.Context, *drivers.Network) error     { return nil }

func (*routedDriver) PrepareEndpoint(_ *drivers.Network, ep *drivers.Endpoint) error {
	ep.HostName = "nmr" + ep.ID[:8]
	ep.Routes = nil
	for _, g := range ep.Gateways {
		if g.Is4() {
			ep.Routes = append(ep.Routes, drivers.Route{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gw: routedNextHop, OnLink: true})
		}
	}
	return nil
}

func (d *routedDriver) Attach(_ context.Context, _ *drivers.Network, ep *drivers.Endpoint, sb *sandbox.NetNS) error {
	sh, err := sb.Handle()
	if err != nil {
		return err
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: ep.IfName, TxQLen: -1}, PeerName: ep.HostName, PeerNamespace: netlink.NsFd(d.env.Host.Fd())}
	if err := sh.LinkAdd(veth); err != nil {
		return fmt.Errorf("routed test driver: veth %s: %w", ep.IfName, err)
	}
	host, err := d.env.HostHandle.LinkByName(ep.HostName)
	if err == nil {
		err = d.env.HostHandle.LinkSetUp(host)
	}
	if err != nil {
		return err
	}
	// The sandbox's addresses as /32s: the subnet's gateway is not on-link.
	cp := *ep
	cp.Addrs = nil
	for _, a := range ep.Addrs {
		cp.Addrs = append(cp.Addrs, netip.PrefixFrom(a.Addr(), a.Addr().BitLen()))
	}
	link, err := drivers.ConfigureInterface(sh, &cp)
	if err != nil {
		return err
	}
	ep.Routes, ep.Gateways, ep.MAC = cp.Routes, cp.Gateways, link.Attrs().HardwareAddr.String()
	return nil
}

func (d *routedDriver) Detach(_ context.Context, _ *drivers.Network, ep *drivers.Endpoint, _ *sandbox.NetNS, _ drivers.DetachOptions) error {
	l, err := d.env.HostHandle.LinkByName(ep.HostName)
	if drivers.IsLinkNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := d.env.HostHandle.LinkDel(l); err != nil && !drivers.IsLinkNotFound(err) {
		return err
	}
	return nil
}

// RestoreEndpoint re-makes a veth that is gone, with the recorded routes, as the bridge driver does.
func (d *routedDriver) RestoreEndpoint(ctx context.Context, n *drivers.Network, ep *drivers.Endpoint, sb *sandbox.NetNS) (bool, error) {
	if _, err := d.env.HostHandle.LinkByName(ep.HostName); !drivers.IsLinkNotFound(err) {
		return false, err
	}
	return true, d.Attach(ctx, n, ep, sb)
}

func newRoutedDriver(env drivers.Env) (drivers.Driver, error) { return &routedDriver{env: env}, nil }

// defaultRouteV4 returns the sandbox's IPv4 default route, if it has one.
func defaultRouteV4(t *testing.T, path string) (netlink.Route, bool) {
	t.Helper()
	ns := testutil.Open(t, path)
	h, err := ns.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	routes, err := h.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if r.Type == unix.RTN_UNICAST && (r.Dst == nil || r.Dst.IP.IsUnspecified()) {
			return r, true
		}
	}
	return netlink.Route{}, false
}

// TestDetachMovesDriverDefaultRoute: detaching the network that holds the default route moves it to
// the remaining attachment by that attachment's driver's decision (drivers.Endpoint.Routes), not by its
// network's gateway: a routed driver's route is on-link via 169.254.1.1, and the subnet gateway is
// not even reachable from its /32 address. The moved route is recorded as the driver decided it, so
// that gc restores it when the endpoint's plumbing is re-made.
func TestDetachMovesDriverDefaultRoute(t *testing.T) {
	e := newEnv(t, netmgr.WithDriver("test-routed", newRoutedDriver))
	ctx := context.Background()
	e.network(t, "br", "10.128.0.0/24")
	if _, err := e.m.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "rt", Driver: "test-routed", Subnets: []netip.Prefix{netip.MustParsePrefix("10.129.0.0/24")}}); err != nil {
		t.Fatal(err)
	}
	sb, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "s", Networks: []netmgr.AttachSpec{{Network: "br"}, {Network: "rt"}}})
	if err != nil {
		t.Fatal(err)
	}
	if r, ok := defaultRouteV4(t, sb.NetNS); !ok || r.Gw.String() != "10.128.0.1" {
		t.Fatalf("default route before detach %v (%v), want via the bridge's 10.128.0.1", r, ok)
	}
	if err := e.m.Detach(ctx, "s", "br"); err != nil {
		t.Fatal(err)
	}
	check := func(when string) {
		t.Helper()
		r, ok := defaultRouteV4(t, sb.NetNS)
		if !ok {
			t.Fatalf("%s: no IPv4 default route, want one via %s on-link on eth1", when, routedNextHop)
		}
		if r.Gw.String() != routedNextHop.String() || r.Flags&int(netlink.FLAG_ONLINK) == 0 {
			t.Fatalf("%s: default route %v, want via %s on-link (the routed driver's)", when, r, routedNextHop)
		}
		got, err := e.m.Sandbox(ctx, "s")
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Attachments) != 1 || len(got.Attachments[0].Gateways) != 1 || got.Attachments[0].Gateways[0] != routedNextHop {
			t.Fatalf("%s: recorded attachments %+v, want rt's with gateway %s", when, got.Attachments, routedNextHop)
		}
	}
	check("after detaching br")

	// The endpoint's veth deleted by hand: gc re-makes it with the recorded routes, the moved one
	// included, on-link as the driver decided it.
	hh, err := e.host.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer hh.Close()
	got, _ := e.m.Sandbox(ctx, "s")
	l, err := hh.LinkByName(got.Attachments[0].HostInterface)
	if err != nil {
		t.Fatal(err)
	}
	if err := hh.LinkDel(l); err != nil {
		t.Fatal(err)
	}
	rep, err := e.m.Recover(ctx)
	if err != nil {
		t.Fatalf("gc: %v (%+v)", err, rep)
	}
	if len(rep.Endpoints) != 1 {
		t.Fatalf("gc restored endpoints %v, want s/rt", rep.Endpoints)
	}
	check("after gc re-made the endpoint")
	if err := e.m.DeleteSandbox(ctx, "s"); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"br", "rt"} {
		if err := e.m.DeleteNetwork(ctx, n); err != nil && !errors.Is(err, netmgr.ErrNotFound) {
			t.Error(err)
		}
	}
}
