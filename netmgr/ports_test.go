package netmgr_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/firewall"
	"github.com/netmgr/netmgr/netmgr/store"
	"github.com/netmgr/netmgr/sandbox"
)

func publish(t *testing.T, specs ...string) []netmgr.PortMapping {
	t.Helper()
	var out []netmgr.PortMapping
	for _, s := range specs {
		pm, err := netmgr.ParsePublish(s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, pm...)
	}
	return out
}

// udpEcho answers datagrams to addr in ns with the source address it saw, until cleanup.
func udpEcho(t *testing.T, ns *sandbox.NetNS, addr string) {
	t.Helper()
	var conn net.PacketConn
	if err := ns.Do(func() (err error) {
		conn, err = net.ListenPacket("udp", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 64)
		for {
			_, from, err := conn.ReadFrom(buf)
			if err != nil {
				return
			}
			conn.WriteTo([]byte(from.(*net.UDPAddr).AddrPort().Addr().Unmap().String()), from)
		}
	}()
}

// udpAsk sends datagrams from ns to addr until an answer comes, for up to testutil.ProbeDeadline, and
// returns it.
func udpAsk(ns *sandbox.NetNS, addr string) (string, error) {
	return udpAskFor(ns, addr, testutil.ProbeDeadline)
}

// udpBlocked is udpAsk for a port that must not answer: it watches for testutil.BlockedWindow.
func udpBlocked(ns *sandbox.NetNS, addr string) error {
	if seen, err := udpAskFor(ns, addr, testutil.BlockedWindow); err == nil {
		return fmt.Errorf("udp %s answered %q, want blocked", addr, seen)
	}
	return nil
}

func udpAskFor(ns *sandbox.NetNS, addr string, wait time.Duration) (string, error) {
	var conn net.Conn
	if err := ns.Do(func() (err error) {
		conn, err = net.Dial("udp", addr)
		return err
	}); err != nil {
		return "", err
	}
	defer conn.Close()
	buf := make([]byte, 64)
	for deadline := time.Now().Add(wait); time.Now().Before(deadline); {
		if _, err := conn.Write([]byte("ping")); err != nil {
			// An ICMP port unreachable (the server not up yet) fails the next write: try again.
			time.Sleep(100 * time.Millisecond)
			continue
		}
		_ = conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if n, err := conn.Read(buf); err == nil {
			return string(buf[:n]), nil
		}
	}
	return "", fmt.Errorf("no answer from udp %s", addr)
}

// portsTable is the ports table as nft prints it in the host namespace ("" if absent).
func (e *env) portsTable(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("nft not installed")
	}
	out, err := exec.Command("nsenter", "--net="+e.host.Path(), "nft", "list", "table", "inet", firewall.PortsTableName).CombinedOutput()
	if err != nil {
		return ""
	}
	return string(out)
}

// portsSnapshot is snapshot plus the published ports as the kernel holds them.
func (e *env) portsSnapshot(t *testing.T) string {
	t.Helper()
	return e.snapshot(t) + "ports table:\n" + e.portsTable(t)
}

func TestPublishedPorts(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	n := e.network(t, "web", "10.40.0.0/24")
	gw := n.Gateways[0].String()
	out := testutil.NewOutside(t, e.host) // host 192.0.2.1, outside 192.0.2.2
	a, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{
		Name: "a", Networks: []netmgr.AttachSpec{{Network: "web"}},
		Publish: publish(t, "8080:80", "5353:53/udp", "192.0.2.1:8081:80", "9000-9002:7000-7002"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Ports) != 6 || a.Ports[0].String() != "8080:80/tcp" || a.Ports[2].String() != "192.0.2.1:8081:80/tcp" {
		t.Fatalf("sandbox ports %v", a.Ports)
	}
	ans := testutil.Open(t, a.NetNS)
	_, bns := e.sandbox(t, "b", "web")
	testutil.Listen(t, ans, ":80")
	testutil.Listen(t, ans, ":7001")
	udpEcho(t, ans, ":53")

	tcp := func(what string, from *sandbox.NetNS, addr, want string) {
		t.Helper()
		seen, err := testutil.Dial(from, addr)
		if err != nil || seen != want {
			t.Errorf("%s: tcp %s seen as %q (%v), want %q", what, addr, seen, err, want)
		}
	}
	udp := func(what string, from *sandbox.NetNS, addr, want string) {
		t.Helper()
		seen, err := udpAsk(from, addr)
		if err != nil || seen != want {
			t.Errorf("%s: udp %s seen as %q (%v), want %q", what, addr, seen, err, want)
		}
	}
	// From the outside the pod sees the client; from the host its own address; from the host's
	// 127.0.0.1 and from pods through a host address (hairpin) the gateway, which the answer must
	// go back through.
	tcp("outside", out.NS, "192.0.2.1:8080", "192.0.2.2")
	tcp("outside, range", out.NS, "192.0.2.1:9001", "192.0.2.2")
	tcp("outside, on one host address", out.NS, "192.0.2.1:8081", "192.0.2.2")
	udp("outside", out.NS, "192.0.2.1:5353", "192.0.2.2")
	tcp("host, own address", e.host, "192.0.2.1:8080", "192.0.2.1")
	udp("host, own address", e.host, "192.0.2.1:5353", "192.0.2.1")
	tcp("host, 127.0.0.1", e.host, "127.0.0.1:8080", gw)
	udp("host, 127.0.0.1", e.host, "127.0.0.1:5353", gw)
	tcp("sibling pod, hairpin", bns, "192.0.2.1:8080", gw)
	tcp("sibling pod through the gateway, hairpin", bns, gw+":8080", gw)
	udp("sibling pod, hairpin", bns, "192.0.2.1:5353", gw)
	tcp("the pod itself, hairpin", ans, "192.0.2.1:8080", gw)
	udp("the pod itself, hairpin", ans, "192.0.2.1:5353", gw)
	if err := testutil.DialBlocked(e.host, "127.0.0.1:8081"); err != nil {
		t.Errorf("a port published on 192.0.2.1 answered on 127.0.0.1: %v", err)
	}

	// A second publish of a published port is refused; another protocol is another port.
	for _, p := range []string{"8080:80", "0.0.0.0:8080:80", "192.0.2.1:8080:80", "8081:80", "9002:1"} {
		before := e.portsSnapshot(t)
		_, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "c", Networks: []netmgr.AttachSpec{{Network: "web"}}, Publish: publish(t, p)})
		if !errors.Is(err, netmgr.ErrExists) || !strings.Contains(err.Error(), `published by sandbox "a"`) {
			t.Errorf("publish %s again: %v, want ErrExists naming sandbox a", p, err)
		}
		if after := e.portsSnapshot(t); after != before {
			t.Errorf("refused publish %s changed state:\nbefore:\n%s\nafter:\n%s", p, before, after)
		}
	}
	if _, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "c", Networks: []netmgr.AttachSpec{{Network: "web"}}, Publish: publish(t, "8080:80/udp")}); err != nil {
		t.Fatalf("udp 8080 while tcp 8080 is published: %v", err)
	}
	if err := e.m.DeleteSandbox(ctx, "c"); err != nil {
		t.Fatal(err)
	}

	// Removal closes the ports and leaves no element, key or route to them.
	if err := e.m.DeleteSandbox(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := testutil.DialBlocked(out.NS, "192.0.2.1:8080"); err != nil {
		t.Errorf("port 8080 still answers after the sandbox was removed: %v", err)
	}
	if err := udpBlocked(out.NS, "192.0.2.1:5353"); err != nil {
		t.Errorf("udp port 5353 still answers after the sandbox was removed: %v", err)
	}
	table := e.portsTable(t)
	for _, s := range []string{"8080", "8081", "5353", "9000", "9001", "9002", "owner=a", a.Attachments[0].IPv4.Addr().String()} {
		if strings.Contains(table, s) {
			t.Errorf("ports table still mentions %s:\n%s", s, table)
		}
	}
	if kvs, _, _ := e.rt.List(ctx, "ports/"); len(kvs) != 0 {
		t.Errorf("port keys left: %v", kvs)
	}
	// And the port is free again.
	if _, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "d", Networks: []netmgr.AttachSpec{{Network: "web"}}, Publish: publish(t, "8080:80")}); err != nil {
		t.Fatalf("publish 8080 after its sandbox was removed: %v", err)
	}
}

// TestPublishRace: of several creates publishing one port at once, exactly one wins.
func TestPublishRace(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.network(t, "web", "10.41.0.0/24")
	testutil.NewOutside(t, e.host)
	const n = 8
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Half ask for any address, half for 192.0.2.1: each pair conflicts.
			p := "8080:80"
			if i%2 == 1 {
				p = "192.0.2.1:8080:80"
			}
			_, errs[i] = e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: fmt.Sprintf("r%d", i), Networks: []netmgr.AttachSpec{{Network: "web"}}, Publish: publish(t, p)})
		}()
	}
	wg.Wait()
	won := 0
	for i, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, netmgr.ErrExists):
			t.Errorf("create r%d: %v", i, err)
		}
	}
	if won != 1 {
		t.Fatalf("%d creates published port 8080, want 1 (errors %v)", won, errs)
	}
}

func TestPublishBadInput(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.network(t, "web", "10.42.0.0/24")
	e.network(t, "priv", "10.42.1.0/24", func(s *netmgr.NetworkSpec) { s.Internal = true })
	testutil.NewOutside(t, e.host)
	if _, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "a", Networks: []netmgr.AttachSpec{{Network: "web"}}, Publish: publish(t, "8080:80")}); err != nil {
		t.Fatal(err)
	}
	onWeb := []netmgr.AttachSpec{{Network: "web"}}
	create := func(spec netmgr.SandboxSpec) func() error {
		return func() error {
			if spec.Name == "" {
				spec.Name = "y"
			}
			_, err := e.m.CreateSandbox(ctx, spec)
			return err
		}
	}
	pm := func(proto string, host string, hp, cp uint16) []netmgr.PortMapping {
		m := netmgr.PortMapping{Protocol: proto, HostPort: hp, ContainerPort: cp}
		if host != "" {
			m.HostIP = netip.MustParseAddr(host)
		}
		return []netmgr.PortMapping{m}
	}
	cases := []struct {
		name string
		do   func() error
		want error
	}{
		{"port already published", create(netmgr.SandboxSpec{Networks: onWeb, Publish: pm("tcp", "", 8080, 80)}), netmgr.ErrExists},
		{"host sandbox", create(netmgr.SandboxSpec{Host: true, Publish: pm("tcp", "", 9000, 80)}), netmgr.ErrInvalid},
		{"joined sandbox", create(netmgr.SandboxSpec{Join: "a", Publish: pm("tcp", "", 9000, 80)}), netmgr.ErrInvalid},
		{"no network", create(netmgr.SandboxSpec{Publish: pm("tcp", "", 9000, 80)}), netmgr.ErrInvalid},
		{"internal network only", create(netmgr.SandboxSpec{Networks: []netmgr.AttachSpec{{Network: "priv"}}, Publish: pm("tcp", "", 9000, 80)}), netmgr.ErrInvalid},
		{"sctp", create(netmgr.SandboxSpec{Networks: onWeb, Publish: pm("sctp", "", 9000, 80)}), netmgr.ErrInvalid},
		{"host port 0", create(netmgr.SandboxSpec{Networks: onWeb, Publish: pm("tcp", "", 0, 80)}), netmgr.ErrInvalid},
		{"container port 0", create(netmgr.SandboxSpec{Networks: onWeb, Publish: pm("udp", "", 9000, 0)}), netmgr.ErrInvalid},
		{"not a host address", create(netmgr.SandboxSpec{Networks: onWeb, Publish: pm("tcp", "203.0.113.9", 9000, 80)}), netmgr.ErrInvalid},
		{"IPv6 loopback", create(netmgr.SandboxSpec{Networks: onWeb, Publish: pm("tcp", "::1", 9000, 80)}), netmgr.ErrInvalid},
		{"IPv6 on an IPv4-only sandbox", create(netmgr.SandboxSpec{Networks: onWeb, Publish: pm("tcp", "::", 9000, 80)}), netmgr.ErrInvalid},
		{"same port twice", create(netmgr.SandboxSpec{Networks: onWeb, Publish: publish(t, "9000:80", "192.0.2.1:9000:81")}), netmgr.ErrInvalid},
		{"detach the network ports lead to", func() error { return e.m.Detach(ctx, "a", "web") }, netmgr.ErrInUse},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := e.portsSnapshot(t)
			err := tc.do()
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if msg := err.Error(); strings.Contains(msg, "\n") || msg == "" {
				t.Errorf("error is not one line: %q", msg)
			}
			if after := e.portsSnapshot(t); after != before {
				t.Errorf("state changed:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
}

// TestPublishRecover: gc puts back elements that vanished, removes elements and keys that no sandbox
// names, and finishes an interrupted create by removing what it published.
func TestPublishRecover(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.network(t, "web", "10.43.0.0/24")
	out := testutil.NewOutside(t, e.host)
	a, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "a", Networks: []netmgr.AttachSpec{{Network: "web"}}, Publish: publish(t, "8080:80")})
	if err != nil {
		t.Fatal(err)
	}
	testutil.Listen(t, testutil.Open(t, a.NetNS), ":80")
	fw, err := firewall.New(e.host.Fd(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer fw.Close()
	mine, err := fw.Ports(ctx)
	if err != nil || len(mine) != 1 {
		t.Fatalf("ports %v %v", mine, err)
	}
	// Someone flushed the element, and left a stray one and a stray key.
	if err := fw.RemovePorts(ctx, mine); err != nil {
		t.Fatal(err)
	}
	stray := firewall.Port{Protocol: "udp", HostPort: 7777, Target: netip.MustParseAddrPort("10.43.0.99:7"), Owner: "ghost"}
	if err := fw.AddPorts(ctx, []firewall.Port{stray}); err != nil {
		t.Fatal(err)
	}
	if err := e.rt.Txn(ctx, nil, []store.Op{store.Put("ports/udp/07777", nil), store.Put("ports/udp/07777/*", []byte("ghost"))}); err != nil {
		t.Fatal(err)
	}
	// And flushed the rules.
	if out, err := exec.Command("nsenter", "--net="+e.host.Path(), "nft", "flush", "chain", "inet", firewall.PortsTableName, "prerouting").CombinedOutput(); err != nil {
		t.Fatalf("nft flush chain: %v: %s", err, out)
	}
	rep, err := e.m.Recover(ctx)
	if err != nil {
		t.Fatalf("recover: %v (%+v)", err, rep)
	}
	t.Logf("report: %+v", rep)
	if seen, err := testutil.Dial(out.NS, "192.0.2.1:8080"); err != nil || seen != out.Addr.String() {
		t.Errorf("port 8080 after gc: %q %v", seen, err)
	}
	got, _ := fw.Ports(ctx)
	if len(got) != 1 || got[0].HostPort != 8080 {
		t.Errorf("ports after gc: %v, want only 8080", got)
	}
	if kvs, _, _ := e.rt.List(ctx, "ports/udp/"); len(kvs) != 0 {
		t.Errorf("stray keys left: %v", kvs)
	}

	// A create that crashed after publishing (its intent still recorded) is rolled back by gc.
	if err := e.rt.Txn(ctx, nil, []store.Op{store.Put("intents/sandbox/a", []byte("create"))}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := fw.Ports(ctx); len(got) != 0 {
		t.Errorf("ports after rolling back a's create: %v", got)
	}
	if kvs, _, _ := e.rt.List(ctx, "ports/"); len(kvs) != 0 {
		t.Errorf("port keys after rolling back a's create: %v", kvs)
	}
	if err := testutil.DialBlocked(out.NS, "192.0.2.1:8080"); err != nil {
		t.Errorf("port 8080 answers after its sandbox was rolled back: %v", err)
	}
}
