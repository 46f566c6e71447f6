package agent_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	_ "github.com/netmgr/netmgr/drivers/overlay"
	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/agent"
	"github.com/netmgr/netmgr/netmgr/store"
	"github.com/netmgr/netmgr/netmgr/store/etcd"
	"github.com/netmgr/netmgr/sandbox"
)

// The test topology of DESIGN.md's Cluster part: every host a network namespace with one underlay
// interface (eth0, 198.18.0.N/24) on a bridge in an "underlay" namespace; a real etcd on host 1's
// underlay address; an "outside" namespace on the underlay (198.18.0.200) for a client beyond the
// cluster. Everything is made by the test and goes with it.
type testbed struct {
	t        testing.TB
	underlay *testutil.Underlay
	etcd     *testutil.Etcd
	hosts    []*host
	outside  *sandbox.NetNS
}

// host is one node: its namespace, its Manager (networks in etcd, runtime state in its own file)
// and, while running, its agent.
type host struct {
	name  string
	ns    *sandbox.NetNS
	addr  netip.Addr
	cs    *etcd.Store
	m     *netmgr.Manager
	stop  context.CancelFunc
	done  chan error
	agent *agent.Agent
}

const ttl = 3 * time.Second

func newTestbed(t testing.TB, n int) *testbed {
	t.Helper()
	testutil.RequireNetAdmin(t)
	testutil.RequireEtcd(t)
	tb := &testbed{t: t, underlay: testutil.NewUnderlay(t)}
	tb.outside = tb.underlay.Plug("outside", netip.MustParseAddr("198.18.0.200"), nil)
	for i := 1; i <= n; i++ {
		tb.addHost()
	}
	tb.etcd = testutil.StartEtcd(t, testutil.EtcdOptions{NS: tb.hosts[0].ns, Addr: tb.hosts[0].addr.String()})
	for _, h := range tb.hosts {
		tb.open(h)
	}
	return tb
}

func (tb *testbed) addHost() *host {
	i := len(tb.hosts) + 1
	h := &host{name: fmt.Sprintf("host%d", i), addr: netip.AddrFrom4([4]byte{198, 18, 0, byte(i)})}
	h.ns = tb.underlay.Plug(h.name, h.addr, nil)
	tb.hosts = append(tb.hosts, h)
	return h
}

// dialer opens connections to etcd from inside h's namespace, over the underlay.
func (h *host) dialer(ctx context.Context, addr string) (net.Conn, error) {
	var c net.Conn
	err := h.ns.Do(func() (err error) {
		c, err = (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		return err
	})
	return c, err
}

// open gives h its cluster store and Manager.
func (tb *testbed) open(h *host) {
	t := tb.t
	ctx := context.Background()
	cs, err := etcd.New(ctx, etcd.Options{Endpoints: []string{tb.etcd.Endpoint}, Prefix: "/test/", Dialer: h.dialer})
	if err != nil {
		t.Fatal(err)
	}
	rt, err := netmgr.OpenRuntimeStore(ctx, filepath.Join(t.TempDir(), "runtime.db"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := netmgr.New(ctx, netmgr.WithNode(h.name), netmgr.WithStores(cs, rt),
		netmgr.WithStateDir(t.TempDir()), netmgr.WithRunDir(t.TempDir()), netmgr.WithHostNetNS(h.ns.Path()),
		netmgr.WithLogger(testutil.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	h.cs, h.m = cs, m
	t.Cleanup(func() {
		h.kill()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		sbs, _ := m.Sandboxes(ctx)
		for _, s := range sbs {
			if err := m.DeleteSandbox(ctx, s.Name); err != nil {
				t.Errorf("cleanup %s: %v", h.name, err)
			}
		}
		js, _ := m.JoinedNetworks(ctx)
		for _, j := range js {
			if err := m.LeaveNetwork(ctx, j.Network, true); err != nil {
				t.Errorf("cleanup %s: %v", h.name, err)
			}
		}
		m.Close()
		rt.Close()
		cs.Close()
	})
}

// start runs h's agent in this process until kill.
func (tb *testbed) start(h *host) *agent.Agent {
	tb.t.Helper()
	a, err := agent.New(agent.Config{Manager: h.m, Cluster: h.cs, Underlay: h.addr, TTL: ttl, Resync: 5 * time.Second, Logger: testutil.Logger(tb.t)})
	if err != nil {
		tb.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.stop, h.done, h.agent = cancel, make(chan error, 1), a
	go func() { h.done <- a.Run(ctx) }()
	return a
}

// kill stops h's agent as a SIGKILL would, as far as the cluster can tell: no more keep-alives, no
// revoke; the data path stays.
func (h *host) kill() {
	if h.stop == nil {
		return
	}
	h.stop()
	<-h.done
	h.stop = nil
}

// waitJoined waits until every host in hs carries network name.
func waitJoined(t testing.TB, name string, hs ...*host) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for _, h := range hs {
		for {
			js, err := h.m.JoinedNetworks(context.Background())
			if err == nil && containsJoined(js, name) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s did not join %s: %v %v", h.name, name, js, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

func containsJoined(js []*netmgr.Joined, name string) bool {
	for _, j := range js {
		if j.Network == name {
			return true
		}
	}
	return false
}

// pod creates a sandbox on network on h, with a Listen server on port 8080, and returns its netns
// and address.
func (h *host) pod(t testing.TB, name, network string) (*sandbox.NetNS, netip.Addr) {
	t.Helper()
	s, err := h.m.CreateSandbox(context.Background(), netmgr.SandboxSpec{Name: name, Networks: []netmgr.AttachSpec{{Network: network}}})
	if err != nil {
		t.Fatalf("%s: %v", h.name, err)
	}
	ns := testutil.Open(t, s.NetNS)
	testutil.Listen(t, ns, ":8080")
	return ns, s.Attachments[0].IPv4.Addr()
}

var _ store.Store = (*etcd.Store)(nil)
