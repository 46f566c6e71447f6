package netmgr_test

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sync"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/netmgr/netmgr/drivers"
	// The Manager registers only bridge, host and link; the tests use macvlan too, which podctl and
	// netmgr-cni link through drivers/all.
	_ "github.com/netmgr/netmgr/drivers/all"
	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/sandbox"
)

// recordingDriver is a driver that creates nothing and records what it was asked to do.
type recordingDriver struct {
	mu    sync.Mutex
	env   drivers.Env
	calls []string
}

func (d *recordingDriver) note(c string) { d.mu.Lock(); d.calls = append(d.calls, c); d.mu.Unlock() }
func (d *recordingDriver) seen() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.calls...)
}
func (d *recordingDriver) PrepareNetwork(n *drivers.Network, _ []*drivers.Network) error {
	d.note("prepare-network " + n.Name)
	return nil
}
func (d *recordingDriver) CreateNetwork(_ context.Context, n *drivers.Network) error {
	d.note("create-network " + n.Name)
	return nil
}
func (d *recordingDriver) DeleteNetwork(_ context.Context, n *drivers.Network) error {
	d.note("delete-network " + n.Name)
	return nil
}
func (d *recordingDriver) PrepareEndpoint(_ *drivers.Network, ep *drivers.Endpoint) error {
	d.note("prepare-endpoint " + ep.Sandbox)
	return nil
}
func (d *recordingDriver) Attach(_ context.Context, _ *drivers.Network, ep *drivers.Endpoint, _ *sandbox.NetNS) error {
	d.note("attach " + ep.Sandbox)
	return nil
}
func (d *recordingDriver) Detach(_ context.Context, _ *drivers.Network, ep *drivers.Endpoint, _ *sandbox.NetNS, _ drivers.DetachOptions) error {
	d.note("detach " + ep.Sandbox)
	return nil
}

// TestWithDriver: drivers given to a Manager by option are its own. Two Managers in one process, one
// with a driver the global registry does not know and one with a replacement for bridge, each use
// theirs; a Manager without the option refuses the unknown name, and the global bridge is untouched.
func TestWithDriver(t *testing.T) {
	testutil.RequireRoot(t)
	ctx := context.Background()
	host := testutil.NewNS(t, "host")
	open := func(opts ...netmgr.Option) *netmgr.Manager {
		t.Helper()
		m, err := netmgr.New(ctx, append([]netmgr.Option{netmgr.WithStateDir(t.TempDir()), netmgr.WithRunDir(t.TempDir()),
			netmgr.WithHostNetNS(host.Path())}, opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}
	if _, ok := drivers.Lookup("recording"); ok {
		t.Fatal("the global registry knows \"recording\": the test proves nothing")
	}
	var built int
	fake, shadow := &recordingDriver{}, &recordingDriver{}
	m1 := open(netmgr.WithDriver("recording", func(env drivers.Env) (drivers.Driver, error) {
		built++
		fake.env = env
		return fake, nil
	}))
	m2 := open(netmgr.WithDriver("bridge", func(env drivers.Env) (drivers.Driver, error) { return shadow, nil }))
	plain := open()

	subnet := []netip.Prefix{netip.MustParsePrefix("10.77.0.0/24")}
	if _, err := m1.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "rec", Driver: "recording", Subnets: subnet}); err != nil {
		t.Fatalf("m1: create on its own driver: %v", err)
	}
	if _, err := m1.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "s1", Networks: []netmgr.AttachSpec{{Network: "rec"}}}); err != nil {
		t.Fatalf("m1: sandbox on its own driver: %v", err)
	}
	if err := m1.DeleteSandbox(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if err := m1.DeleteNetwork(ctx, "rec"); err != nil {
		t.Fatal(err)
	}
	want := []string{"prepare-network rec", "create-network rec", "prepare-endpoint s1", "attach s1", "detach s1", "delete-network rec"}
	if got := fake.seen(); !slices.Equal(got, want) {
		t.Errorf("m1's driver saw %q, want %q", got, want)
	}
	if built != 1 || fake.env.Host == nil || fake.env.HostHandle == nil || fake.env.Logger == nil {
		t.Errorf("factory built %d times, env %+v: want once, with the Manager's host, handle and logger", built, fake.env)
	}

	if _, err := plain.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "rec", Driver: "recording", Subnets: subnet}); !errors.Is(err, netmgr.ErrInvalid) {
		t.Errorf("a Manager without the option: create on \"recording\": %v, want ErrInvalid", err)
	}

	// m2's "bridge" is its own: no bridge device appears in the host namespace.
	if _, err := m2.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "br", Driver: "bridge", Subnets: subnet}); err != nil {
		t.Fatalf("m2: create on its bridge: %v", err)
	}
	if got := shadow.seen(); len(got) < 2 || got[1] != "create-network br" {
		t.Errorf("m2's bridge saw %q, want prepare-network and create-network br", got)
	}
	hh, err := host.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer hh.Close()
	links, err := hh.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if _, ok := l.(*netlink.Bridge); ok {
			t.Errorf("m2's network made a kernel bridge %s: the global bridge driver ran", l.Attrs().Name)
		}
	}
	if err := m2.DeleteNetwork(ctx, "br"); err != nil {
		t.Fatal(err)
	}

	if _, err := netmgr.New(ctx, netmgr.WithStateDir(t.TempDir()), netmgr.WithRunDir(t.TempDir()), netmgr.WithHostNetNS(host.Path()),
		netmgr.WithDriver("x", nil)); !errors.Is(err, netmgr.ErrInvalid) {
		t.Errorf("WithDriver with a nil factory: %v, want ErrInvalid", err)
	}
}
