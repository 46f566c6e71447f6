package dns_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/dns"
	"github.com/netmgr/netmgr/sandbox"
)

type env struct {
	m    *netmgr.Manager
	host *sandbox.NetNS
	srv  *dns.Server
	svc  *fakeServices
}

// fakeServices stands for the service controller.
type fakeServices struct {
	mu   sync.Mutex
	svcs []dns.Service
	ch   chan struct{}
}

func (f *fakeServices) Services(context.Context) ([]dns.Service, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.svcs), nil
}

func (f *fakeServices) Changed() <-chan struct{} { return f.ch }

func (f *fakeServices) set(s ...dns.Service) {
	f.mu.Lock()
	f.svcs = s
	f.mu.Unlock()
	select {
	case f.ch <- struct{}{}:
	default:
	}
}

func newEnv(t *testing.T, cfg dns.Config) *env {
	t.Helper()
	testutil.RequireNetAdmin(t)
	host := testutil.NewNS(t, "host")
	runDir := t.TempDir()
	m, err := netmgr.New(context.Background(), netmgr.WithStateDir(t.TempDir()), netmgr.WithRunDir(runDir), netmgr.WithHostNetNS(host.Path()))
	if err != nil {
		t.Fatal(err)
	}
	svc := &fakeServices{ch: make(chan struct{}, 1)}
	cfg.Manager, cfg.Services, cfg.Logger = m, svc, testutil.Logger(t)
	if cfg.ResolvConf == "" && cfg.Upstreams == nil {
		cfg.ResolvConf = filepath.Join(t.TempDir(), "missing-resolv.conf")
	}
	srv, err := dns.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		sbs, _ := m.Sandboxes(context.Background())
		for _, s := range sbs {
			if err := m.DeleteSandbox(context.Background(), s.Name); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
		m.Close()
	})
	return &env{m: m, host: host, srv: srv, svc: svc}
}

func (e *env) network(t *testing.T, name, subnet string, opts map[string]string) *netmgr.Network {
	t.Helper()
	n, err := e.m.CreateNetwork(context.Background(), netmgr.NetworkSpec{Name: name, Driver: "bridge",
		Subnets: []netip.Prefix{netip.MustParsePrefix(subnet)}, Options: opts})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func (e *env) sandbox(t *testing.T, name string, aliases []string, nets ...string) (*netmgr.Sandbox, *sandbox.NetNS) {
	t.Helper()
	spec := netmgr.SandboxSpec{Name: name, Aliases: aliases}
	for _, n := range nets {
		spec.Networks = append(spec.Networks, netmgr.AttachSpec{Network: n})
	}
	s, err := e.m.CreateSandbox(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	return s, testutil.Open(t, s.NetNS)
}

// waitListening waits until the server listens on every given network.
func (e *env) waitListening(t *testing.T, nets ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		addrs := e.srv.Addrs()
		ok := true
		for _, n := range nets {
			ok = ok && len(addrs[n]) > 0
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("server listens on %v, want %v", addrs, nets)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitName waits until name resolves from ns at server (the server re-reads its sources every
// Poll: a listener may be up before the sandboxes made just before are in its answers).
func waitName(t *testing.T, ns *sandbox.NetNS, server netip.Addr, name string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		// A UDP query can be lost (a flooded socket's full queue drops it, as the kernel may): try
		// again after a second, as a resolver does, instead of waiting out the whole deadline on one.
		m, err := queryWithin(ns, server, name, mdns.TypeA, "udp", time.Second)
		if err == nil && len(m.Answer) > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not resolve at %s: %v, %v", name, server, m, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// query asks server (port 53) from inside ns over proto, waiting up to 5 s for the answer.
func query(ns *sandbox.NetNS, server netip.Addr, name string, qtype uint16, proto string) (*mdns.Msg, error) {
	return queryWithin(ns, server, name, qtype, proto, 5*time.Second)
}

// queryWithin is query with its own wait for the answer.
func queryWithin(ns *sandbox.NetNS, server netip.Addr, name string, qtype uint16, proto string, wait time.Duration) (*mdns.Msg, error) {
	var c net.Conn
	if err := ns.Do(func() error {
		var err error
		c, err = net.DialTimeout(proto, netip.AddrPortFrom(server, 53).String(), 3*time.Second)
		return err
	}); err != nil {
		return nil, err
	}
	co := &mdns.Conn{Conn: c, UDPSize: mdns.MaxMsgSize}
	defer co.Close()
	_ = c.SetDeadline(time.Now().Add(wait))
	m := new(mdns.Msg)
	m.SetQuestion(mdns.Fqdn(name), qtype)
	if err := co.WriteMsg(m); err != nil {
		return nil, err
	}
	return co.ReadMsg()
}

func answerAddrs(m *mdns.Msg) []string {
	var out []string
	for _, rr := range m.Answer {
		switch rr := rr.(type) {
		case *mdns.A:
			out = append(out, rr.A.String())
		case *mdns.AAAA:
			out = append(out, rr.AAAA.String())
		case *mdns.PTR:
			out = append(out, rr.Ptr)
		case *mdns.TXT:
			out = append(out, strings.Join(rr.Txt, ""))
		}
	}
	return out
}

// goResolve looks name up with Go's own resolver inside ns, talking to server over proto.
func goResolve(ns *sandbox.NetNS, server netip.Addr, name, proto string) ([]string, error) {
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var c net.Conn
		err := ns.Do(func() error {
			var err error
			c, err = net.DialTimeout(proto, netip.AddrPortFrom(server, 53).String(), 3*time.Second)
			return err
		})
		return c, err
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return r.LookupHost(ctx, name)
}

func TestSandboxNames(t *testing.T) {
	e := newEnv(t, dns.Config{})
	na := e.network(t, "neta", "10.89.10.0/24", nil)
	e.network(t, "netb", "10.89.11.0/24", nil)
	off := e.network(t, "netoff", "10.89.12.0/24", map[string]string{"dns": "false"})
	web, _ := e.sandbox(t, "web", []string{"www", "Front"}, "neta")
	_, cns := e.sandbox(t, "client", nil, "neta")
	other, ons := e.sandbox(t, "other", nil, "netb")
	e.sandbox(t, "quiet", nil, "netoff")
	e.waitListening(t, "neta", "netb")
	if a := e.srv.Addrs(); len(a["netoff"]) > 0 {
		t.Fatalf("listening on the network with dns=false: %v", a)
	}
	gw := na.Gateways[0]
	nb, _ := e.m.Network(context.Background(), "netb")
	waitName(t, cns, gw, "web")
	waitName(t, ons, nb.Gateways[0], "other")
	webIP := web.Attachments[0].IPv4.Addr().String()
	for _, proto := range []string{"udp", "tcp"} {
		for _, name := range []string{"web", "www", "front", "WEB", "web.cluster.local"} {
			got, err := goResolve(cns, gw, name, proto)
			if err != nil || !slices.Equal(got, []string{webIP}) {
				t.Errorf("%s: Go resolver %q = %v, %v; want [%s]", proto, name, got, err, webIP)
			}
		}
		// The other network's sandbox is not visible, and no answer goes upstream for it.
		m, err := query(cns, gw, "other", mdns.TypeA, proto)
		if err != nil || len(m.Answer) != 0 {
			t.Errorf("%s: other network's sandbox from neta: %v, %v", proto, m, err)
		}
		// PTR of web's address.
		rev, _ := mdns.ReverseAddr(webIP)
		m, err = query(cns, gw, rev, mdns.TypePTR, proto)
		if err != nil || !slices.Equal(answerAddrs(m), []string{"web."}) {
			t.Errorf("%s: PTR %s = %v, %v", proto, rev, m, err)
		}
	}
	// AAAA of a v4-only sandbox: an empty answer, not an error and not a forward.
	if m, err := query(cns, gw, "web", mdns.TypeAAAA, "udp"); err != nil || m.Rcode != mdns.RcodeSuccess || len(m.Answer) != 0 {
		t.Errorf("AAAA web = %v, %v; want NOERROR, no answer", m, err)
	}
	// busybox nslookup, as a container would.
	if bb, err := exec.LookPath("busybox"); err == nil {
		out, err := exec.Command("nsenter", "--net="+cns.Path(), bb, "nslookup", "web", gw.String()).CombinedOutput()
		if err != nil || !strings.Contains(string(out), webIP) {
			t.Errorf("busybox nslookup web: %v\n%s", err, out)
		}
	} else {
		t.Log("no busybox: nslookup not tried")
	}
	// A client of netb asking neta's gateway (the host routes it there) is refused: no leak.
	if m, err := query(ons, gw, "web", mdns.TypeA, "udp"); err != nil || m.Rcode != mdns.RcodeRefused {
		t.Errorf("netb client at neta's server: %v, %v; want REFUSED", m, err)
	}
	// From netb, other resolves and web does not.
	if got, err := goResolve(ons, nb.Gateways[0], "other", "udp"); err != nil || !slices.Equal(got, []string{other.Attachments[0].IPv4.Addr().String()}) {
		t.Errorf("other from netb = %v, %v", got, err)
	}
	if m, err := query(ons, nb.Gateways[0], "web", mdns.TypeA, "udp"); err != nil || len(m.Answer) != 0 {
		t.Errorf("web from netb = %v, %v", m, err)
	}
	_ = off
}

// A new sandbox resolves within a second of its creation, a removed one stops within a second.
func TestFollowsChanges(t *testing.T) {
	e := newEnv(t, dns.Config{})
	n := e.network(t, "neta", "10.89.20.0/24", nil)
	_, cns := e.sandbox(t, "client", nil, "neta")
	e.waitListening(t, "neta")
	gw := n.Gateways[0]
	s, _ := e.sandbox(t, "late", nil, "neta")
	created := time.Now()
	want := s.Attachments[0].IPv4.Addr().String()
	for {
		m, err := query(cns, gw, "late", mdns.TypeA, "udp")
		if err == nil && slices.Equal(answerAddrs(m), []string{want}) {
			break
		}
		if time.Since(created) > time.Second {
			t.Fatalf("new sandbox not resolving 1 s after create: %v %v", m, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("resolves %v after create", time.Since(created).Round(time.Millisecond))
	if err := e.m.DeleteSandbox(context.Background(), "late"); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	for {
		m, err := query(cns, gw, "late", mdns.TypeA, "udp")
		if err == nil && m.Rcode == mdns.RcodeNameError || err == nil && m.Rcode == mdns.RcodeServerFailure && len(m.Answer) == 0 {
			break
		}
		if time.Since(deleted) > time.Second {
			t.Fatalf("removed sandbox still resolving 1 s after delete: %v %v", m, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("gone %v after delete", time.Since(deleted).Round(time.Millisecond))
}

func TestServiceNames(t *testing.T) {
	e := newEnv(t, dns.Config{Domain: "corp.example"})
	n := e.network(t, "neta", "10.89.30.0/24", nil)
	_, cns := e.sandbox(t, "client", nil, "neta")
	e.waitListening(t, "neta")
	gw := n.Gateways[0]
	e.svc.set(dns.Service{Name: "api", IPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")}},
		dns.Service{Name: "db", Namespace: "prod", IPs: []netip.Addr{netip.MustParseAddr("10.96.0.11"), netip.MustParseAddr("fd00:96::11")}})
	deadline := time.Now().Add(2 * time.Second)
	for {
		m, err := query(cns, gw, "api", mdns.TypeA, "udp")
		if err == nil && len(m.Answer) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("service api not resolving: %v %v", m, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, c := range []struct {
		name  string
		qtype uint16
		want  []string
	}{
		{"api", mdns.TypeA, []string{"10.96.0.10"}},
		{"api.svc", mdns.TypeA, []string{"10.96.0.10"}},
		{"api.svc.corp.example", mdns.TypeA, []string{"10.96.0.10"}},
		{"db.prod.svc.corp.example", mdns.TypeA, []string{"10.96.0.11"}},
		{"db.prod", mdns.TypeAAAA, []string{"fd00:96::11"}},
		{"db", mdns.TypeA, []string{"10.96.0.11"}},
		{"10.0.96.10.in-addr.arpa", mdns.TypePTR, []string{"api.svc.corp.example."}},
	} {
		for _, proto := range []string{"udp", "tcp"} {
			m, err := query(cns, gw, c.name, c.qtype, proto)
			if err != nil || !slices.Equal(answerAddrs(m), c.want) {
				t.Errorf("%s %s %s = %v, %v; want %v", proto, c.name, mdns.TypeToString[c.qtype], m, err, c.want)
			}
		}
	}
	// A name under the cluster domain that nothing has: NXDOMAIN at once, not a forward.
	if m, err := query(cns, gw, "nope.svc.corp.example", mdns.TypeA, "udp"); err != nil || m.Rcode != mdns.RcodeNameError {
		t.Errorf("unknown service: %v, %v; want NXDOMAIN", m, err)
	}
	e.svc.set()
	deadline = time.Now().Add(2 * time.Second)
	for {
		m, err := query(cns, gw, "api.svc", mdns.TypeA, "udp")
		if err == nil && m.Rcode == mdns.RcodeNameError {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("removed service still answered: %v %v", m, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fakeUpstream serves in ns on addr:53: example.test A 203.0.113.7 and big.example.test, a TXT answer
// too large for UDP.
func fakeUpstream(t *testing.T, ns *sandbox.NetNS, addr netip.Addr) *int32Counter {
	t.Helper()
	var pc net.PacketConn
	var ln net.Listener
	hp := netip.AddrPortFrom(addr, 53).String()
	if err := ns.Do(func() error {
		var err error
		if pc, err = net.ListenPacket("udp", hp); err != nil {
			return err
		}
		ln, err = net.Listen("tcp", hp)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	cnt := &int32Counter{}
	h := mdns.HandlerFunc(func(w mdns.ResponseWriter, r *mdns.Msg) {
		cnt.add(w.RemoteAddr().Network())
		m := new(mdns.Msg)
		m.SetReply(r)
		switch strings.ToLower(r.Question[0].Name) {
		case "example.test.":
			m.Answer = append(m.Answer, &mdns.A{Hdr: mdns.RR_Header{Name: r.Question[0].Name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 60}, A: net.ParseIP("203.0.113.7")})
		case "big.example.test.":
			for i := range 20 {
				m.Answer = append(m.Answer, &mdns.TXT{Hdr: mdns.RR_Header{Name: r.Question[0].Name, Rrtype: mdns.TypeTXT, Class: mdns.ClassINET, Ttl: 60},
					Txt: []string{fmt.Sprintf("%02d%s", i, strings.Repeat("x", 98))}})
			}
			if w.RemoteAddr().Network() == "udp" {
				m.Truncate(mdns.MinMsgSize)
			}
		default:
			m.Rcode = mdns.RcodeNameError
		}
		_ = w.WriteMsg(m)
	})
	for _, s := range []*mdns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		go func() { _ = s.ActivateAndServe() }()
		t.Cleanup(func() { _ = s.Shutdown() })
	}
	return cnt
}

type int32Counter struct {
	mu       sync.Mutex
	udp, tcp int
}

func (c *int32Counter) add(network string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if network == "tcp" {
		c.tcp++
	} else {
		c.udp++
	}
}

func TestForwarding(t *testing.T) {
	testutil.RequireNetAdmin(t)
	// The upstream's namespace is made first so that the resolv.conf can name it.
	dir := t.TempDir()
	rc := filepath.Join(dir, "resolv.conf")
	// Several addresses on one line, as some hosts write them; the dead first one is skipped in time.
	if err := os.WriteFile(rc, []byte("search example.test\nnameserver 192.0.2.2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, dns.Config{ResolvConf: rc})
	out := testutil.NewOutside(t, e.host)
	cnt := fakeUpstream(t, out.NS, out.Addr)
	n := e.network(t, "neta", "10.89.40.0/24", nil)
	_, cns := e.sandbox(t, "client", nil, "neta")
	e.waitListening(t, "neta")
	gw := n.Gateways[0]
	for _, proto := range []string{"udp", "tcp"} {
		got, err := goResolve(cns, gw, "example.test", proto)
		if err != nil || !slices.Equal(got, []string{"203.0.113.7"}) {
			t.Errorf("%s: example.test = %v, %v", proto, got, err)
		}
		m, err := query(cns, gw, "nothere.example.test", mdns.TypeA, proto)
		if err != nil || m.Rcode != mdns.RcodeNameError {
			t.Errorf("%s: upstream NXDOMAIN passed as %v, %v", proto, m, err)
		}
	}
	// A truncated UDP answer upstream is fetched again over TCP; the client over TCP gets it whole.
	cnt.mu.Lock()
	tcpBefore := cnt.tcp
	cnt.mu.Unlock()
	m, err := query(cns, gw, "big.example.test", mdns.TypeTXT, "tcp")
	if err != nil || len(m.Answer) != 20 {
		t.Fatalf("big answer over TCP: %d records, %v", len(m.Answer), err)
	}
	m, err = query(cns, gw, "big.example.test", mdns.TypeTXT, "udp")
	if err != nil || !m.Truncated {
		t.Errorf("big answer to a UDP client without EDNS: truncated %v, %v", m != nil && m.Truncated, err)
	}
	if got, err := goResolve(cns, gw, "big.example.test", "udp"); err == nil {
		t.Logf("Go resolver on big.example.test (TXT only): %v", got)
	}
	cnt.mu.Lock()
	if cnt.tcp <= tcpBefore {
		t.Errorf("no TCP query reached the upstream (udp %d, tcp %d)", cnt.udp, cnt.tcp)
	}
	cnt.mu.Unlock()
	// resolv.conf changes are followed: an upstream that does not exist gives SERVFAIL in < 2 s.
	time.Sleep(1100 * time.Millisecond) // the file's mtime has a coarse clock on some filesystems
	if err := os.WriteFile(rc, []byte("nameserver 192.0.2.99\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		start := time.Now()
		m, err := query(cns, gw, "example.test", mdns.TypeA, "udp")
		took := time.Since(start)
		if err == nil && m.Rcode == mdns.RcodeServerFailure {
			t.Logf("SERVFAIL after %v", took.Round(time.Millisecond))
			if took >= 2*time.Second {
				t.Errorf("dead upstream: SERVFAIL after %v, want < 2 s", took)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dead upstream: %v, %v", m, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Every upstream dead (one refusing, one black hole): SERVFAIL in under 2 s, every time.
func TestUpstreamDown(t *testing.T) {
	e := newEnv(t, dns.Config{Upstreams: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.99:53"), netip.MustParseAddrPort("192.0.2.2:53")}})
	testutil.NewOutside(t, e.host) // 192.0.2.2 exists but serves no DNS; .99 answers nothing
	n := e.network(t, "neta", "10.89.50.0/24", nil)
	_, cns := e.sandbox(t, "client", nil, "neta")
	e.waitListening(t, "neta")
	for i := range 3 {
		start := time.Now()
		m, err := query(cns, n.Gateways[0], "example.test", mdns.TypeA, "udp")
		took := time.Since(start)
		if err != nil || m.Rcode != mdns.RcodeServerFailure {
			t.Fatalf("query %d: %v, %v; want SERVFAIL", i, m, err)
		}
		t.Logf("query %d: SERVFAIL after %v", i, took.Round(time.Millisecond))
		if took >= 2*time.Second {
			t.Errorf("query %d: SERVFAIL after %v, want < 2 s", i, took)
		}
	}
	// Local names still answer at once while the upstreams are dead.
	if m, err := query(cns, n.Gateways[0], "client", mdns.TypeA, "udp"); err != nil || len(m.Answer) != 1 {
		t.Errorf("local name with dead upstreams: %v, %v", m, err)
	}
}

func TestAliasCollision(t *testing.T) {
	e := newEnv(t, dns.Config{})
	e.network(t, "neta", "10.89.60.0/24", nil)
	e.network(t, "netb", "10.89.61.0/24", nil)
	e.sandbox(t, "web", []string{"www"}, "neta")
	for _, aliases := range [][]string{{"web"}, {"WEB"}, {"www"}} {
		_, err := e.m.CreateSandbox(context.Background(), netmgr.SandboxSpec{Name: "dup", Aliases: aliases, Networks: []netmgr.AttachSpec{{Network: "neta"}}})
		if !errors.Is(err, netmgr.ErrExists) {
			t.Errorf("alias %v on neta: %v, want ErrExists", aliases, err)
		}
	}
	for _, bad := range []netmgr.SandboxSpec{
		{Name: "x", Aliases: []string{"x"}, Networks: []netmgr.AttachSpec{{Network: "neta"}}},
		{Name: "x", Aliases: []string{"a", "A"}, Networks: []netmgr.AttachSpec{{Network: "neta"}}},
		{Name: "x", Aliases: []string{"bad name"}, Networks: []netmgr.AttachSpec{{Network: "neta"}}},
		{Name: "x", Aliases: []string{"a"}},
	} {
		if _, err := e.m.CreateSandbox(context.Background(), bad); !errors.Is(err, netmgr.ErrInvalid) {
			t.Errorf("%+v: %v, want ErrInvalid", bad, err)
		}
	}
	if sbs, _ := e.m.Sandboxes(context.Background()); len(sbs) != 1 {
		t.Errorf("refused creates left sandboxes: %d", len(sbs))
	}
	// The same alias on another network is fine.
	s, _ := e.sandbox(t, "dup", []string{"web"}, "netb")
	if !slices.Equal(s.Aliases, []string{"web"}) {
		t.Errorf("aliases = %v", s.Aliases)
	}
}

// A flood of malformed packets neither crashes nor stalls the server: a truncated message gets
// FORMERR, garbage and responses get nothing, and a good query right after is answered.
func TestMalformedFlood(t *testing.T) {
	e := newEnv(t, dns.Config{})
	n := e.network(t, "neta", "10.89.80.0/24", nil)
	_, cns := e.sandbox(t, "client", nil, "neta")
	e.waitListening(t, "neta")
	gw := n.Gateways[0]
	waitName(t, cns, gw, "client")
	var c net.Conn
	if err := cns.Do(func() error {
		var err error
		c, err = net.Dial("udp", netip.AddrPortFrom(gw, 53).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// A header that promises a question and has none.
	if _, err := c.Write([]byte{0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0}); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 512)
	k, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no answer to a truncated query: %v", err)
	}
	var m mdns.Msg
	if err := m.Unpack(buf[:k]); err != nil || m.Id != 0xabcd || m.Rcode != mdns.RcodeFormatError {
		t.Fatalf("answer to a truncated query: %v %v", &m, err)
	}
	// 5000 packets of garbage, some of them responses.
	good := new(mdns.Msg)
	good.SetQuestion("client.", mdns.TypeA)
	pkt, _ := good.Pack()
	seed := uint32(1)
	for i := range 5000 {
		b := slices.Clone(pkt)
		for j := range b {
			seed = seed*1664525 + 1013904223
			if seed>>28 == 0 {
				b[j] = byte(seed >> 16)
			}
		}
		b = b[:1+int(seed>>8)%len(b)]
		if i%3 == 0 && len(b) > 2 {
			b[2] |= 0x80 // QR: a response
		}
		_, _ = c.Write(b)
	}
	waitName(t, cns, gw, "client")
}

// On a dual-stack network the server listens on both gateways and answers AAAA (and PTR of the
// IPv6 address) over IPv6.
func TestDualStack(t *testing.T) {
	e := newEnv(t, dns.Config{})
	n, err := e.m.CreateNetwork(context.Background(), netmgr.NetworkSpec{Name: "ds", Driver: "bridge",
		Subnets: []netip.Prefix{netip.MustParsePrefix("10.89.90.0/24"), netip.MustParsePrefix("fd00:89:90::/64")}})
	if err != nil {
		t.Fatal(err)
	}
	web, _ := e.sandbox(t, "web", nil, "ds")
	_, cns := e.sandbox(t, "client", nil, "ds")
	var gw6 netip.Addr
	for _, g := range n.Gateways {
		if g.Is6() {
			gw6 = g
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for !slices.Contains(e.srv.Addrs()["ds"], gw6) {
		if time.Now().After(deadline) {
			t.Fatalf("not listening on %s: %v", gw6, e.srv.Addrs())
		}
		time.Sleep(50 * time.Millisecond)
	}
	want := web.Attachments[0].IPv6.Addr().String()
	var m *mdns.Msg
	for {
		m, err = query(cns, gw6, "web", mdns.TypeAAAA, "udp")
		if err == nil && slices.Equal(answerAddrs(m), []string{want}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("AAAA web over IPv6: %v, %v; want %s", m, err, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
	rev, _ := mdns.ReverseAddr(want)
	if m, err := query(cns, gw6, rev, mdns.TypePTR, "tcp"); err != nil || !slices.Equal(answerAddrs(m), []string{"web."}) {
		t.Errorf("PTR %s over TCP/IPv6: %v, %v", rev, m, err)
	}
}
