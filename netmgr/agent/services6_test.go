package agent_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr/service"
	"github.com/netmgr/netmgr/netmgr/service/proxy"
	"github.com/netmgr/netmgr/sandbox"
)

// pod6 makes a sandbox on the dual-stack pods network and returns its namespace and IPv6 address.
func (h *oneHost) pod6(name string, labels map[string]string) (*sandbox.NetNS, netip.Addr) {
	h.t.Helper()
	ns, _ := h.pod(name, labels)
	s, err := h.m.Sandbox(context.Background(), name)
	if err != nil {
		h.t.Fatal(err)
	}
	return ns, s.Attachments[0].IPv6.Addr()
}

// TestServicesIPv6: with an IPv6 service CIDR, services get IPv6 cluster IPs and the controller
// programs them (in the ip6 table netmgr_services): an IPv6 cluster IP reaches every endpoint's IPv6
// address, a service without endpoints is refused at once, an unallocated address of the CIDR is
// dropped, and an endpoint that goes leaves the rotation.
func TestServicesIPv6(t *testing.T) {
	h := newOneHostOn(t, netip.MustParsePrefix("10.89.0.0/24"), netip.MustParsePrefix("fd00:89::/64"))
	ctx := context.Background()
	cidr := netip.MustParsePrefix("fd00:96::/108")
	if err := h.reg.SetCIDRs(ctx, cidr); err != nil {
		t.Fatal(err)
	}
	web := map[string]string{"app": "web6"}
	for i := 1; i <= 3; i++ {
		ns, _ := h.pod6(fmt.Sprintf("web%d", i), web)
		serve(t, ns, 8080, fmt.Sprintf("web%d", i))
	}
	client, clientIP := h.pod6("client", nil)
	svc := h.service(service.Spec{Name: "web", Selector: web, Ports: []service.Port{{Port: 80, TargetPort: 8080}}})
	empty := h.service(service.Spec{Name: "empty", Selector: map[string]string{"app": "none"}, Ports: []service.Port{{Port: 80}}})
	if !cidr.Contains(svc.ClusterIP) || !cidr.Contains(empty.ClusterIP) {
		t.Fatalf("cluster IPs %s %s, want them from %s", svc.ClusterIP, empty.ClusterIP, cidr)
	}
	h.start()

	waitHit(t, client, addr(svc, 80))
	got := spread(t, client, addr(svc, 80), 60)
	for i := 1; i <= 3; i++ {
		if got[fmt.Sprintf("web%d", i)] == 0 {
			t.Errorf("60 connections to the IPv6 cluster IP: web%d never answered (%v)", i, got)
		}
	}
	if _, seen := waitHit(t, client, addr(svc, 80)); seen != clientIP.String() && !strings.HasPrefix(seen, "fd00:89::") {
		t.Errorf("backend saw %s, want an address of the pods network (the client is %s)", seen, clientIP)
	}

	t.Run("no endpoints", func(t *testing.T) { refusedAtOnce(t, client, addr(empty, 80)) })

	t.Run("unallocated address dropped", func(t *testing.T) {
		free := cidr.Addr().Next().Next()
		for free == svc.ClusterIP || free == empty.ClusterIP {
			free = free.Next()
		}
		_, _, err := hit(client, netip.AddrPortFrom(free, 80).String(), time.Second)
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("unallocated %s: want a timeout (dropped), got %v", free, err)
		}
	})

	t.Run("affinity", func(t *testing.T) { // a chained service (kube-proxy's layout) in the ip6 table
		sticky := h.service(service.Spec{Name: "sticky", Selector: web, Ports: []service.Port{{Port: 80, TargetPort: 8080}}, SessionAffinity: "ClientIP", AffinityTimeout: time.Minute})
		waitHit(t, client, addr(sticky, 80))
		if got := spread(t, client, addr(sticky, 80), 20); len(got) != 1 {
			t.Errorf("ClientIP affinity over IPv6: 20 connections reached %v, want one backend", got)
		}
	})

	t.Run("udp", func(t *testing.T) {
		dns := h.service(service.Spec{Name: "dns", Selector: web, Ports: []service.Port{{Port: 53, TargetPort: 8080, Protocol: "udp"}}})
		u := newUDPClient(t, client)
		deadline := time.Now().Add(testutil.ProbeDeadline)
		for !strings.HasPrefix(u.ask(addr(dns, 53), 300*time.Millisecond), "web") {
			if time.Now().After(deadline) {
				t.Fatal("UDP port of the IPv6 service never answered")
			}
		}
	})

	t.Run("hairpin", func(t *testing.T) {
		ns, _ := h.pod6("self1", map[string]string{"app": "self6"})
		self := h.service(service.Spec{Name: "self", Selector: map[string]string{"app": "self6"}, Ports: []service.Port{{Port: 80, TargetPort: 8080}}})
		serve(t, ns, 8080, "self1")
		if id, _ := waitHit(t, ns, addr(self, 80)); id != "self1" {
			t.Errorf("hairpin over IPv6 answered by %q", id)
		}
	})

	t.Run("table flushed", func(t *testing.T) {
		start := time.Now()
		nft(t, h.ns, "flush", "table", "ip6", proxy.TableName)
		waitHit(t, client, addr(svc, 80))
		t.Logf("flushed ip6 table repaired %v after the flush", time.Since(start).Round(time.Millisecond))
	})

	t.Run("endpoint removed", func(t *testing.T) {
		start := time.Now()
		if err := h.m.DeleteSandbox(ctx, "web3"); err != nil {
			t.Fatal(err)
		}
		waitGone(t, client, addr(svc, 80), "web3", start)
	})

	t.Run("ip6 table", func(t *testing.T) {
		out := nft(t, h.ns, "list", "table", "ip6", proxy.TableName)
		if !strings.Contains(out, svc.ClusterIP.String()) {
			t.Errorf("ip6 table lacks the cluster IP %s:\n%s", svc.ClusterIP, out)
		}
		nft(t, h.ns, "-j", "list", "ruleset") // nft can read (and print as JSON) every rule of both tables
	})
}

// TestServicesFromHost: a process of the host's namespace (not a pod) reaches a cluster IP, IPv4 and
// IPv6, and every endpoint answers; the connection is masqueraded to the host's address on the pods
// network (its source was the uplink's, chosen by the default route: one a backend on another host
// may not answer directly); a service without endpoints is refused at once from the host too.
func TestServicesFromHost(t *testing.T) {
	h := newOneHostOn(t, netip.MustParsePrefix("10.90.0.0/24"), netip.MustParsePrefix("fd00:90::/64"))
	ctx := context.Background()
	// The host's uplinks and default routes (a cluster IP is routed like any outside address).
	up4 := testutil.NewOutside(t, h.ns)
	up6 := testutil.NewOutsideNet(t, h.ns, "fd00:1::1/64", "fd00:1::2/64", "up6")
	hh, err := h.ns.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer hh.Close()
	for _, r := range []struct {
		dev string
		gw  netip.Addr
	}{{up4.HostDev, up4.Addr}, {up6.HostDev, up6.Addr}} {
		l, err := hh.LinkByName(r.dev)
		if err != nil {
			t.Fatal(err)
		}
		if err := hh.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: r.gw.AsSlice()}); err != nil {
			t.Fatalf("default route via %s: %v", r.gw, err)
		}
	}
	if err := h.reg.SetCIDRs(ctx, service.DefaultCIDR, netip.MustParsePrefix("fd00:97::/108")); err != nil {
		t.Fatal(err)
	}
	web := map[string]string{"app": "web"}
	for i := 1; i <= 2; i++ {
		ns, _ := h.pod(fmt.Sprintf("web%d", i), web)
		serve(t, ns, 8080, fmt.Sprintf("web%d", i))
	}
	ports := []service.Port{{Port: 80, TargetPort: 8080}}
	svc4 := h.service(service.Spec{Name: "web4", Selector: web, Ports: ports})
	svc6 := h.service(service.Spec{Name: "web6", Selector: web, Ports: ports, ClusterIP: netip.MustParseAddr("fd00:97::10")})
	empty := h.service(service.Spec{Name: "empty", Selector: map[string]string{"app": "none"}, Ports: ports})
	h.start()
	n, err := h.m.Network(ctx, "pods")
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range []*service.Service{svc4, svc6} {
		waitHit(t, h.ns, addr(s, 80))
		got := spread(t, h.ns, addr(s, 80), 30)
		if got["web1"] == 0 || got["web2"] == 0 {
			t.Errorf("30 connections from the host to %s: %v, want both endpoints", addr(s, 80), got)
		}
		if _, seen := waitHit(t, h.ns, addr(s, 80)); seen != n.Gateways[i].String() {
			t.Errorf("from the host to %s the backend saw %s, want the host's address on the pods network %s", addr(s, 80), seen, n.Gateways[i])
		}
	}
	refusedAtOnce(t, h.ns, addr(empty, 80))
}
