package firewall

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/netmgr/netmgr/internal/testutil"
)

// inNS runs fn on a thread switched into ns. Sockets fn creates stay in ns.
// If the thread cannot switch back it stays locked and dies with its
// goroutine. Do not call t.Fatal in fn.
func inNS(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns: %w", err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("restore netns: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// rtnl returns an rtnetlink handle whose socket lives in ns, so that no
// later call depends on the namespace of the calling thread.
func rtnl(t *testing.T, ns netns.NsHandle) *netlink.Handle {
	t.Helper()
	var h *netlink.Handle
	err := inNS(ns, func() (err error) {
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
		return err
	})
	if err != nil {
		t.Fatalf("open rtnetlink handle: %v", err)
	}
	t.Cleanup(h.Close)
	return h
}

// testNet is one bridge network of the functional test: a bridge in the
// host namespace and one client namespace plugged into it.
type testNet struct {
	Network
	gateway, addr netip.Prefix
	ns            netns.NsHandle
}

// topology builds, in fresh namespaces, a host that routes between the
// bridges of nets and an uplink to an outside namespace at 192.0.2.2.
func topology(t *testing.T, nets []*testNet) (host, outside netns.NsHandle) {
	t.Helper()
	host, outside = newNetNS(t), newNetNS(t)
	h := rtnl(t, host)

	// The uplink is created in the host with its peer placed straight into
	// the outside namespace.
	plug(t, h, "up0", nil, outside,
		netip.MustParsePrefix("192.0.2.1/24"), netip.MustParsePrefix("192.0.2.2/24"))

	for i, n := range nets {
		n.ns = newNetNS(t)
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: n.Ifaces[0]}}
		if err := h.LinkAdd(br); err != nil {
			t.Fatalf("add bridge %s: %v", n.Ifaces[0], err)
		}
		if err := h.AddrAdd(br, &netlink.Addr{IPNet: ipNet(n.gateway)}); err != nil {
			t.Fatalf("add address to %s: %v", n.Ifaces[0], err)
		}
		if err := h.LinkSetUp(br); err != nil {
			t.Fatalf("set %s up: %v", n.Ifaces[0], err)
		}
		plug(t, h, fmt.Sprintf("veth%d", i), br, n.ns, netip.Prefix{}, n.addr)
		routeVia(t, n.ns, n.gateway.Addr())
	}
	routeVia(t, outside, netip.MustParseAddr("192.0.2.1"))

	// sysctl writes act on the namespace of the writing process, so the
	// write runs in a process that nsenter moved into the host namespace.
	path := fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(host))
	out, err := exec.Command("nsenter", "--net="+path, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward").CombinedOutput()
	if err != nil {
		t.Fatalf("enable forwarding in host netns: %v\n%s", err, out)
	}
	return host, outside
}

// plug adds a veth pair whose host end, named name, is optionally enslaved
// to master and addressed with hostAddr, and whose peer is moved to peerNS as
// eth0 with peerAddr.
func plug(t *testing.T, h *netlink.Handle, name string, master *netlink.Bridge, peerNS netns.NsHandle, hostAddr, peerAddr netip.Prefix) {
	t.Helper()
	attrs := netlink.LinkAttrs{Name: name}
	if master != nil {
		attrs.MasterIndex = master.Attrs().Index
	}
	veth := &netlink.Veth{LinkAttrs: attrs, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(peerNS))}
	if err := h.LinkAdd(veth); err != nil {
		t.Fatalf("add veth %s: %v", name, err)
	}
	if hostAddr.IsValid() {
		if err := h.AddrAdd(veth, &netlink.Addr{IPNet: ipNet(hostAddr)}); err != nil {
			t.Fatalf("add address to %s: %v", name, err)
		}
	}
	if err := h.LinkSetUp(veth); err != nil {
		t.Fatalf("set %s up: %v", name, err)
	}
	p := rtnl(t, peerNS)
	eth0, err := p.LinkByName("eth0")
	if err != nil {
		t.Fatalf("find peer of %s: %v", name, err)
	}
	if err := p.AddrAdd(eth0, &netlink.Addr{IPNet: ipNet(peerAddr)}); err != nil {
		t.Fatalf("add address to peer of %s: %v", name, err)
	}
	if err := p.LinkSetUp(eth0); err != nil {
		t.Fatalf("set peer of %s up: %v", name, err)
	}
}

func routeVia(t *testing.T, ns netns.NsHandle, gw netip.Addr) {
	t.Helper()
	h := rtnl(t, ns)
	if err := h.RouteAdd(&netlink.Route{Gw: gw.AsSlice()}); err != nil {
		t.Fatalf("add default route via %s: %v", gw, err)
	}
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// echoServer answers every UDP datagram sent to addr:7 in ns with the
// source address it saw.
func echoServer(t *testing.T, ns netns.NsHandle, addr netip.Addr) {
	t.Helper()
	var conn net.PacketConn
	err := inNS(ns, func() (err error) {
		conn, err = net.ListenPacket("udp4", netip.AddrPortFrom(addr, 7).String())
		return err
	})
	if err != nil {
		t.Fatalf("listen in netns: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 64)
		for {
			_, from, err := conn.ReadFrom(buf)
			if err != nil {
				return
			}
			src := from.(*net.UDPAddr).AddrPort().Addr().Unmap()
			conn.WriteTo([]byte(src.String()), from)
		}
	}()
}

// probe sends a datagram from ns to dst's echo server and returns the
// source address the server saw, or ok false if no answer came in time.
func probe(t *testing.T, ns netns.NsHandle, dst netip.Addr, wait time.Duration) (seen string, ok bool) {
	t.Helper()
	var conn net.PacketConn
	err := inNS(ns, func() (err error) {
		// A fresh socket, hence a fresh conntrack entry and NAT decision.
		conn, err = net.ListenPacket("udp4", ":0")
		return err
	})
	if err != nil {
		t.Fatalf("open socket in netns: %v", err)
	}
	defer conn.Close()
	to := net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, 7))
	deadline := time.Now().Add(wait)
	buf := make([]byte, 64)
	for time.Now().Before(deadline) {
		if _, err := conn.WriteTo([]byte("ping"), to); err != nil {
			t.Fatalf("send to %s: %v", dst, err)
		}
		next := time.Now().Add(100 * time.Millisecond)
		if next.After(deadline) {
			next = deadline
		}
		conn.SetReadDeadline(next)
		n, _, err := conn.ReadFrom(buf)
		if err == nil {
			return string(buf[:n]), true
		}
	}
	return "", false
}

// TestTraffic checks isolation, internal networks and masquerading with
// real packets routed through a host namespace.
func TestTraffic(t *testing.T) {
	iso := &testNet{
		Network: Network{Name: "iso", Ifaces: []string{"br-iso"}, Internal: true,
			Subnets: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24")}},
		gateway: netip.MustParsePrefix("10.1.0.1/24"), addr: netip.MustParsePrefix("10.1.0.2/24"),
	}
	web := &testNet{
		Network: Network{Name: "web", Ifaces: []string{"br-web"}, Masquerade: true,
			Subnets: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/24")}},
		gateway: netip.MustParsePrefix("10.2.0.1/24"), addr: netip.MustParsePrefix("10.2.0.2/24"),
	}
	db := &testNet{
		Network: Network{Name: "db", Ifaces: []string{"br-db"},
			Subnets: []netip.Prefix{netip.MustParsePrefix("10.3.0.0/24")}},
		gateway: netip.MustParsePrefix("10.3.0.1/24"), addr: netip.MustParsePrefix("10.3.0.2/24"),
	}
	nets := []*testNet{iso, web, db}
	host, outside := topology(t, nets)
	outsideAddr := netip.MustParseAddr("192.0.2.2")
	echoServer(t, outside, outsideAddr)
	for _, n := range nets {
		echoServer(t, n.ns, n.addr.Addr())
	}
	echoServer(t, host, web.gateway.Addr())

	// A probe that must pass polls for a generous deadline (the first packets of a path can be lost
	// to neighbour resolution on a loaded machine); one that must be blocked is watched for a fixed
	// window, and each is paired with a path that must pass, so that neither can pass vacuously.
	const (
		pass  = testutil.ProbeDeadline
		block = testutil.BlockedWindow
	)
	expect := func(t *testing.T, what string, from netns.NsHandle, to netip.Addr, wantSeen string) {
		t.Helper()
		wait := pass
		if wantSeen == "" {
			wait = block
		}
		seen, ok := probe(t, from, to, wait)
		switch {
		case wantSeen == "" && ok:
			t.Errorf("%s: got through (seen as %s), want blocked", what, seen)
		case wantSeen != "" && !ok:
			t.Errorf("%s: blocked, want seen as %s", what, wantSeen)
		case seen != wantSeen:
			t.Errorf("%s: seen as %s, want %s", what, seen, wantSeen)
		}
	}

	// Without rules everything is routed and nothing is translated, so
	// whatever fails later is the firewall's doing.
	expect(t, "iso to outside, no rules", iso.ns, outsideAddr, "10.1.0.2")
	expect(t, "web to db, no rules", web.ns, db.addr.Addr(), "10.2.0.2")

	fw := newFirewall(t, host)
	if err := fw.Apply(t.Context(), []Network{iso.Network, web.Network, db.Network}); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	expect(t, "web to outside", web.ns, outsideAddr, "192.0.2.1")
	expect(t, "db to outside", db.ns, outsideAddr, "10.3.0.2")
	expect(t, "web to its gateway", web.ns, web.gateway.Addr(), "10.2.0.2") // input, not forward
	// The servers the blocked probes aim at answer the host (output, not forward), rules and all.
	expect(t, "host to web", host, web.addr.Addr(), "10.2.0.1")
	expect(t, "host to db", host, db.addr.Addr(), "10.3.0.1")
	expect(t, "host to iso", host, iso.addr.Addr(), "10.1.0.1")
	expect(t, "iso to outside", iso.ns, outsideAddr, "")
	expect(t, "web to db", web.ns, db.addr.Addr(), "")
	expect(t, "db to web", db.ns, web.addr.Addr(), "")
	expect(t, "web to iso", web.ns, iso.addr.Addr(), "")

	if err := fw.Remove(t.Context()); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	expect(t, "web to db after Remove", web.ns, db.addr.Addr(), "10.2.0.2")
}
