package agent_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/agent"
	"github.com/netmgr/netmgr/netmgr/dns"
	"github.com/netmgr/netmgr/netmgr/service"
	"github.com/netmgr/netmgr/netmgr/service/proxy"
	"github.com/netmgr/netmgr/sandbox"
)

// DNS in a cluster: every host's agent runs the service controller and the DNS server, which
// answers on each host's gateway of the overlay for the sandboxes of every node on it and for the
// services of the cluster.

// startNames runs h's agent with the service controller and the DNS server (upstream: an address
// nothing answers, so that nothing leaves the test; names under the cluster domain are answered
// without it).
func (tb *testbed) startNames(h *host) *agent.Agent {
	tb.t.Helper()
	a, err := agent.New(agent.Config{Manager: h.m, Cluster: h.cs, Underlay: h.addr, TTL: ttl, Resync: 5 * time.Second, Logger: testutil.Logger(tb.t),
		Controllers: []agent.Controller{
			proxy.New(proxy.Options{Resync: 500 * time.Millisecond}),
			&dns.Controller{Config: dns.Config{Upstreams: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:53")}}, ServicesFromStore: true},
		}})
	if err != nil {
		tb.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.stop, h.done, h.agent = cancel, make(chan error, 1), a
	go func() { h.done <- a.Run(ctx) }()
	return a
}

// gateway is h's gateway on network (its DNS server).
func gateway(t *testing.T, h *host, network string) netip.Addr {
	t.Helper()
	js, err := h.m.JoinedNetworks(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, j := range js {
		if j.Network == network && len(j.View.Gateways) > 0 {
			return j.View.Gateways[0]
		}
	}
	t.Fatalf("%s has no gateway on %s", h.name, network)
	return netip.Addr{}
}

// lookup resolves name with Go's own resolver, its queries sent from inside ns to server:53.
func lookup(ns *sandbox.NetNS, server netip.Addr, name string) ([]string, error) {
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var c net.Conn
		err := ns.Do(func() (err error) {
			c, err = (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, network, netip.AddrPortFrom(server, 53).String())
			return err
		})
		return c, err
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	addrs, err := r.LookupHost(ctx, name)
	slices.Sort(addrs)
	return addrs, err
}

// notFound reports whether err is the resolver's NXDOMAIN.
func notFound(err error) bool {
	var de *net.DNSError
	return errors.As(err, &de) && de.IsNotFound
}

// waitResolves waits until name resolves to want from ns at server, failing after within (0:
// ProbeDeadline), and returns how long it took.
func waitResolves(t *testing.T, ns *sandbox.NetNS, server netip.Addr, name string, want []string, within time.Duration) time.Duration {
	t.Helper()
	if within == 0 {
		within = testutil.ProbeDeadline
	}
	slices.Sort(want)
	start := time.Now()
	for {
		got, err := lookup(ns, server, name)
		if err == nil && slices.Equal(got, want) {
			return time.Since(start)
		}
		if time.Since(start) > within {
			t.Fatalf("%s at %s: %v, %v after %v; want %v", name, server, got, err, time.Since(start).Round(time.Millisecond), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitGoneName waits until name is NXDOMAIN from ns at server, failing after within.
func waitGoneName(t *testing.T, ns *sandbox.NetNS, server netip.Addr, name string, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		got, err := lookup(ns, server, name)
		if notFound(err) {
			return time.Since(start)
		}
		if time.Since(start) > within {
			t.Fatalf("%s at %s still %v, %v after %v", name, server, got, err, time.Since(start).Round(time.Millisecond))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestDNSCluster(t *testing.T) {
	tb := newTestbed(t, 3)
	createOverlay(t, tb.hosts[0], "ov", cidr)
	for _, h := range tb.hosts {
		tb.startNames(h)
	}
	waitJoined(t, "ov", tb.hosts...)
	for _, h := range tb.hosts {
		select {
		case <-h.agent.Ready():
		case <-time.After(20 * time.Second):
			t.Fatalf("%s's agent not ready", h.name)
		}
	}
	h1, h2, h3 := tb.hosts[0], tb.hosts[1], tb.hosts[2]
	gw1, gw3 := gateway(t, h1, "ov"), gateway(t, h3, "ov")
	client, clientIP := h1.pod(t, "client", "ov")
	client3, client3IP := h3.pod(t, "client3", "ov")
	// Each server is up and answers its own node's sandboxes.
	waitResolves(t, client, gw1, "client.cluster.local.", []string{clientIP.String()}, 0)
	waitResolves(t, client3, gw3, "client3.cluster.local.", []string{client3IP.String()}, 0)

	ctx := context.Background()
	s, err := h2.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "web2", Aliases: []string{"www"}, Labels: map[string]string{"app": "web"},
		Networks: []netmgr.AttachSpec{{Network: "ov"}}})
	if err != nil {
		t.Fatal(err)
	}
	created := time.Now()
	web2 := []string{s.Attachments[0].IPv4.Addr().String()}
	serve(t, testutil.Open(t, s.NetNS), 8080, "web2")

	t.Run("another host's sandbox", func(t *testing.T) {
		waitResolves(t, client, gw1, "web2.", web2, time.Until(created.Add(time.Second)))
		t.Logf("web2 (on host2) resolves from host1 %v after its creation", time.Since(created).Round(time.Millisecond))
		waitResolves(t, client, gw1, "web2.cluster.local.", web2, 0)
		waitResolves(t, client, gw1, "www.", web2, 0)   // its alias
		waitResolves(t, client3, gw3, "web2.", web2, 0) // and from the third host
		waitResolves(t, client3, gw3, "client.", []string{clientIP.String()}, 0)
		// And its address back to its name (PTR).
		r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var c net.Conn
			err := client.Do(func() (err error) {
				c, err = (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, network, netip.AddrPortFrom(gw1, 53).String())
				return err
			})
			return c, err
		}}
		if names, err := r.LookupAddr(ctx, web2[0]); err != nil || !slices.Contains(names, "web2.") {
			t.Errorf("PTR of web2's %s from host1: %v, %v; want web2.", web2[0], names, err)
		}
	})

	t.Run("service by name from another host", func(t *testing.T) {
		svc, err := service.New(h1.cs).Create(ctx, service.Spec{Name: "web", Selector: map[string]string{"app": "web"}, Ports: []service.Port{{Port: 80, TargetPort: 8080}}})
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"web.", "web.svc.cluster.local."} {
			waitResolves(t, client, gw1, name, []string{svc.ClusterIP.String()}, 0)
		}
		// Connect to the name: its address as the resolver gives it, port 80, reaches web2 on host2.
		addrs, err := lookup(client, gw1, "web.svc.cluster.local.")
		if err != nil || len(addrs) == 0 {
			t.Fatalf("web.svc.cluster.local.: %v %v", addrs, err)
		}
		id, seen := waitHit(t, client, net.JoinHostPort(addrs[0], "80"))
		if id != "web2" {
			t.Errorf("web:80 from host1 answered by %q, want web2 (on host2)", id)
		}
		t.Logf("web:80 from a pod on host1 reached %s, which saw %s", id, seen)
	})

	t.Run("sandbox deleted", func(t *testing.T) {
		s3, err := h3.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "db3", Networks: []netmgr.AttachSpec{{Network: "ov"}}})
		if err != nil {
			t.Fatal(err)
		}
		waitResolves(t, client, gw1, "db3.cluster.local.", []string{s3.Attachments[0].IPv4.Addr().String()}, 0)
		if err := h3.m.DeleteSandbox(ctx, "db3"); err != nil {
			t.Fatal(err)
		}
		d := waitGoneName(t, client, gw1, "db3.cluster.local.", time.Second)
		t.Logf("db3 (on host3) gone from host1's DNS %v after its delete", d.Round(time.Millisecond))
	})

	t.Run("node gone", func(t *testing.T) {
		h2.kill() // no revoke: the node's lease runs out after the TTL, and its records with it
		d := waitGoneName(t, client, gw1, "web2.cluster.local.", ttl+2*time.Second)
		t.Logf("web2 gone from host1's DNS %v after host2's agent died (lease TTL %v)", d.Round(time.Millisecond), ttl)
		waitGoneName(t, client3, gw3, "www.cluster.local.", 2*time.Second)
		// The service's name stays (its endpoints went with the node).
		if _, err := lookup(client, gw1, "web.svc.cluster.local."); err != nil {
			t.Errorf("service name after host2 died: %v", err)
		}
	})
}
