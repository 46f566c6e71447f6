package netmgr_test

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"testing"

	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/firewall"
	"github.com/netmgr/netmgr/netmgr/store"
	"github.com/netmgr/netmgr/sandbox"
)

// sharedHost is one host of a two-host cluster that shares one store: its own namespace, run and
// state dirs.
type sharedHost struct {
	m    *netmgr.Manager
	host *sandbox.NetNS
}

func newSharedHost(t *testing.T, node string, st store.Store) *sharedHost {
	t.Helper()
	host := testutil.NewNS(t, "host-"+node)
	m, err := netmgr.New(context.Background(), netmgr.WithNode(node), netmgr.WithStore(st),
		netmgr.WithStateDir(t.TempDir()), netmgr.WithRunDir(t.TempDir()), netmgr.WithHostNetNS(host.Path()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		sbs, err := m.Sandboxes(ctx)
		if err != nil {
			t.Errorf("cleanup: %v", err)
		}
		for _, s := range sbs {
			if err := m.DeleteSandbox(ctx, s.Name); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
		nets, _ := m.Networks(ctx)
		for _, n := range nets {
			if n.Node == "" || n.Node == node {
				_ = m.DeleteNetwork(ctx, n.Name)
			}
		}
		m.Close()
	})
	return &sharedHost{m: m, host: host}
}

func (h *sharedHost) rules(t *testing.T) []string {
	t.Helper()
	fw, err := firewall.New(h.host.Fd(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer fw.Close()
	nets, err := fw.Networks(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return nets
}

// Two Managers on two hosts with one store never harm each other: each side's gc, repair and
// deletes leave the other side's sandboxes, addresses, bridges and rules alone (issue 8 item 1;
// REVIEW §1.3, where host B's gc deleted host A's live sandbox, freed its address and made A's
// bridge on B).
func TestTwoHostsOneStore(t *testing.T) {
	testutil.RequireRoot(t)
	ctx := context.Background()
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "cluster.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() }) // after the hosts' cleanups, which use it
	a := newSharedHost(t, "a", st)
	b := newSharedHost(t, "b", st)

	if _, err := a.m.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "n", Subnets: prefixes("10.66.0.0/24")}); err != nil {
		t.Fatal(err)
	}
	web, err := a.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "web", Networks: []netmgr.AttachSpec{{Network: "n"}},
		Publish: []netmgr.PortMapping{{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.m.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "m", Subnets: prefixes("10.67.0.0/24")}); err != nil {
		t.Fatal(err)
	}
	// The same sandbox name and port on the other host: they are that host's own.
	db, err := b.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "web", Networks: []netmgr.AttachSpec{{Network: "m"}},
		Publish: []netmgr.PortMapping{{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}}})
	if err != nil {
		t.Fatal(err)
	}

	for _, side := range []struct {
		name        string
		self, other *sharedHost
		otherSB     *netmgr.Sandbox
		otherNet    string
	}{{"b-gc", b, a, web, "n"}, {"a-gc", a, b, db, "m"}} {
		rep, err := side.self.m.Recover(ctx)
		if err != nil {
			t.Fatalf("%s: %v", side.name, err)
		}
		if len(rep.Stale)+len(rep.Addresses)+len(rep.Pins)+len(rep.Links)+len(rep.Restored)+len(rep.Ports) > 0 {
			t.Errorf("%s repaired something on a healthy cluster: %+v", side.name, rep)
		}
		got, err := side.other.m.Sandbox(ctx, "web")
		if err != nil || got.ID != side.otherSB.ID || got.Attachments[0].IPv4 != side.otherSB.Attachments[0].IPv4 {
			t.Fatalf("%s: the other host's sandbox: %+v, %v", side.name, got, err)
		}
		if !sandbox.IsPinned(side.otherSB.NetNS) {
			t.Errorf("%s: the other host's pin is gone", side.name)
		}
		if err := testutil.Ping(testutil.Open(t, side.otherSB.NetNS), side.otherSB.Attachments[0].Gateways[0].String()); err != nil {
			t.Errorf("%s: the other host's sandbox is cut off: %v", side.name, err)
		}
		if testutil.HasLink(t, side.self.host, "nm-"+side.otherNet) {
			t.Errorf("%s made the other host's bridge nm-%s here", side.name, side.otherNet)
		}
		if !testutil.HasLink(t, side.other.host, "nm-"+side.otherNet) {
			t.Errorf("%s: the other host lost its bridge nm-%s", side.name, side.otherNet)
		}
	}
	if r := a.rules(t); !slices.Equal(r, []string{"n"}) {
		t.Errorf("host a's firewall has rules for %v, want [n]", r)
	}
	if r := b.rules(t); !slices.Equal(r, []string{"m"}) {
		t.Errorf("host b's firewall has rules for %v, want [m]", r)
	}

	// A local network is its node's: the other lists it but may not attach to or delete it.
	if _, err := b.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "x", Networks: []netmgr.AttachSpec{{Network: "n"}}}); !errors.Is(err, netmgr.ErrInvalid) {
		t.Errorf("b attaching to a's network: %v, want ErrInvalid", err)
	}
	if err := b.m.DeleteNetwork(ctx, "n"); !errors.Is(err, netmgr.ErrInvalid) {
		t.Errorf("b deleting a's network: %v, want ErrInvalid", err)
	}
	if n, err := b.m.Network(ctx, "n"); err != nil || n.Node != "a" {
		t.Errorf("b's view of n: %+v, %v", n, err)
	}
	// Subnets stay unique across the cluster.
	if _, err := b.m.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "n2", Subnets: prefixes("10.66.0.0/25")}); !errors.Is(err, netmgr.ErrInUse) {
		t.Errorf("b reusing a's subnet: %v, want ErrInUse", err)
	}
	// Deleting "web" on b removes b's web only.
	if err := b.m.DeleteSandbox(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if got, err := a.m.Sandbox(ctx, "web"); err != nil || got.ID != web.ID {
		t.Fatalf("a's web after b deleted its own: %+v, %v", got, err)
	}
	if !sandbox.IsPinned(web.NetNS) {
		t.Error("a's web lost its pin")
	}
}
