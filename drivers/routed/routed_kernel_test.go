package routed_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netmgr/netmgr/drivers/routed"
	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/sandbox"
)

type env struct {
	m      *netmgr.Manager
	host   *sandbox.NetNS
	hh     *netlink.Handle
	runDir string
}

// newEnv is a Manager working in a host namespace of its own, with state files of its own.
func newEnv(t testing.TB, opts ...netmgr.Option) *env {
	t.Helper()
	testutil.RequireRoot(t)
	host := testutil.NewNS(t, "host")
	stateDir, runDir := t.TempDir(), t.TempDir()
	m, err := netmgr.New(context.Background(), append([]netmgr.Option{netmgr.WithStateDir(stateDir), netmgr.WithRunDir(runDir),
		netmgr.WithHostNetNS(host.Path()), netmgr.WithLogger(testutil.Logger(t))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	hh, err := host.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		sbs, _ := m.Sandboxes(ctx)
		for _, s := range sbs {
			if err := m.DeleteSandbox(ctx, s.Name); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
		nets, _ := m.Networks(ctx)
		for _, n := range nets {
			if err := m.DeleteNetwork(ctx, n.Name); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
		m.Close()
		pins, _ := filepath.Glob(filepath.Join(runDir, "netns", "*"))
		for _, p := range pins {
			_ = sandbox.Remove(p)
		}
		hh.Close()
	})
	return &env{m: m, host: host, hh: hh, runDir: runDir}
}

func (e *env) network(t testing.TB, name, driver string, subnets ...string) *netmgr.Network {
	t.Helper()
	spec := netmgr.NetworkSpec{Name: name, Driver: driver}
	for _, s := range subnets {
		spec.Subnets = append(spec.Subnets, netip.MustParsePrefix(s))
	}
	n, err := e.m.CreateNetwork(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func (e *env) sandbox(t testing.TB, name, network string, publish ...netmgr.PortMapping) (*netmgr.Sandbox, *sandbox.NetNS) {
	t.Helper()
	sb, err := e.m.CreateSandbox(context.Background(), netmgr.SandboxSpec{Name: name, Networks: []netmgr.AttachSpec{{Network: network}}, Publish: publish})
	if err != nil {
		t.Fatal(err)
	}
	return sb, testutil.Open(t, sb.NetNS)
}

func ip4(sb *netmgr.Sandbox) string {
	for _, a := range sb.Attachments[0].Addrs {
		if a.Addr().Is4() {
			return a.Addr().String()
		}
	}
	return ""
}

// TestSingleHost is the single-host list: pods on a routed network reach each other, the
// host and an outside namespace (masqueraded); a published port works from outside, from the host
// (its address and 127.0.0.1) and by hairpin (from another pod and from the target itself); two
// routed networks, and a routed and a bridge network, are isolated both ways. The sandbox's address
// is a /32 with a default route via 169.254.1.1 on-link; the host has a /32 route and a permanent
// neighbour per pod; deleting leaves no link or route.
func TestSingleHost(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	out := testutil.NewOutside(t, e.host)
	rt := e.network(t, "rt", routed.Name, "10.40.0.0/24")
	e.network(t, "rt2", routed.Name, "10.41.0.0/24")
	e.network(t, "br", "bridge", "10.42.0.0/24")
	t.Cleanup(func() {
		for _, s := range []string{"a", "b", "c", "d", "web"} {
			if err := e.m.DeleteSandbox(ctx, s); err != nil {
				t.Error(err)
			}
		}
		testutil.WaitNoLinks(t, e.host, routed.LocalPrefix)
		for _, n := range []string{"rt", "rt2", "br"} {
			if err := e.m.DeleteNetwork(ctx, n); err != nil {
				t.Error(err)
			}
		}
		all, _ := e.hh.RouteList(nil, netlink.FAMILY_V4)
		for _, r := range all {
			if r.Dst != nil && (strings.HasPrefix(r.Dst.String(), "10.40.") || strings.HasPrefix(r.Dst.String(), "10.41.")) {
				t.Errorf("route left after delete: %v", r)
			}
		}
		if nb, _ := e.hh.NeighList(0, netlink.FAMILY_V4); len(nb) > 1 {
			t.Errorf("neighbours left after delete: %+v", nb)
		}
	})
	prefix := rt.Options[routed.OptIfPrefix]
	if !strings.HasPrefix(prefix, routed.LocalPrefix) || len(prefix) != 7 {
		t.Fatalf("ifprefix %q, want nmr and 4 hex digits", prefix)
	}

	a, aNS := e.sandbox(t, "a", "rt")
	b, bNS := e.sandbox(t, "b", "rt")
	c, cNS := e.sandbox(t, "c", "rt2")
	d, dNS := e.sandbox(t, "d", "br")
	web, webNS := e.sandbox(t, "web", "rt", netmgr.PortMapping{Protocol: "tcp", HostPort: 8080, ContainerPort: 80})
	if !strings.HasPrefix(a.Attachments[0].HostInterface, prefix) {
		t.Errorf("host end %s does not start with the network's prefix %s", a.Attachments[0].HostInterface, prefix)
	}
	if g := a.Attachments[0].Gateways; len(g) != 1 || g[0] != routed.NextHop4 {
		t.Errorf("recorded gateways %v, want [%s]", g, routed.NextHop4)
	}

	// The sandbox side: a /32, a default route via 169.254.1.1 on-link, a permanent neighbour for it.
	ah, err := aNS.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer ah.Close()
	eth0, err := ah.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	addrs, _ := ah.AddrList(eth0, netlink.FAMILY_V4)
	if len(addrs) != 1 || addrs[0].IPNet.String() != ip4(a)+"/32" {
		t.Errorf("eth0 addresses %v, want %s/32", addrs, ip4(a))
	}
	routes, _ := ah.RouteList(nil, netlink.FAMILY_V4)
	var def *netlink.Route
	for i, r := range routes {
		if r.Dst == nil || r.Dst.IP.IsUnspecified() {
			def = &routes[i]
		}
	}
	if def == nil || !def.Gw.Equal(routed.NextHop4.AsSlice()) || def.Flags&int(netlink.FLAG_ONLINK) == 0 {
		t.Errorf("default route %+v, want via 169.254.1.1 onlink", def)
	}
	// The host side: no address, a /32 route and a permanent neighbour for the pod.
	hostEnd, err := e.hh.LinkByName(a.Attachments[0].HostInterface)
	if err != nil {
		t.Fatal(err)
	}
	if as, _ := e.hh.AddrList(hostEnd, netlink.FAMILY_V4); len(as) != 0 {
		t.Errorf("host end has IPv4 addresses %v, want none", as)
	}
	hr, _ := e.hh.RouteList(hostEnd, netlink.FAMILY_V4)
	if len(hr) != 1 || hr[0].Dst.String() != ip4(a)+"/32" {
		t.Errorf("host routes on %s: %v, want one to %s/32", hostEnd.Attrs().Name, hr, ip4(a))
	}
	nb, _ := e.hh.NeighList(hostEnd.Attrs().Index, netlink.FAMILY_V4)
	if len(nb) != 1 || nb[0].State != netlink.NUD_PERMANENT || nb[0].IP.String() != ip4(a) {
		t.Errorf("host neighbours on %s: %+v, want %s permanent", hostEnd.Attrs().Name, nb, ip4(a))
	}

	// Reachability.
	if err := testutil.Ping(aNS, ip4(b)); err != nil {
		t.Errorf("a -> b: %v", err)
	}
	if err := testutil.Ping(bNS, ip4(a)); err != nil {
		t.Errorf("b -> a: %v", err)
	}
	if err := testutil.Ping(aNS, out.HostIP.String()); err != nil {
		t.Errorf("a -> host %s: %v", out.HostIP, err)
	}
	if err := testutil.Ping(e.host, ip4(a)); err != nil {
		t.Errorf("host -> a: %v", err)
	}
	srv := testutil.Listen(t, out.NS, net.JoinHostPort(out.Addr.String(), "7000"))
	if seen, err := testutil.Dial(aNS, srv); err != nil || seen != out.HostIP.String() {
		t.Errorf("a -> outside: seen as %q (%v), want masqueraded to %s", seen, err, out.HostIP)
	}
	testutil.Listen(t, bNS, ":9000")
	if seen, err := testutil.Dial(aNS, net.JoinHostPort(ip4(b), "9000")); err != nil || seen != ip4(a) {
		t.Errorf("a -> b:9000: seen as %q (%v), want a's own %s", seen, err, ip4(a))
	}

	// Published port 8080 -> web:80.
	testutil.Listen(t, webNS, ":80")
	hostPort := net.JoinHostPort(out.HostIP.String(), "8080")
	for _, p := range []struct {
		what string
		ns   *sandbox.NetNS
		addr string
	}{
		{"outside", out.NS, hostPort},
		{"host", e.host, hostPort},
		{"host 127.0.0.1", e.host, "127.0.0.1:8080"},
		{"hairpin from a", aNS, hostPort},
		{"hairpin from web itself", webNS, hostPort},
	} {
		if _, err := testutil.Dial(p.ns, p.addr); err != nil {
			t.Errorf("published port from %s (%s): %v", p.what, p.addr, err)
		}
	}
	// From outside, only the published port: web's address directly is dropped.
	if err := e.addRouteVia(out, "10.40.0.0/24"); err != nil {
		t.Fatal(err)
	}
	if err := testutil.DialBlocked(out.NS, net.JoinHostPort(ip4(web), "80")); err != nil {
		t.Errorf("outside -> web:80 directly: %v", err)
	}

	// Isolation: rt and rt2, rt and br, both ways (each paired with a path that works above).
	for _, p := range []struct {
		what string
		ns   *sandbox.NetNS
		ip   string
	}{
		{"rt -> rt2", aNS, ip4(c)},
		{"rt2 -> rt", cNS, ip4(a)},
		{"rt -> br", aNS, ip4(d)},
		{"br -> rt", dNS, ip4(a)},
	} {
		if err := testutil.PingBlocked(p.ns, p.ip); err != nil {
			t.Errorf("%s: %v", p.what, err)
		}
	}
	if err := testutil.Ping(cNS, out.HostIP.String()); err != nil {
		t.Errorf("rt2 -> host (the isolation probes' control): %v", err)
	}

	// Delete: nothing of the pods left on the host. This runs after the probes' sockets and handles
	// are closed (cleanups run last first), which would otherwise keep the namespaces alive.
}

// addRouteVia makes the outside namespace route cidr via the host, as a neighbour that routes the
// pods' subnet would.
func (e *env) addRouteVia(out *testutil.Outside, cidr string) error {
	oh, err := out.NS.NewHandle()
	if err != nil {
		return err
	}
	defer oh.Close()
	_, dst, _ := net.ParseCIDR(cidr)
	return oh.RouteReplace(&netlink.Route{Dst: dst, Gw: out.HostIP.AsSlice()})
}

// TestSubnetUnreachable: an address of a routed subnet that no pod has is answered as unreachable by
// the host (the subnet's unreachable route), not sent out by its default route.
func TestSubnetUnreachable(t *testing.T) {
	e := newEnv(t)
	e.network(t, "rt", routed.Name, "10.40.0.0/24")
	routes, err := e.hh.RouteGet(net.ParseIP("10.40.0.200"))
	if !errors.Is(err, unix.EHOSTUNREACH) {
		t.Errorf("route to an unused address: %+v, %v; want EHOSTUNREACH", routes, err)
	}
	if err := e.m.DeleteNetwork(context.Background(), "rt"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.hh.RouteGet(net.ParseIP("10.40.0.200")); errors.Is(err, unix.EHOSTUNREACH) {
		t.Error("the unreachable route outlived its network")
	}
}

// TestBadInput: user errors are one clear message and change nothing.
func TestBadInput(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for _, c := range []struct {
		spec netmgr.NetworkSpec
		want string
	}{
		{netmgr.NetworkSpec{Name: "x", Driver: routed.Name, Options: map[string]string{"bogus": "1"}, Subnets: []netip.Prefix{netip.MustParsePrefix("10.50.0.0/24")}}, "unknown routed option"},
		{netmgr.NetworkSpec{Name: "x", Driver: routed.Name, Options: map[string]string{"ifprefix": "eth0"}, Subnets: []netip.Prefix{netip.MustParsePrefix("10.50.0.0/24")}}, "is not \"nmr\""},
		{netmgr.NetworkSpec{Name: "x", Driver: routed.Name, Options: map[string]string{"masquerade": "maybe"}, Subnets: []netip.Prefix{netip.MustParsePrefix("10.50.0.0/24")}}, "not a boolean"},
		{netmgr.NetworkSpec{Name: "x", Driver: routed.GlobalName, Subnets: []netip.Prefix{netip.MustParsePrefix("10.50.0.0/16")}}, "cluster store"},
	} {
		_, err := e.m.CreateNetwork(ctx, c.spec)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("create %+v: %v, want an error with %q", c.spec, err, c.want)
			continue
		}
		t.Logf("%v", err)
	}
	if nets, _ := e.m.Networks(ctx); len(nets) != 0 {
		t.Errorf("networks after refused creates: %v", nets)
	}
}

// TestDualStack: an IPv6 pod gets a /128, a default route via fe80::1 (the host end's link-local
// gateway), and reaches another pod and the host; the host reaches it.
func TestDualStack(t *testing.T) {
	e := newEnv(t)
	e.network(t, "rt", routed.Name, "10.60.0.0/24", "fd00:60::/64")
	out := testutil.NewOutsideNet(t, e.host, "fd00:99::1/64", "fd00:99::2/64", "up6")
	a, aNS := e.sandbox(t, "a", "rt")
	b, _ := e.sandbox(t, "b", "rt")
	var a6, b6 string
	for _, p := range a.Attachments[0].Addrs {
		if p.Addr().Is6() {
			a6 = p.Addr().String()
		}
	}
	for _, p := range b.Attachments[0].Addrs {
		if p.Addr().Is6() {
			b6 = p.Addr().String()
		}
	}
	ah, err := aNS.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	routes, _ := ah.RouteList(nil, netlink.FAMILY_V6)
	ah.Close()
	found := false
	for _, r := range routes {
		if (r.Dst == nil || r.Dst.IP.IsUnspecified()) && r.Gw.Equal(routed.NextHop6.AsSlice()) {
			found = true
		}
	}
	if !found {
		t.Errorf("IPv6 routes %v, want a default via fe80::1", routes)
	}
	if err := testutil.Ping(aNS, b6); err != nil {
		t.Errorf("a -> b over IPv6: %v", err)
	}
	if err := testutil.Ping(aNS, out.HostIP.String()); err != nil {
		t.Errorf("a -> host over IPv6: %v", err)
	}
	if err := testutil.Ping(e.host, a6); err != nil {
		t.Errorf("host -> a over IPv6: %v", err)
	}
}

// TestRestore: gc puts back a host route deleted by hand, and re-makes a veth deleted by hand, with
// the recorded address, MAC and routes; the pod is reachable again each time.
func TestRestore(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.network(t, "rt", routed.Name, "10.80.0.0/24")
	a, aNS := e.sandbox(t, "a", "rt")
	_, bNS := e.sandbox(t, "b", "rt")
	if err := testutil.Ping(bNS, ip4(a)); err != nil {
		t.Fatal(err)
	}
	hostEnd := a.Attachments[0].HostInterface
	l, err := e.hh.LinkByName(hostEnd)
	if err != nil {
		t.Fatal(err)
	}
	routes, _ := e.hh.RouteList(l, netlink.FAMILY_V4)
	for _, r := range routes {
		if err := e.hh.RouteDel(&r); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := e.m.Recover(ctx)
	if err != nil || len(rep.Endpoints) != 1 {
		t.Fatalf("gc after the host route went: %+v, %v; want a/rt restored", rep, err)
	}
	if err := testutil.Ping(bNS, ip4(a)); err != nil {
		t.Errorf("b -> a after gc put the route back: %v", err)
	}
	if err := e.hh.LinkDel(l); err != nil {
		t.Fatal(err)
	}
	rep, err = e.m.Recover(ctx)
	if err != nil || len(rep.Endpoints) != 1 {
		t.Fatalf("gc after the veth went: %+v, %v; want a/rt restored", rep, err)
	}
	if err := testutil.Ping(bNS, ip4(a)); err != nil {
		t.Errorf("b -> a after gc re-made the veth: %v", err)
	}
	if err := testutil.Ping(aNS, ip4(a)); err != nil {
		t.Errorf("a -> itself: %v", err)
	}
	got, _ := e.m.Sandbox(ctx, "a")
	if got.Attachments[0].MAC != a.Attachments[0].MAC {
		t.Errorf("MAC after re-make %s, want the recorded %s", got.Attachments[0].MAC, a.Attachments[0].MAC)
	}
}

// TestSecondNetworkAndInternal: a sandbox whose default route is another network's (a bridge) still
// reaches its routed network's pods (the endpoint routes the network's subnet via 169.254.1.1), and
// pods of an internal routed network, which have no default route, reach each other.
func TestSecondNetworkAndInternal(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.network(t, "br", "bridge", "10.42.0.0/24")
	e.network(t, "rt", routed.Name, "10.43.0.0/24")
	if _, err := e.m.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "in", Driver: routed.Name, Internal: true, Subnets: []netip.Prefix{netip.MustParsePrefix("10.44.0.0/24")}}); err != nil {
		t.Fatal(err)
	}
	peer, _ := e.sandbox(t, "peer", "rt")
	both, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "both", Networks: []netmgr.AttachSpec{{Network: "br"}, {Network: "rt"}}})
	if err != nil {
		t.Fatal(err)
	}
	bothNS := testutil.Open(t, both.NetNS)
	if err := testutil.Ping(bothNS, ip4(peer)); err != nil {
		t.Errorf("bridge-routed sandbox -> routed peer: %v", err)
	}
	_, i1NS := e.sandbox(t, "i1", "in")
	i2, _ := e.sandbox(t, "i2", "in")
	if err := testutil.Ping(i1NS, ip4(i2)); err != nil {
		t.Errorf("internal pod -> internal pod: %v", err)
	}
}
