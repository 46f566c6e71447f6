package cni_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/netmgr/netmgr/drivers/cni"
	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/sandbox"
)

// Debian's reference plugins (apt-get install containernetworking-plugins).
const pluginDir = "/usr/lib/cni"

func requirePlugins(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := os.Stat(filepath.Join(pluginDir, n)); err != nil {
			t.Skipf("needs the CNI %s plugin in %s (apt-get install containernetworking-plugins)", n, pluginDir)
		}
	}
}

// env is one test host: a namespace standing for the host, and a Manager working in it.
type env struct {
	host  *sandbox.NetNS
	m     *netmgr.Manager
	dir   string // scratch: configuration, host-local's data, libcni's cache
	cache string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	testutil.RequireRoot(t)
	e := &env{host: testutil.NewNS(t, "host"), dir: t.TempDir()}
	e.cache = filepath.Join(e.dir, "cache")
	m, err := netmgr.New(context.Background(), netmgr.WithHostNetNS(e.host.Path()),
		netmgr.WithStateDir(t.TempDir()), netmgr.WithRunDir(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	e.m = m
	t.Cleanup(func() {
		ctx := context.Background()
		sbs, _ := m.Sandboxes(ctx)
		for _, s := range sbs {
			if err := m.DeleteSandbox(ctx, s.Name); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
		m.Close()
	})
	return e
}

// conflist writes a configuration list and returns its path.
func (e *env) conflist(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(e.dir, name+".conflist")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func (e *env) network(t *testing.T, name, conflist string) {
	t.Helper()
	_, err := e.m.CreateNetwork(context.Background(), netmgr.NetworkSpec{Name: name, Driver: cni.Name,
		Options: map[string]string{cni.OptConfList: conflist, cni.OptPath: pluginDir, cni.OptCacheDir: e.cache}})
	if err != nil {
		t.Fatal(err)
	}
}

func bridgeConf(name, bridge, subnet, dataDir string) string {
	return fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": %q,
  "plugins": [{
    "type": "bridge", "bridge": %q, "isGateway": true, "ipMasq": false, "hairpinMode": true,
    "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": %q}]], "routes": [{"dst": "0.0.0.0/0"}]}
  }]
}`, name, bridge, dataDir, subnet)
}

// allocated lists the addresses host-local holds in dataDir for network name.
func allocated(t *testing.T, dataDir, name string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(dataDir, name))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if _, err := netip.ParseAddr(e.Name()); err == nil {
			out = append(out, e.Name())
		}
	}
	return out
}

func ports(t *testing.T, host *sandbox.NetNS, bridge string) []string {
	t.Helper()
	h, err := host.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	br, err := h.LinkByName(bridge)
	if err != nil {
		t.Fatal(err)
	}
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range links {
		if l.Attrs().MasterIndex == br.Attrs().Index {
			out = append(out, l.Attrs().Name)
		}
	}
	return out
}

func TestCNIDriverBridge(t *testing.T) {
	requirePlugins(t, "bridge", "host-local")
	e := newEnv(t)
	ctx := context.Background()
	data := filepath.Join(e.dir, "ipam")
	e.network(t, "refbr", e.conflist(t, "refbr", bridgeConf("refbr", "cnibr0", "10.77.0.0/24", data)))

	var sbs []*netmgr.Sandbox
	for _, name := range []string{"a", "b"} {
		s, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: name, Networks: []netmgr.AttachSpec{{Network: "refbr"}}})
		if err != nil {
			t.Fatal(err)
		}
		at := s.Attachments[0]
		if !netip.MustParsePrefix("10.77.0.0/24").Contains(at.IPv4.Addr()) || at.IPv4.Bits() != 24 {
			t.Fatalf("%s: address %v is not from host-local's range", name, at.IPv4)
		}
		if len(at.Gateways) != 1 || at.Gateways[0] != netip.MustParseAddr("10.77.0.1") {
			t.Errorf("%s: gateways %v, want the bridge's 10.77.0.1", name, at.Gateways)
		}
		if at.MAC == "" || at.Interface != "eth0" {
			t.Errorf("%s: attachment %+v lacks the MAC or interface", name, at)
		}
		sbs = append(sbs, s)
	}
	if got := allocated(t, data, "refbr"); len(got) != 2 {
		t.Fatalf("host-local holds %v, want two addresses", got)
	}
	n, err := e.m.Network(ctx, "refbr")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(n.Sandboxes, ",") != "a,b" {
		t.Errorf("network lists sandboxes %v, want a,b", n.Sandboxes)
	}
	if err := e.m.DeleteNetwork(ctx, "refbr"); !errors.Is(err, netmgr.ErrInUse) {
		t.Fatalf("deleting the network in use: %v, want ErrInUse", err)
	}

	a, b := testutil.Open(t, sbs[0].NetNS), testutil.Open(t, sbs[1].NetNS)
	addr := testutil.Listen(t, b, sbs[1].Attachments[0].IPv4.Addr().String()+":8080")
	seen, err := testutil.Dial(a, addr)
	if err != nil {
		t.Fatalf("a cannot reach b over the CNI bridge: %v", err)
	}
	if seen != sbs[0].Attachments[0].IPv4.Addr().String() {
		t.Errorf("b saw %s, want a's own address %s", seen, sbs[0].Attachments[0].IPv4.Addr())
	}
	if got := ports(t, e.host, "cnibr0"); len(got) != 2 {
		t.Fatalf("bridge ports %v, want two veths", got)
	}

	for _, s := range sbs {
		if err := e.m.DeleteSandbox(ctx, s.Name); err != nil {
			t.Fatal(err)
		}
	}
	if got := allocated(t, data, "refbr"); len(got) != 0 {
		t.Errorf("host-local still holds %v after detach", got)
	}
	if got := ports(t, e.host, "cnibr0"); len(got) != 0 {
		t.Errorf("bridge ports %v left after detach", got)
	}
	if err := e.m.DeleteSandbox(ctx, "a"); err != nil {
		t.Errorf("second delete: %v", err)
	}
	if err := e.m.DeleteNetwork(ctx, "refbr"); err != nil {
		t.Fatal(err)
	}
}

func TestCNIDriverMacvlan(t *testing.T) {
	requirePlugins(t, "macvlan", "host-local")
	e := newEnv(t)
	ctx := context.Background()
	// The parent lives in the test host namespace, where the plugin process runs.
	h, err := e.host.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "mvparent"}, PeerName: "mvpeer"}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"mvparent", "mvpeer"} {
		l, err := h.LinkByName(n)
		if err == nil {
			err = h.LinkSetUp(l)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	data := filepath.Join(e.dir, "ipam")
	e.network(t, "mv", e.conflist(t, "mv", fmt.Sprintf(`{
  "cniVersion": "1.0.0", "name": "mv",
  "plugins": [{"type": "macvlan", "master": "mvparent", "mode": "bridge",
    "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": "10.78.0.0/24"}]]}}]
}`, data)))
	var sbs []*netmgr.Sandbox
	for _, name := range []string{"m1", "m2"} {
		s, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: name, Networks: []netmgr.AttachSpec{{Network: "mv", IfName: "net1"}}})
		if err != nil {
			t.Fatal(err)
		}
		if !netip.MustParsePrefix("10.78.0.0/24").Contains(s.Attachments[0].IPv4.Addr()) {
			t.Fatalf("%s: address %v", name, s.Attachments[0].IPv4)
		}
		sbs = append(sbs, s)
	}
	if err := testutil.Ping(testutil.Open(t, sbs[0].NetNS), sbs[1].Attachments[0].IPv4.Addr().String()); err != nil {
		t.Fatalf("macvlan siblings cannot reach each other: %v", err)
	}
	for _, s := range sbs {
		if err := e.m.DeleteSandbox(ctx, s.Name); err != nil {
			t.Fatal(err)
		}
	}
	if got := allocated(t, data, "mv"); len(got) != 0 {
		t.Errorf("host-local still holds %v after detach", got)
	}
}

// A sandbox can sit on a netmgr bridge network and a CNI network at once; only one default route.
func TestCNIDriverNextToBridge(t *testing.T) {
	requirePlugins(t, "bridge", "host-local")
	e := newEnv(t)
	ctx := context.Background()
	data := filepath.Join(e.dir, "ipam")
	e.network(t, "refbr", e.conflist(t, "refbr", bridgeConf("refbr", "cnibr1", "10.79.0.0/24", data)))
	if _, err := e.m.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "own", Driver: "bridge",
		Subnets: []netip.Prefix{netip.MustParsePrefix("10.80.0.0/24")}}); err != nil {
		t.Fatal(err)
	}
	s, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "both", Networks: []netmgr.AttachSpec{{Network: "refbr"}, {Network: "own"}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Attachments) != 2 || !s.Attachments[0].IPv4.IsValid() || !s.Attachments[1].IPv4.IsValid() {
		t.Fatalf("attachments %+v", s.Attachments)
	}
	if len(s.Attachments[1].Gateways) != 0 {
		t.Errorf("the bridge attachment got gateways %v although the CNI one set the default route", s.Attachments[1].Gateways)
	}
	if err := e.m.DeleteSandbox(ctx, "both"); err != nil {
		t.Fatal(err)
	}
	if got := allocated(t, data, "refbr"); len(got) != 0 {
		t.Errorf("host-local still holds %v", got)
	}
}

func TestCNIDriverBadNetworks(t *testing.T) {
	requirePlugins(t, "bridge", "host-local")
	e := newEnv(t)
	ctx := context.Background()
	good := e.conflist(t, "good", bridgeConf("good", "cnibr2", "10.81.0.0/24", filepath.Join(e.dir, "ipam")))
	missing := e.conflist(t, "missing", `{"cniVersion": "1.0.0", "name": "missing", "plugins": [{"type": "no-such-plugin"}]}`)
	for _, tc := range []struct {
		name string
		spec netmgr.NetworkSpec
	}{
		{"no configuration", netmgr.NetworkSpec{Name: "x", Driver: cni.Name}},
		{"both conflist and confdir", netmgr.NetworkSpec{Name: "x", Driver: cni.Name, Options: map[string]string{cni.OptConfList: good, cni.OptConfDir: e.dir}}},
		{"missing file", netmgr.NetworkSpec{Name: "x", Driver: cni.Name, Options: map[string]string{cni.OptConfList: filepath.Join(e.dir, "nope.conflist")}}},
		{"plugin not installed", netmgr.NetworkSpec{Name: "x", Driver: cni.Name, Options: map[string]string{cni.OptConfList: missing, cni.OptPath: pluginDir}}},
		{"subnets", netmgr.NetworkSpec{Name: "x", Driver: cni.Name, Options: map[string]string{cni.OptConfList: good, cni.OptPath: pluginDir},
			Subnets: []netip.Prefix{netip.MustParsePrefix("10.82.0.0/24")}}},
		{"unknown option", netmgr.NetworkSpec{Name: "x", Driver: cni.Name, Options: map[string]string{cni.OptConfList: good, "colour": "red"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := e.m.CreateNetwork(ctx, tc.spec); !errors.Is(err, netmgr.ErrInvalid) {
				t.Fatalf("got %v, want ErrInvalid", err)
			}
		})
	}
	if nets, _ := e.m.Networks(ctx); len(nets) != 0 {
		t.Errorf("networks recorded after bad creates: %v", nets)
	}
	// By confdir and name, with a static address refused: the plugin's IPAM decides.
	if _, err := e.m.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "good", Driver: cni.Name,
		Options: map[string]string{cni.OptConfDir: e.dir, cni.OptPath: pluginDir, cni.OptCacheDir: e.cache}}); err != nil {
		t.Fatal(err)
	}
	_, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "s", Networks: []netmgr.AttachSpec{{Network: "good", IPs: []netip.Addr{netip.MustParseAddr("10.81.0.9")}}}})
	if !errors.Is(err, netmgr.ErrInvalid) {
		t.Fatalf("static address on a cni network: %v, want ErrInvalid", err)
	}
}
