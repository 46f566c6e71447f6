package netmgr_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/netmgr/netmgr/drivers"
	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/store"
	"github.com/netmgr/netmgr/sandbox"
)

// fakeDriver is a driver without plumbing, registered by these tests to check what the Manager asks
// of the optional abilities. Its state is kept per host namespace (one per test), since the registry
// is global and every Manager of the package meets it.
type fakeDriver struct{ host string }

func (fakeDriver) PrepareNetwork(*drivers.Network, []*drivers.Network) error { return nil }
func (fakeDriver) CreateNetwork(context.Context, *drivers.Network) error     { return nil }
func (fakeDriver) DeleteNetwork(context.Context, *drivers.Network) error     { return nil }
func (fakeDriver) PrepareEndpoint(*drivers.Network, *drivers.Endpoint) error { return nil }
func (fakeDriver) Attach(context.Context, *drivers.Network, *drivers.Endpoint, *sandbox.NetNS) error {
	return nil
}
func (fakeDriver) Detach(context.Context, *drivers.Network, *drivers.Endpoint, *sandbox.NetNS, drivers.DetachOptions) error {
	return nil
}

// allocDriver implements drivers.Allocator: it gives each network the next free "vni".
type allocDriver struct{ fakeDriver }

// fakeCalls counts, per host namespace, the calls the fake drivers saw.
var fakeCalls = struct {
	sync.Mutex
	allocate map[string]int
	taken    map[string][]string // network -> the vnis of taken
	collect  map[string][]drivers.CollectInput
	leftover map[string][]string // host -> the links Collect is to report removed
}{allocate: map[string]int{}, taken: map[string][]string{}, collect: map[string][]drivers.CollectInput{}, leftover: map[string][]string{}}

func (d allocDriver) Allocate(_ context.Context, n *drivers.Network, taken []*drivers.Network) error {
	fakeCalls.Lock()
	defer fakeCalls.Unlock()
	fakeCalls.allocate[d.host]++
	used := map[string]bool{}
	var vnis []string
	for _, o := range taken {
		used[o.Options["vni"]] = true
		vnis = append(vnis, o.Options["vni"])
	}
	fakeCalls.taken[n.Name] = vnis
	if n.Options["fail"] != "" {
		return fmt.Errorf("%w: no VNI left", drivers.ErrFull)
	}
	for v := 100; ; v++ {
		if !used[fmt.Sprint(v)] {
			n.Options["vni"] = fmt.Sprint(v)
			return nil
		}
	}
}

// poolDriver implements drivers.DefaultSubnetter with a pool of its own, and drivers.Firewaller
// with no host interface and no port targets (as a routed driver might).
type poolDriver struct{ fakeDriver }

func (poolDriver) DefaultSubnet(*drivers.Network) (netip.Prefix, int) {
	return netip.MustParsePrefix("10.123.0.0/16"), 26
}
func (poolDriver) Firewall(*drivers.Network) (drivers.FirewallSpec, bool) {
	return drivers.FirewallSpec{Masquerade: true}, true
}

// collectDriver implements drivers.Collector.
type collectDriver struct{ fakeDriver }

func (d collectDriver) Collect(_ context.Context, in drivers.CollectInput) (drivers.CollectResult, error) {
	fakeCalls.Lock()
	defer fakeCalls.Unlock()
	fakeCalls.collect[d.host] = append(fakeCalls.collect[d.host], in)
	return drivers.CollectResult{Links: fakeCalls.leftover[d.host]}, nil
}

func init() {
	drivers.Register("test-alloc", func(env drivers.Env) (drivers.Driver, error) {
		return allocDriver{fakeDriver{sandbox.StablePath(env.Host)}}, nil
	})
	drivers.Register("test-pool", func(env drivers.Env) (drivers.Driver, error) {
		return poolDriver{fakeDriver{sandbox.StablePath(env.Host)}}, nil
	})
	drivers.Register("test-collect", func(env drivers.Env) (drivers.Driver, error) {
		return collectDriver{fakeDriver{sandbox.StablePath(env.Host)}}, nil
	})
}

// TestCreateNetworkRefusesSandboxModes: host and link are sandbox modes; a network of them could
// never be attached, so its create is refused with one clear message and nothing recorded, while
// sandbox create --host and --join still work.
func TestCreateNetworkRefusesSandboxModes(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for _, d := range []string{"host", "link"} {
		_, err := e.m.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "m-" + d, Driver: d})
		if !errors.Is(err, netmgr.ErrInvalid) || !strings.Contains(err.Error(), "sandbox modes") || !strings.Contains(err.Error(), "--host or --join") {
			t.Errorf("create network --driver %s = %v, want ErrInvalid saying host and link are sandbox modes", d, err)
		}
	}
	if nets, err := e.m.Networks(ctx); err != nil || len(nets) != 0 {
		t.Errorf("networks after refused creates: %v, %v; want none", nets, err)
	}
	if _, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "h", Host: true}); err != nil {
		t.Errorf("sandbox create --host: %v", err)
	}
	e.network(t, "br", "10.124.0.0/24")
	e.sandbox(t, "target", "br")
	if _, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "j", Join: "target"}); err != nil {
		t.Errorf("sandbox create --join: %v", err)
	}
}

// TestLegacyModeNetworkCanBeDeleted: a network that an older netmgr recorded with driver host (it
// accepted them) can be listed and deleted, and attaching to it is refused clearly.
func TestLegacyModeNetworkCanBeDeleted(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	rec := `{"id":"0123456789abcdef","name":"oldhost","driver":"host","created":"2026-01-01T00:00:00Z"}`
	if err := e.st.Txn(ctx, nil, []store.Op{store.Put("networks/oldhost", []byte(rec))}); err != nil {
		t.Fatal(err)
	}
	_, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "s", Networks: []netmgr.AttachSpec{{Network: "oldhost"}}})
	if !errors.Is(err, netmgr.ErrInvalid) || !strings.Contains(err.Error(), "sandbox modes") {
		t.Errorf("attach to a host network = %v, want ErrInvalid saying host is a sandbox mode", err)
	}
	if rep, err := e.m.Recover(ctx); err != nil {
		t.Errorf("gc with a legacy host network: %v (%+v)", err, rep)
	}
	if err := e.m.DeleteNetwork(ctx, "oldhost"); err != nil {
		t.Errorf("delete legacy host network: %v", err)
	}
}

// TestAllocatorCalledAtCreate: a driver's cluster-wide allocation step runs once per network create,
// sees the other networks' allocations, and what it chose is recorded; a refusal creates nothing.
func TestAllocatorCalledAtCreate(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	calls := func() int {
		fakeCalls.Lock()
		defer fakeCalls.Unlock()
		return fakeCalls.allocate[sandbox.StablePath(e.host)]
	}
	a, err := e.m.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "ov-a", Driver: "test-alloc"})
	if err != nil {
		t.Fatal(err)
	}
	if got := calls(); got != 1 {
		t.Errorf("Allocate called %d times for one create, want 1", got)
	}
	b, err := e.m.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "ov-b", Driver: "test-alloc"})
	if err != nil {
		t.Fatal(err)
	}
	if got := calls(); got != 2 {
		t.Errorf("Allocate called %d times for two creates, want 2", got)
	}
	if a.Options["vni"] != "100" || b.Options["vni"] != "101" {
		t.Errorf("vnis %q and %q, want 100 and 101", a.Options["vni"], b.Options["vni"])
	}
	fakeCalls.Lock()
	taken := fakeCalls.taken["ov-b"]
	fakeCalls.Unlock()
	if !slices.Equal(taken, []string{"100"}) {
		t.Errorf("second Allocate saw taken vnis %v, want [100]", taken)
	}
	if got, err := e.m.Network(ctx, "ov-b"); err != nil || got.Options["vni"] != "101" {
		t.Errorf("recorded network %+v, %v; want vni 101", got, err)
	}
	_, err = e.m.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "ov-c", Driver: "test-alloc", Options: map[string]string{"fail": "1"}})
	if !errors.Is(err, netmgr.ErrFull) {
		t.Errorf("create with a refusing Allocate = %v, want ErrFull", err)
	}
	if _, err := e.m.Network(ctx, "ov-c"); !errors.Is(err, netmgr.ErrNotFound) {
		t.Errorf("refused network recorded: %v", err)
	}
	for _, n := range []string{"ov-a", "ov-b"} {
		if err := e.m.DeleteNetwork(ctx, n); err != nil {
			t.Error(err)
		}
	}
}

// TestDriverDecidesDefaultSubnetAndPortTargets: a network gets a default subnet from its driver's
// pool (not only bridge networks from 10.89/16); a driver whose endpoints are no port targets gets
// publishing refused; and its network, which has no host interface of its own, does not fail the
// firewall rules of a bridge network created after it.
func TestDriverDecidesDefaultSubnetAndPortTargets(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	n, err := e.m.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "pooled", Driver: "test-pool"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []netip.Prefix{netip.MustParsePrefix("10.123.0.0/26")}; !slices.Equal(n.Subnets, want) {
		t.Errorf("default subnet %v, want %v from the driver's pool", n.Subnets, want)
	}
	n2, err := e.m.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "pooled2", Driver: "test-pool"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []netip.Prefix{netip.MustParsePrefix("10.123.0.64/26")}; !slices.Equal(n2.Subnets, want) {
		t.Errorf("second default subnet %v, want %v", n2.Subnets, want)
	}
	_, err = e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "p", Networks: []netmgr.AttachSpec{{Network: "pooled"}},
		Publish: []netmgr.PortMapping{{Protocol: "tcp", HostPort: 8080, ContainerPort: 80}}})
	if !errors.Is(err, netmgr.ErrInvalid) || !strings.Contains(err.Error(), "published ports") {
		t.Errorf("publish on a network whose driver takes no published ports = %v, want ErrInvalid", err)
	}
	br := e.network(t, "br", "")
	if br.Subnets[0].Bits() != 24 || !netip.MustParsePrefix("10.89.0.0/16").Contains(br.Subnets[0].Addr()) {
		t.Errorf("bridge default subnet %v, want a /24 of 10.89.0.0/16", br.Subnets)
	}
	s, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "q", Networks: []netmgr.AttachSpec{{Network: "pooled"}, {Network: "br"}},
		Publish: []netmgr.PortMapping{{Protocol: "tcp", HostPort: 8080, ContainerPort: 80}}})
	if err != nil {
		t.Fatalf("publish with a bridge attachment after one that takes no ports: %v", err)
	}
	if len(s.Ports) != 1 {
		t.Errorf("ports %+v, want the one published", s.Ports)
	}
	for _, name := range []string{"q"} {
		if err := e.m.DeleteSandbox(ctx, name); err != nil {
			t.Error(err)
		}
	}
	for _, name := range []string{"br", "pooled", "pooled2"} {
		if err := e.m.DeleteNetwork(ctx, name); err != nil {
			t.Error(err)
		}
	}
}

// TestRecoverCallsCollectors: gc asks every driver that collects its host-side leftovers, with the
// host links, the driver's networks and the host interfaces that endpoints name, and reports what
// the driver removed.
func TestRecoverCallsCollectors(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	key := sandbox.StablePath(e.host)
	fakeCalls.Lock()
	fakeCalls.leftover[key] = []string{"fakeleft0"}
	fakeCalls.Unlock()
	e.network(t, "br", "10.125.0.0/24")
	s, _ := e.sandbox(t, "s", "br")
	if _, err := e.m.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "coll", Driver: "test-collect"}); err != nil {
		t.Fatal(err)
	}
	rep, err := e.m.Recover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(rep.Links, "fakeleft0") {
		t.Errorf("gc reported links %v, want the collector's fakeleft0", rep.Links)
	}
	fakeCalls.Lock()
	ins := fakeCalls.collect[key]
	fakeCalls.Unlock()
	if len(ins) != 1 {
		t.Fatalf("Collect called %d times by one gc, want 1", len(ins))
	}
	in := ins[0]
	if len(in.Networks) != 1 || in.Networks[0].Name != "coll" {
		t.Errorf("Collect got networks %v, want [coll]", in.Networks)
	}
	if hi := s.Attachments[0].HostInterface; hi == "" || !in.InUse[hi] {
		t.Errorf("Collect's InUse %v lacks the bridge endpoint's host interface %q", in.InUse, hi)
	}
	if len(in.Links) == 0 || in.Hold == nil || in.Named == nil {
		t.Errorf("Collect got no links, Hold or Named: %+v", in)
	}
	if err := e.m.DeleteNetwork(ctx, "coll"); err != nil {
		t.Error(err)
	}
}
