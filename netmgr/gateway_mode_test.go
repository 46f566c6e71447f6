package netmgr_test

import (
	"context"
	"errors"
	"net/netip"
	"os/exec"
	"testing"

	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr"
)

// TestGatewayMode (REVIEW §1.5): a neighbour that routes a network's subnet via the host reaches a
// sandbox's published ports only, unless the network is created with gateway_mode=routed.
func TestGatewayMode(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.network(t, "nat", "10.46.0.0/24")
	e.network(t, "rt", "10.47.0.0/24", func(s *netmgr.NetworkSpec) { s.Options = map[string]string{"gateway_mode": "routed"} })
	out := testutil.NewOutside(t, e.host)
	for _, sn := range []string{"10.46.0.0/24", "10.47.0.0/24"} {
		if o, err := exec.Command("nsenter", "--net="+out.NS.Path(), "ip", "route", "add", sn, "via", out.HostIP.String()).CombinedOutput(); err != nil {
			t.Fatalf("route in outside: %v %s", err, o)
		}
	}
	a, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "a", Networks: []netmgr.AttachSpec{{Network: "nat"}}, Publish: publish(t, "8080:80")})
	if err != nil {
		t.Fatal(err)
	}
	ans := testutil.Open(t, a.NetNS)
	b, bns := e.sandbox(t, "b", "rt")
	testutil.Listen(t, ans, ":80")
	testutil.Listen(t, bns, ":80")
	testutil.Listen(t, out.NS, out.Addr.String()+":80")
	ipA, ipB := a.Attachments[0].IPv4.Addr().String(), b.Attachments[0].IPv4.Addr().String()

	if err := testutil.DialBlocked(out.NS, ipA+":80"); err != nil {
		t.Errorf("outside reached an unpublished port of a nat-mode sandbox directly: %v", err)
	}
	if seen, err := testutil.Dial(out.NS, out.HostIP.String()+":8080"); err != nil || seen != out.Addr.String() {
		t.Errorf("published port: %q, %v", seen, err)
	}
	if seen, err := testutil.Dial(ans, out.Addr.String()+":80"); err != nil || seen != out.HostIP.String() {
		t.Errorf("nat-mode egress: seen as %q, %v; want masqueraded to %s", seen, err, out.HostIP)
	}
	if seen, err := testutil.Dial(out.NS, ipB+":80"); err != nil || seen != out.Addr.String() {
		t.Errorf("routed network: outside to the sandbox directly: %q, %v", seen, err)
	}
	if seen, err := testutil.Dial(bns, out.Addr.String()+":80"); err != nil || seen != ipB {
		t.Errorf("routed egress: seen as %q, %v; want the sandbox's own %s (no masquerade)", seen, err, ipB)
	}

	for _, bad := range []map[string]string{{"gateway_mode": "bogus"}, {"gateway_mode": "ROUTED"}} {
		_, err := e.m.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "bad", Driver: "bridge", Options: bad})
		if !errors.Is(err, netmgr.ErrInvalid) {
			t.Errorf("gateway_mode %v: %v, want ErrInvalid", bad, err)
		}
	}
}

// TestInternalHostUnreachable (FAULTS §16): root in an internal network's sandbox cannot reach the
// host, neither its gateway address nor another address routed to by hand.
func TestInternalHostUnreachable(t *testing.T) {
	e := newEnv(t)
	n := e.network(t, "in1", "10.33.0.0/24", func(s *netmgr.NetworkSpec) { s.Internal = true })
	out := testutil.NewOutside(t, e.host)
	_, ins := e.sandbox(t, "i1", "in1")
	testutil.Listen(t, e.host, out.HostIP.String()+":7777")
	testutil.Listen(t, e.host, n.Gateways[0].String()+":7777")
	if o, err := exec.Command("nsenter", "--net="+ins.Path(), "ip", "route", "add", "192.0.2.0/24", "via", n.Gateways[0].String()).CombinedOutput(); err != nil {
		t.Fatalf("route in sandbox: %v %s", err, o)
	}
	for _, dst := range []string{out.HostIP.String(), n.Gateways[0].String()} {
		if _, err := testutil.Dial(e.host, dst+":7777"); err != nil {
			t.Errorf("the host's own server at %s:7777 does not answer, the test proves nothing: %v", dst, err)
		}
		if err := testutil.DialBlocked(ins, dst+":7777"); err != nil {
			t.Errorf("internal sandbox reached the host at %s:7777: %v", dst, err)
		}
	}
}

// TestDirectAccessIPv6: the protection holds for IPv6 as well: a neighbour routing a nat-mode
// network's IPv6 subnet via the host reaches its published port only, while on a routed network the
// same path reaches the sandbox.
func TestDirectAccessIPv6(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.network(t, "ds", "10.49.0.0/24", func(s *netmgr.NetworkSpec) {
		s.Subnets = append(s.Subnets, netip.MustParsePrefix("fd00:49::/64"))
	})
	e.network(t, "rt6", "10.50.0.0/24", func(s *netmgr.NetworkSpec) {
		s.Subnets = append(s.Subnets, netip.MustParsePrefix("fd00:50::/64"))
		s.Options = map[string]string{"gateway_mode": "routed"}
	})
	out6 := testutil.NewOutsideNet(t, e.host, "2001:db8::1/64", "2001:db8::2/64", "up6")
	for _, sn := range []string{"fd00:49::/64", "fd00:50::/64"} {
		if o, err := exec.Command("nsenter", "--net="+out6.NS.Path(), "ip", "-6", "route", "add", sn, "via", "2001:db8::1").CombinedOutput(); err != nil {
			t.Fatalf("route in outside: %v %s", err, o)
		}
	}
	a, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "a", Networks: []netmgr.AttachSpec{{Network: "ds"}}, Publish: publish(t, "8080:80")})
	if err != nil {
		t.Fatal(err)
	}
	testutil.Listen(t, testutil.Open(t, a.NetNS), ":80")
	b, bns := e.sandbox(t, "b", "rt6")
	testutil.Listen(t, bns, ":80")
	podA := netip.AddrPortFrom(a.Attachments[0].IPv6.Addr(), 80).String()
	podB := netip.AddrPortFrom(b.Attachments[0].IPv6.Addr(), 80).String()
	// The host talks to both first, so that it has their neighbour entries: here a first packet
	// from outside to a silent sandbox can be lost to neighbour discovery on the bridge, firewall
	// or not.
	for _, p := range []string{podA, podB} {
		if _, err := testutil.Dial(e.host, p); err != nil {
			t.Fatalf("host to %s: %v", p, err)
		}
	}
	if seen, err := testutil.Dial(out6.NS, podB); err != nil || seen != "2001:db8::2" {
		t.Fatalf("routed network over IPv6: %q, %v: the path does not work, the test proves nothing", seen, err)
	}
	if err := testutil.DialBlocked(out6.NS, podA); err != nil {
		t.Errorf("outside reached an unpublished IPv6 pod port directly: %v", err)
	}
	if seen, err := testutil.Dial(out6.NS, "[2001:db8::1]:8080"); err != nil || seen != "2001:db8::2" {
		t.Errorf("published port over IPv6: %q, %v", seen, err)
	}
}
