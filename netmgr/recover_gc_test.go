package netmgr_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/sandbox"
)

// TestGCRestoresDeletedBridge: a bridge deleted by hand is re-created by gc and every live sandbox's
// host end is put back on it, so old sandboxes reach their gateway and each other again; the report
// names the network and the endpoints, and a second gc finds nothing to do.
func TestGCRestoresDeletedBridge(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.network(t, "rb", "10.64.0.0/24")
	_, ans := e.sandbox(t, "a", "rb")
	b, _ := e.sandbox(t, "b", "rb")
	if err := testutil.Ping(ans, "10.64.0.1"); err != nil {
		t.Fatal(err)
	}
	h, err := e.host.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	br, err := h.LinkByName("nm-rb")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkDel(br); err != nil {
		t.Fatal(err)
	}
	rep, err := e.m.Recover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Restored, []string{"rb"}) {
		t.Errorf("restored %v, want [rb]", rep.Restored)
	}
	sort.Strings(rep.Endpoints)
	if !slices.Equal(rep.Endpoints, []string{"a/rb", "b/rb"}) {
		t.Errorf("endpoints %v, want [a/rb b/rb]", rep.Endpoints)
	}
	if err := testutil.Ping(ans, "10.64.0.1"); err != nil {
		t.Fatalf("old sandbox cut off from its gateway after gc: %v", err)
	}
	if err := testutil.Ping(ans, b.Attachments[0].IPv4.Addr().String()); err != nil {
		t.Fatalf("old sandboxes cut off from each other after gc: %v", err)
	}
	rep, err = e.m.Recover(ctx)
	if err != nil || len(rep.Restored)+len(rep.Endpoints) != 0 {
		t.Fatalf("second gc: %+v, %v; want nothing restored", rep, err)
	}
}

// TestGCRecreatesDeletedVeth: a sandbox's host veth deleted by hand takes the sandbox's interface
// with it; gc makes the pair again with the recorded names, MAC, address and default route.
func TestGCRecreatesDeletedVeth(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.network(t, "rv", "10.65.0.0/24")
	s, ns := e.sandbox(t, "v", "rv")
	att := s.Attachments[0]
	h, err := e.host.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	hl, err := h.LinkByName(att.HostInterface)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkDel(hl); err != nil {
		t.Fatal(err)
	}
	sh, err := ns.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer sh.Close()
	for i := 0; ; i++ {
		if _, err := sh.LinkByName("eth0"); err != nil {
			break
		}
		if i == 100 {
			t.Fatal("eth0 outlived its host end")
		}
		time.Sleep(20 * time.Millisecond)
	}
	rep, err := e.m.Recover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Endpoints, []string{"v/rv"}) {
		t.Errorf("endpoints %v, want [v/rv]", rep.Endpoints)
	}
	l, err := sh.LinkByName("eth0")
	if err != nil {
		t.Fatalf("gc did not give the sandbox its interface back: %v", err)
	}
	if l.Attrs().HardwareAddr.String() != att.MAC {
		t.Errorf("MAC %s, recorded %s", l.Attrs().HardwareAddr, att.MAC)
	}
	addrs, _ := sh.AddrList(l, netlink.FAMILY_V4)
	if len(addrs) != 1 || addrs[0].IPNet.String() != att.IPv4.String() {
		t.Errorf("addresses %v, want %s", addrs, att.IPv4)
	}
	if err := testutil.Ping(ns, "10.65.0.1"); err != nil {
		t.Fatalf("sandbox does not reach its gateway after gc: %v", err)
	}
	if len(rep.Links) != 0 {
		t.Errorf("gc deleted host interfaces %v", rep.Links)
	}
}

// TestGCRemovesUnownedBridges: a bridge with netmgr's owner mark that no network names (a create
// killed after making it, its record lost) is removed by gc, or reported and kept if it has ports; a
// bridge without the mark is someone else's and is not touched.
func TestGCRemovesUnownedBridges(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.network(t, "named", "10.66.0.0/24")
	h, err := e.host.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	mk := func(name, alias string) netlink.Link {
		t.Helper()
		if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
			t.Fatal(err)
		}
		l, err := h.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if alias != "" {
			if err := h.LinkSetAlias(l, alias); err != nil {
				t.Fatal(err)
			}
		}
		return l
	}
	mk("nm-leaked", "netmgr:0123456789abcdef")
	ported := mk("nm-ported", "netmgr:fedcba9876543210")
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "portA", MasterIndex: ported.Attrs().Index}, PeerName: "portB"}); err != nil {
		t.Fatal(err)
	}
	mk("nm-users", "")
	rep, err := e.m.Recover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Bridges, []string{"nm-leaked"}) || !slices.Equal(rep.Unowned, []string{"nm-ported"}) {
		t.Errorf("bridges removed %v, kept %v; want [nm-leaked], [nm-ported]", rep.Bridges, rep.Unowned)
	}
	for name, want := range map[string]bool{"nm-leaked": false, "nm-ported": true, "nm-users": true, "nm-named": true} {
		if got := testutil.HasLink(t, e.host, name); got != want {
			t.Errorf("bridge %s exists: %v, want %v", name, got, want)
		}
	}
}

// TestGCRemovesLeakedLockFiles: lock files of objects that have no record and no intent are removed
// by gc; those of existing objects, and one that a live process holds, stay.
func TestGCRemovesLeakedLockFiles(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.network(t, "lk", "10.67.0.0/24")
	e.sandbox(t, "keep", "lk")
	locks := filepath.Join(e.runDir, "locks")
	for _, n := range []string{"network-ghost", "sandbox-ghost", "network-held"} {
		if err := os.WriteFile(filepath.Join(locks, n+".lock"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// The leaks the API itself leaves: a create refused for a missing network, an attach to a
	// sandbox that does not exist.
	_, _ = e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "s", Networks: []netmgr.AttachSpec{{Network: "missing"}}})
	_, _ = e.m.Attach(ctx, "nosuch", netmgr.AttachSpec{Network: "lk"})
	f, err := os.Open(filepath.Join(locks, "network-held.lock"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	rep, err := e.m.Recover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	left, _ := filepath.Glob(filepath.Join(locks, "*-*.lock"))
	var names []string
	for _, p := range left {
		names = append(names, filepath.Base(p))
	}
	sort.Strings(names)
	want := []string{"network-held.lock", "network-lk.lock", "sandbox-keep.lock"}
	if !slices.Equal(names, want) {
		t.Errorf("lock files left %v, want %v (report %v)", names, want, rep.Locks)
	}
	if len(rep.Locks) < 2 {
		t.Errorf("report lists %v", rep.Locks)
	}
}

// TestGCDropsStaleJoinerWithTarget: when an external namespace vanishes, one gc removes both the
// sandbox on it and the link sandbox that joined it, with no join key left behind.
func TestGCDropsStaleJoinerWithTarget(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.network(t, "st", "10.68.0.0/24")
	ext := testutil.NewNS(t, "vanishing")
	if _, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "target", NetNS: ext.Path(), Networks: []netmgr.AttachSpec{{Network: "st"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "joiner", Join: "target"}); err != nil {
		t.Fatal(err)
	}
	ext.Close()
	if err := sandbox.Remove(ext.Path()); err != nil {
		t.Fatal(err)
	}
	rep, err := e.m.Recover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(rep.Stale)
	if !slices.Equal(rep.Stale, []string{"joiner", "target"}) {
		t.Errorf("stale %v, want [joiner target]", rep.Stale)
	}
	if sbs, _ := e.m.Sandboxes(ctx); len(sbs) != 0 {
		t.Errorf("sandboxes left after one gc: %d", len(sbs))
	}
	assertEmpty(t, e)
}
