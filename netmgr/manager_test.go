package netmgr_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/firewall"
	"github.com/netmgr/netmgr/netmgr/store"
	"github.com/netmgr/netmgr/sandbox"
)

type env struct {
	m        *netmgr.Manager
	stateDir string
	host     *sandbox.NetNS
	st       *store.Bolt // networks (state dir)
	rt       *store.Bolt // runtime state (run dir)
	runDir   string
}

// newEnv opens a Manager on a host namespace and state of its own; opts come after the env's own.
func newEnv(t *testing.T, opts ...netmgr.Option) *env {
	t.Helper()
	testutil.RequireRoot(t)
	host := testutil.NewNS(t, "host")
	stateDir, runDir := t.TempDir(), t.TempDir()
	m, err := netmgr.New(context.Background(), append([]netmgr.Option{netmgr.WithStateDir(stateDir), netmgr.WithRunDir(runDir),
		netmgr.WithHostNetNS(host.Path())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	// The Manager's own files, opened alongside it (every call opens them under a lock), to inspect.
	st, err := store.OpenBolt(filepath.Join(stateDir, "netmgr.db"))
	if err != nil {
		t.Fatal(err)
	}
	rt, err := store.OpenBolt(filepath.Join(runDir, "runtime.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		sbs, _ := m.Sandboxes(ctx)
		// Joiners first, then their targets.
		sort.Slice(sbs, func(i, j int) bool { return sbs[i].Join != "" && sbs[j].Join == "" })
		for _, s := range sbs {
			if err := m.DeleteSandbox(ctx, s.Name); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
		m.Close()
		pins, _ := filepath.Glob(filepath.Join(runDir, "netns", "*"))
		for _, p := range pins {
			_ = sandbox.Remove(p)
		}
	})
	return &env{m: m, stateDir: stateDir, host: host, st: st, rt: rt, runDir: runDir}
}

func (e *env) network(t *testing.T, name, subnet string, mod ...func(*netmgr.NetworkSpec)) *netmgr.Network {
	t.Helper()
	spec := netmgr.NetworkSpec{Name: name, Driver: "bridge"}
	if subnet != "" {
		spec.Subnets = []netip.Prefix{netip.MustParsePrefix(subnet)}
	}
	for _, f := range mod {
		f(&spec)
	}
	n, err := e.m.CreateNetwork(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func (e *env) sandbox(t *testing.T, name string, nets ...string) (*netmgr.Sandbox, *sandbox.NetNS) {
	t.Helper()
	spec := netmgr.SandboxSpec{Name: name}
	for _, n := range nets {
		spec.Networks = append(spec.Networks, netmgr.AttachSpec{Network: n})
	}
	s, err := e.m.CreateSandbox(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	return s, testutil.Open(t, s.NetNS)
}

func TestBridgeConnectivityAndNAT(t *testing.T) {
	e := newEnv(t)
	n := e.network(t, "net1", "10.10.0.0/24")
	a, ans := e.sandbox(t, "a", "net1")
	b, bns := e.sandbox(t, "b", "net1")
	ipA, ipB := a.Attachments[0].IPv4.Addr(), b.Attachments[0].IPv4.Addr()
	if ipA == ipB || !n.Subnets[0].Contains(ipA) || !n.Subnets[0].Contains(ipB) {
		t.Fatalf("addresses %s %s not distinct in %s", ipA, ipB, n.Subnets[0])
	}
	for _, p := range []struct {
		from *sandbox.NetNS
		to   string
	}{{ans, ipB.String()}, {bns, ipA.String()}, {ans, n.Gateways[0].String()}} {
		if err := testutil.Ping(p.from, p.to); err != nil {
			t.Error(err)
		}
	}
	// TCP between the two, and the source address is the pod's own.
	srv := testutil.Listen(t, bns, ipB.String()+":0")
	if seen, err := testutil.Dial(ans, srv); err != nil || seen != ipA.String() {
		t.Errorf("a->b: saw %q err %v, want %s", seen, err, ipA)
	}
	// Outside: reachable through the host, with source NAT (the outside has no route to 10.10.0.0/24).
	out := testutil.NewOutside(t, e.host)
	osrv := testutil.Listen(t, out.NS, out.Addr.String()+":0")
	seen, err := testutil.Dial(ans, osrv)
	if err != nil {
		t.Fatalf("a->outside: %v", err)
	}
	if seen != out.HostIP.String() {
		t.Errorf("outside saw %s, want the host's address %s (masquerade)", seen, out.HostIP)
	}
	if err := testutil.Ping(bns, out.Addr.String()); err != nil {
		t.Error(err)
	}
}

func TestIsolationAndInternal(t *testing.T) {
	e := newEnv(t)
	e.network(t, "n1", "10.11.1.0/24")
	e.network(t, "n2", "10.11.2.0/24")
	e.network(t, "priv", "10.11.3.0/24", func(s *netmgr.NetworkSpec) { s.Internal = true })
	_, ans := e.sandbox(t, "a", "n1")
	b, bns := e.sandbox(t, "b", "n2")
	c, cns := e.sandbox(t, "c", "priv")
	c2, c2ns := e.sandbox(t, "c2", "priv")
	out := testutil.NewOutside(t, e.host)
	osrv := testutil.Listen(t, out.NS, out.Addr.String()+":0")

	bsrv := testutil.Listen(t, bns, b.Attachments[0].IPv4.Addr().String()+":0")
	if _, err := testutil.Dial(e.host, bsrv); err != nil {
		t.Errorf("the host must reach b (the server the isolation probes aim at): %v", err)
	}
	if err := testutil.DialBlocked(ans, bsrv); err != nil {
		t.Errorf("a on n1 reached b on n2; networks must be isolated: %v", err)
	}
	if _, err := testutil.Dial(bns, osrv); err != nil {
		t.Errorf("b must reach the outside: %v", err)
	}
	if err := testutil.DialBlocked(cns, osrv); err != nil {
		t.Errorf("c on an internal network reached the outside: %v", err)
	}
	if err := testutil.DialBlocked(cns, bsrv); err != nil {
		t.Errorf("c on an internal network reached b on n2: %v", err)
	}
	csrv := testutil.Listen(t, c2ns, c2.Attachments[0].IPv4.Addr().String()+":0")
	if _, err := testutil.Dial(cns, csrv); err != nil {
		t.Errorf("two sandboxes on one internal network must reach each other: %v", err)
	}
	if len(c.Attachments[0].Gateways) != 0 {
		t.Errorf("internal network gave a default route: %v", c.Attachments[0].Gateways)
	}
}

func TestLinkSandboxSharesLoopback(t *testing.T) {
	e := newEnv(t)
	e.network(t, "net1", "10.12.0.0/24")
	a, ans := e.sandbox(t, "a", "net1")
	l, err := e.m.CreateSandbox(context.Background(), netmgr.SandboxSpec{Name: "l", Join: "a"})
	if err != nil {
		t.Fatal(err)
	}
	lns := testutil.Open(t, l.NetNS)
	ia, _ := ans.Inode()
	il, _ := lns.Inode()
	if ia != il {
		t.Fatalf("link sandbox is in namespace %d, target in %d", il, ia)
	}
	srv := testutil.Listen(t, ans, "127.0.0.1:0")
	if seen, err := testutil.Dial(lns, srv); err != nil || seen != "127.0.0.1" {
		t.Fatalf("127.0.0.1 listener of a not reached from l: %q %v", seen, err)
	}
	// The joiner shares the target's interfaces and address.
	h, err := lns.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	addrs, _ := h.AddrList(nil, netlink.FAMILY_V4)
	found := false
	for _, ad := range addrs {
		found = found || ad.IP.String() == a.Attachments[0].IPv4.Addr().String()
	}
	if !found {
		t.Errorf("link sandbox does not see %s", a.Attachments[0].IPv4)
	}
	// The target cannot go while the joiner exists.
	if err := e.m.DeleteSandbox(context.Background(), "a"); !errors.Is(err, netmgr.ErrInUse) {
		t.Fatalf("delete target with a joiner: %v, want ErrInUse", err)
	}
	if err := e.m.DeleteSandbox(context.Background(), "l"); err != nil {
		t.Fatal(err)
	}
	if !sandbox.IsPinned(a.NetNS) {
		t.Fatal("deleting the joiner removed the target's namespace")
	}
}

func TestHostSandbox(t *testing.T) {
	e := newEnv(t)
	s, err := e.m.CreateSandbox(context.Background(), netmgr.SandboxSpec{Name: "h", Host: true})
	if err != nil {
		t.Fatal(err)
	}
	ns := testutil.Open(t, s.NetNS)
	a, _ := ns.Inode()
	b, _ := e.host.Inode()
	if a != b {
		t.Fatal("host sandbox is not in the host namespace")
	}
	if err := e.m.DeleteSandbox(context.Background(), "h"); err != nil {
		t.Fatal(err)
	}
	if _, err := sandbox.Open(e.host.Path()); err != nil {
		t.Fatal("deleting a host sandbox touched the host namespace")
	}
}

func TestMultipleNetworksAndDetach(t *testing.T) {
	e := newEnv(t)
	e.network(t, "front", "10.13.1.0/24")
	e.network(t, "back", "10.13.2.0/24")
	s, ns := e.sandbox(t, "multi", "front", "back")
	if len(s.Attachments) != 2 || s.Attachments[0].Interface != "eth0" || s.Attachments[1].Interface != "eth1" {
		t.Fatalf("attachments %+v", s.Attachments)
	}
	h, err := ns.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for _, at := range s.Attachments {
		l, err := h.LinkByName(at.Interface)
		if err != nil {
			t.Fatal(err)
		}
		addrs, _ := h.AddrList(l, netlink.FAMILY_V4)
		if len(addrs) != 1 || addrs[0].IP.String() != at.IPv4.Addr().String() {
			t.Errorf("%s has %v, want %s", at.Interface, addrs, at.IPv4)
		}
	}
	// Detach one, attach another network, and the free name is reused.
	ctx := context.Background()
	if err := e.m.Detach(ctx, "multi", "front"); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Detach(ctx, "multi", "front"); err != nil {
		t.Fatalf("second detach: %v", err)
	}
	if _, err := h.LinkByName("eth0"); err == nil {
		t.Error("eth0 still exists after detach")
	}
	e.network(t, "third", "10.13.3.0/24")
	at, err := e.m.Attach(ctx, "multi", netmgr.AttachSpec{Network: "third"})
	if err != nil {
		t.Fatal(err)
	}
	if at.Interface != "eth0" || !netip.MustParsePrefix("10.13.3.0/24").Contains(at.IPv4.Addr()) {
		t.Errorf("attach gave %+v", at)
	}
	nw, _ := e.m.Network(ctx, "front")
	if len(nw.Sandboxes) != 0 {
		t.Errorf("front still lists %v", nw.Sandboxes)
	}
}

// snapshot captures kernel and store state for "nothing changed" checks.
func (e *env) snapshot(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	h, err := e.host.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	links, _ := h.LinkList()
	for _, l := range links {
		fmt.Fprintf(&b, "link %s %s master=%d\n", l.Attrs().Name, l.Type(), l.Attrs().MasterIndex)
		addrs, _ := h.AddrList(l, netlink.FAMILY_ALL)
		for _, a := range addrs {
			if a.IP.IsLinkLocalUnicast() {
				continue // the kernel adds these by itself, at its own pace
			}
			fmt.Fprintf(&b, "  addr %s\n", a.IPNet)
		}
	}
	for _, s := range []*store.Bolt{e.st, e.rt} {
		kvs, _, err := s.List(context.Background(), "")
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range kvs {
			fmt.Fprintf(&b, "key %s rev=%d\n", kv.Key, kv.Rev)
		}
	}
	pins, _ := filepath.Glob(filepath.Join(e.runDir, "netns", "*"))
	fmt.Fprintf(&b, "pins %v\n", pins)
	fw, err := firewall.New(e.host.Fd(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer fw.Close()
	names, err := fw.Networks(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(&b, "firewall %v\n", names)
	return b.String()
}

func TestBadInputChangesNothing(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.network(t, "net1", "10.14.0.0/24")
	s, _ := e.sandbox(t, "a", "net1")
	taken := s.Attachments[0].IPv4.Addr()
	p := netip.MustParsePrefix
	cases := []struct {
		name string
		do   func() error
		want error
	}{
		{"host bits in CIDR", func() error {
			_, err := e.m.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "x", Subnets: []netip.Prefix{p("10.15.0.1/24")}})
			return err
		}, netmgr.ErrInvalid},
		{"overlapping subnet", func() error {
			_, err := e.m.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "x", Subnets: []netip.Prefix{p("10.14.0.0/16")}})
			return err
		}, netmgr.ErrInUse},
		{"bridge name over 15 bytes", func() error {
			_, err := e.m.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "x", Subnets: []netip.Prefix{p("10.16.0.0/24")}, Options: map[string]string{"bridge": "averyveryverylongbridge"}})
			return err
		}, netmgr.ErrInvalid},
		{"interface name over 15 bytes", func() error {
			_, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "y", Networks: []netmgr.AttachSpec{{Network: "net1", IfName: "averyverylongifname"}}})
			return err
		}, netmgr.ErrInvalid},
		{"unknown driver", func() error {
			_, err := e.m.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "x", Driver: "nosuch"})
			return err
		}, netmgr.ErrInvalid},
		{"unknown option", func() error {
			_, err := e.m.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "x", Options: map[string]string{"colour": "red"}})
			return err
		}, netmgr.ErrInvalid},
		{"duplicate network", func() error {
			_, err := e.m.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "net1", Subnets: []netip.Prefix{p("10.17.0.0/24")}})
			return err
		}, netmgr.ErrExists},
		{"duplicate sandbox", func() error {
			_, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "a", Networks: []netmgr.AttachSpec{{Network: "net1"}}})
			return err
		}, netmgr.ErrExists},
		{"static IP outside subnet", func() error {
			_, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "y", Networks: []netmgr.AttachSpec{{Network: "net1", IPs: []netip.Addr{netip.MustParseAddr("10.99.0.5")}}}})
			return err
		}, netmgr.ErrInvalid},
		{"static IP taken", func() error {
			_, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "y", Networks: []netmgr.AttachSpec{{Network: "net1", IPs: []netip.Addr{taken}}}})
			return err
		}, netmgr.ErrExists},
		{"static IP is the gateway", func() error {
			_, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "y", Networks: []netmgr.AttachSpec{{Network: "net1", IPs: []netip.Addr{netip.MustParseAddr("10.14.0.1")}}}})
			return err
		}, netmgr.ErrExists},
		{"network in use", func() error { return e.m.DeleteNetwork(ctx, "net1") }, netmgr.ErrInUse},
		{"join a missing sandbox", func() error {
			_, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "y", Join: "ghost"})
			return err
		}, netmgr.ErrNotFound},
		{"attach to a missing network", func() error {
			_, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "y", Networks: []netmgr.AttachSpec{{Network: "ghost"}}})
			return err
		}, netmgr.ErrNotFound},
		{"attach a missing sandbox", func() error {
			_, err := e.m.Attach(ctx, "ghost", netmgr.AttachSpec{Network: "net1"})
			return err
		}, netmgr.ErrNotFound},
		{"bad sandbox name", func() error {
			_, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "../etc"})
			return err
		}, netmgr.ErrInvalid},
		{"delete missing network", func() error { return e.m.DeleteNetwork(ctx, "ghost") }, netmgr.ErrNotFound},
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
			if after := e.snapshot(t); after != before {
				t.Errorf("state changed:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
}

func TestConcurrentCreatesInProcess(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.network(t, "busy", "10.20.0.0/22")
	const n = 100
	var wg sync.WaitGroup
	ips := make([]string, n)
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			s, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: fmt.Sprintf("c%03d", i), Networks: []netmgr.AttachSpec{{Network: "busy"}}})
			if err != nil {
				errs[i] = err
				return
			}
			ips[i] = s.Attachments[0].IPv4.Addr().String()
		}(i)
	}
	wg.Wait()
	seen := map[string]int{}
	for i := 0; i < n; i++ {
		if errs[i] != nil {
			t.Fatalf("create %d: %v", i, errs[i])
		}
		if j, dup := seen[ips[i]]; dup {
			t.Fatalf("sandboxes %d and %d both got %s", j, i, ips[i])
		}
		seen[ips[i]] = i
	}
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs[i] = e.m.DeleteSandbox(ctx, fmt.Sprintf("c%03d", i))
		}(i)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("delete %d: %v", i, err)
		}
	}
	assertEmpty(t, e)
}

// assertEmpty checks that no sandbox, allocation, pin or host veth is left.
func assertEmpty(t *testing.T, e *env) {
	t.Helper()
	ctx := context.Background()
	for _, prefix := range []string{"sandboxes/", "ipam/", "intents/", "joins/"} {
		kvs, _, err := e.rt.List(ctx, prefix)
		if err != nil {
			t.Fatal(err)
		}
		if len(kvs) > 0 {
			t.Errorf("%d keys left under %s, first %s", len(kvs), prefix, kvs[0].Key)
		}
	}
	pins, _ := filepath.Glob(filepath.Join(e.runDir, "netns", "*"))
	if len(pins) > 0 {
		t.Errorf("pins left: %v", pins)
	}
	locks, _ := filepath.Glob(filepath.Join(e.runDir, "locks", "sandbox-*"))
	if len(locks) > 0 {
		t.Errorf("lock files left: %v", locks)
	}
	testutil.WaitNoLinks(t, e.host, "nmv")
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil && strings.Contains(string(b), e.runDir) {
		t.Errorf("mounts under %s left", e.runDir)
	}
}

func TestExternalNamespace(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.network(t, "ext", "10.21.0.0/24")
	own := testutil.NewNS(t, "runtime-made")
	s, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "x", NetNS: own.Path(), Networks: []netmgr.AttachSpec{{Network: "ext"}}})
	if err != nil {
		t.Fatal(err)
	}
	if s.Mode != netmgr.ModeExternal || s.NetNS != own.Path() {
		t.Fatalf("sandbox %+v", s)
	}
	h, err := own.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if _, err := h.LinkByName("eth0"); err != nil {
		t.Fatalf("eth0 not in the given namespace: %v", err)
	}
	if err := e.m.DeleteSandbox(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.LinkByName("eth0"); err == nil {
		t.Fatal("eth0 left in the given namespace after delete")
	}
	if !sandbox.IsPinned(own.Path()) {
		t.Fatal("delete removed a namespace netmgr did not create")
	}
	// A namespace that vanished before the delete: the delete still frees everything.
	gone := testutil.NewNS(t, "short-lived")
	if _, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "y", NetNS: gone.Path(), Networks: []netmgr.AttachSpec{{Network: "ext"}}}); err != nil {
		t.Fatal(err)
	}
	gone.Close()
	if err := sandbox.Remove(gone.Path()); err != nil {
		t.Fatal(err)
	}
	if err := e.m.DeleteSandbox(ctx, "y"); err != nil {
		t.Fatal(err)
	}
	assertEmpty(t, e)
}

// TestCancelledCreateRollsBack cancels a create's context after the kernel work, so that its final
// store write fails: the rollback must still run to the end (it does not use the cancelled context),
// leaving nothing, and the name and address must be usable at once.
func TestCancelledCreateRollsBack(t *testing.T) {
	e := newEnv(t)
	e.network(t, "cc", "10.22.0.0/24")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	hooked, err := netmgr.New(context.Background(), netmgr.WithStateDir(e.stateDir), netmgr.WithRunDir(e.runDir),
		netmgr.WithHostNetNS(e.host.Path()), netmgr.WithStepHook(func(step string) {
			if step == netmgr.StepSandboxAttached {
				cancel()
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer hooked.Close()
	spec := netmgr.SandboxSpec{Name: "c", Networks: []netmgr.AttachSpec{{Network: "cc", IPs: []netip.Addr{netip.MustParseAddr("10.22.0.9")}}}}
	if _, err := hooked.CreateSandbox(ctx, spec); !errors.Is(err, context.Canceled) {
		t.Fatalf("create with a context cancelled midway: %v, want context.Canceled", err)
	}
	assertEmpty(t, e)
	if _, err := e.m.CreateSandbox(context.Background(), spec); err != nil {
		t.Fatalf("name and address not reusable after the rollback: %v", err)
	}
}

// TestUserBridgeIsLeftInPlace: a network on a bridge the user made (--opt bridge=NAME) adds its gateway
// to it and, when removed, takes back only the gateway: the bridge stays.
func TestUserBridgeIsLeftInPlace(t *testing.T) {
	e := newEnv(t)
	h, err := e.host.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "userbr0"}}); err != nil {
		t.Fatal(err)
	}
	e.network(t, "onuser", "10.23.0.0/24", func(s *netmgr.NetworkSpec) { s.Options = map[string]string{"bridge": "userbr0"} })
	_, ns := e.sandbox(t, "u", "onuser")
	if err := testutil.Ping(ns, "10.23.0.1"); err != nil {
		t.Fatal(err)
	}
	if err := e.m.DeleteSandbox(context.Background(), "u"); err != nil {
		t.Fatal(err)
	}
	if err := e.m.DeleteNetwork(context.Background(), "onuser"); err != nil {
		t.Fatal(err)
	}
	br, err := h.LinkByName("userbr0")
	if err != nil {
		t.Fatalf("deleting the network removed the user's bridge: %v", err)
	}
	addrs, _ := h.AddrList(br, netlink.FAMILY_V4)
	if len(addrs) != 0 {
		t.Errorf("gateway left on the user's bridge: %v", addrs)
	}
	// A bridge netmgr made goes with its network.
	e.network(t, "own", "10.24.0.0/24")
	if err := e.m.DeleteNetwork(context.Background(), "own"); err != nil {
		t.Fatal(err)
	}
	if testutil.HasLink(t, e.host, "nm-own") {
		t.Error("netmgr's own bridge left after network delete")
	}
}
