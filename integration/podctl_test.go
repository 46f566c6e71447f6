package integration

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/firewall"
	"github.com/netmgr/netmgr/sandbox"
)

// TestConcurrentProcessesAndGoroutines runs 30 podctl processes and 70 goroutines of an in-process
// Manager at once, all creating sandboxes on one network of one shared state dir; every sandbox must
// get its own address, and deleting them all must leave nothing behind.
func TestConcurrentProcessesAndGoroutines(t *testing.T) {
	h := newHost(t)
	h.must(t, "network", "create", "shared", "--driver", "bridge", "--subnet", "10.40.0.0/24")
	ctx := context.Background()
	m, err := netmgr.New(ctx, netmgr.WithStateDir(h.stateDir), netmgr.WithRunDir(h.runDir), netmgr.WithHostNetNS(h.ns.Path()))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()

	const procs, gors = 30, 70
	var wg sync.WaitGroup
	errs := make(chan error, procs+gors)
	for i := 0; i < procs; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if _, err := h.podctl(ctx, "sandbox", "create", fmt.Sprintf("p%02d", i), "--network", "shared"); err != nil {
				errs <- err
			}
		}(i)
	}
	for i := 0; i < gors; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if _, err := m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: fmt.Sprintf("g%02d", i), Networks: []netmgr.AttachSpec{{Network: "shared"}}}); err != nil {
				errs <- err
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	sbs := h.sandboxes(t)
	if len(sbs) != procs+gors {
		have := map[string]bool{}
		for _, s := range sbs {
			have[s.Name] = true
		}
		var missing []string
		for i := 0; i < procs; i++ {
			if n := fmt.Sprintf("p%02d", i); !have[n] {
				missing = append(missing, n)
			}
		}
		for i := 0; i < gors; i++ {
			if n := fmt.Sprintf("g%02d", i); !have[n] {
				missing = append(missing, n)
			}
		}
		t.Fatalf("%d sandboxes, want %d; missing %v", len(sbs), procs+gors, missing)
	}
	seen := map[string]string{}
	for _, s := range sbs {
		ip := s.Attachments[0].IPv4
		if other, dup := seen[ip]; dup {
			t.Fatalf("%s and %s both got %s", other, s.Name, ip)
		}
		seen[ip] = s.Name
	}
	// Kernel agrees with the records: each sandbox holds exactly its address.
	for _, s := range sbs[:5] {
		ns, err := sandbox.Open(s.NetNS)
		if err != nil {
			t.Fatal(err)
		}
		hd, err := ns.NewHandle()
		ns.Close() // an open descriptor would keep the namespace, and its veth, alive after rm
		if err != nil {
			t.Fatal(err)
		}
		addrs, _ := hd.AddrList(nil, 2) // AF_INET
		hd.Close()
		want := netip.MustParsePrefix(s.Attachments[0].IPv4).Addr().String()
		found := false
		for _, a := range addrs {
			found = found || a.IP.String() == want
		}
		if !found {
			t.Errorf("%s: kernel has %v, record says %s", s.Name, addrs, want)
		}
	}

	errs = make(chan error, procs+gors)
	for i := 0; i < procs; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if _, err := h.podctl(ctx, "sandbox", "rm", fmt.Sprintf("p%02d", i)); err != nil {
				errs <- err
			}
		}(i)
	}
	for i := 0; i < gors; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if err := m.DeleteSandbox(ctx, fmt.Sprintf("g%02d", i)); err != nil {
				errs <- err
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	h.assertClean(t, "shared")
	h.must(t, "network", "rm", "shared")
	if testutil.HasLink(t, h.ns, "nm-shared") {
		t.Error("bridge left after network rm")
	}
	fw, err := firewall.New(h.ns.Fd(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer fw.Close()
	if nets, err := fw.Networks(ctx); err != nil || len(nets) != 0 {
		t.Errorf("nftables rules left for %v (err %v)", nets, err)
	}
}

// assertClean checks that no sandbox, allocation, pin, lock or host veth remains, and that the
// firewall still matches the networks.
func (h *host) assertClean(t *testing.T, networks ...string) {
	t.Helper()
	if sbs := h.sandboxes(t); len(sbs) != 0 {
		t.Errorf("sandboxes left: %v", sbs)
	}
	for _, n := range networks {
		out := h.must(t, "-o", "json", "network", "inspect", n)
		if !containsJSONEmptyList(out, "sandboxes") {
			t.Errorf("network %s still lists sandboxes: %s", n, out)
		}
	}
	if pins, _ := filepath.Glob(filepath.Join(h.runDir, "netns", "*")); len(pins) > 0 {
		t.Errorf("pins left: %v", pins)
	}
	if locks, _ := filepath.Glob(filepath.Join(h.runDir, "locks", "sandbox-*")); len(locks) > 0 {
		t.Errorf("sandbox lock files left: %v", locks)
	}
	if b, _ := os.ReadFile("/proc/self/mountinfo"); containsString(string(b), h.runDir) {
		t.Errorf("mounts left under %s", h.runDir)
	}
	testutil.WaitNoLinks(t, h.ns, "nmv")
	fw, err := firewall.New(h.ns.Fd(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer fw.Close()
	if ports, err := fw.Ports(context.Background()); err != nil || len(ports) > 0 {
		t.Errorf("published ports left in nftables: %v (err %v)", ports, err)
	}
}
