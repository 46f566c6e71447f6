package netmgr_test

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/firewall"
)

// TestPublishLargeRanges (FAULTS §1): a create with a huge publish range works fully or fails leaving
// nothing, and rm always works.
func TestPublishLargeRanges(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.network(t, "big", "10.44.0.0/24")
	e.network(t, "ds", "10.45.0.0/24", func(s *netmgr.NetworkSpec) {
		s.Subnets = append(s.Subnets, netip.MustParsePrefix("fd00:45::/64"))
	})
	fw, err := firewall.New(e.host.Fd(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer fw.Close()
	owned := func(owner string) int {
		t.Helper()
		ps, err := fw.Ports(ctx)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, p := range ps {
			if p.Owner == owner {
				n++
			}
		}
		return n
	}
	portKeys := func() int {
		t.Helper()
		kvs, _, err := e.rt.List(ctx, "ports/")
		if err != nil {
			t.Fatal(err)
		}
		return len(kvs)
	}

	start := time.Now()
	if _, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "all", Networks: []netmgr.AttachSpec{{Network: "big"}},
		Publish: publish(t, "1-65535:1-65535")}); err != nil {
		t.Fatalf("create with 1-65535: %v", err)
	}
	t.Logf("create with 1-65535: %v", time.Since(start))
	if n := owned("all"); n != 65535 {
		t.Errorf("1-65535: %d elements in the kernel, want 65535", n)
	}
	start = time.Now()
	if err := e.m.DeleteSandbox(ctx, "all"); err != nil {
		t.Fatalf("rm of the 1-65535 sandbox: %v", err)
	}
	t.Logf("rm with 1-65535: %v", time.Since(start))
	if n := owned("all"); n != 0 {
		t.Errorf("after rm: %d elements left", n)
	}

	if _, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "dual", Networks: []netmgr.AttachSpec{{Network: "ds"}},
		Publish: publish(t, "20000-22999:20000-22999/udp")}); err != nil {
		t.Fatalf("create with a dual-stack 3000-port range: %v", err)
	}
	if n := owned("dual"); n != 6000 {
		t.Errorf("dual-stack 3000 ports: %d elements in the kernel, want 6000", n)
	}
	if err := e.m.DeleteSandbox(ctx, "dual"); err != nil {
		t.Fatalf("rm of the dual-stack sandbox: %v", err)
	}

	// A create the kernel refuses part-way (its last port is held by an element no record names)
	// leaves no record, no element and no port key.
	stray := firewall.Port{Protocol: "tcp", HostPort: 40999, Target: netip.MustParseAddrPort("10.44.0.250:1"), Owner: "stray"}
	if err := fw.AddPorts(ctx, []firewall.Port{stray}); err != nil {
		t.Fatal(err)
	}
	_, err = e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "half", Networks: []netmgr.AttachSpec{{Network: "big"}},
		Publish: publish(t, "38000-40999:38000-40999")})
	if err == nil {
		t.Fatal("create over a port held in the kernel succeeded")
	}
	t.Logf("refused as expected: %.300v", err)
	if _, err := e.m.Sandbox(ctx, "half"); !errors.Is(err, netmgr.ErrNotFound) {
		t.Errorf("failed create left its record: Sandbox = %v", err)
	}
	if n := owned("half"); n != 0 {
		t.Errorf("failed create left %d elements in the kernel", n)
	}
	if n := portKeys(); n != 0 {
		t.Errorf("failed create left %d port keys", n)
	}
	if err := fw.RemovePorts(ctx, []firewall.Port{stray}); err != nil {
		t.Fatal(err)
	}
}
