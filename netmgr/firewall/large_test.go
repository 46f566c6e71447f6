package firewall

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// rangePorts publishes host ports lo..hi of proto to the same ports of target, owned by owner.
func rangePorts(proto string, lo, hi int, target netip.Addr, owner string) []Port {
	out := make([]Port, 0, hi-lo+1)
	for p := lo; p <= hi; p++ {
		out = append(out, Port{Protocol: proto, HostPort: uint16(p), Target: netip.AddrPortFrom(target, uint16(p)), Owner: owner})
	}
	return out
}

// TestPortsLarge publishes ranges far beyond what one netlink message or batch can carry (FAULTS §1):
// every element must be in the kernel afterwards, and removing them must work whatever is present.
func TestPortsLarge(t *testing.T) {
	ns := newNetNS(t)
	fw := newFirewall(t, ns)
	ctx := t.Context()
	count := func() int {
		t.Helper()
		ps, err := fw.Ports(ctx)
		if err != nil {
			t.Fatalf("Ports: %v", err)
		}
		return len(ps)
	}

	all := rangePorts("tcp", 1, 65535, netip.MustParseAddr("10.2.0.2"), "a-sandbox-with-a-long-name")
	start := time.Now()
	if err := fw.AddPorts(ctx, all); err != nil {
		t.Fatalf("AddPorts(1-65535): %v", err)
	}
	t.Logf("AddPorts of 65535 ports: %v (checked against a dump)", time.Since(start))
	if n := count(); n != len(all) {
		t.Fatalf("after AddPorts(1-65535): %d elements in the kernel, want %d", n, len(all))
	}
	dual := append(rangePorts("udp", 20000, 22999, netip.MustParseAddr("10.2.0.3"), "dual"),
		rangePorts("udp", 20000, 22999, netip.MustParseAddr("fd00:20::3"), "dual")...)
	if err := fw.AddPorts(ctx, dual); err != nil {
		t.Fatalf("AddPorts(dual 3000): %v", err)
	}
	if n := count(); n != len(all)+len(dual) {
		t.Fatalf("after the dual-stack add: %d elements, want %d", n, len(all)+len(dual))
	}
	// Half of the first range goes behind the firewall's back: removing all of it must still work.
	if err := fw.RemovePorts(ctx, all[:30000]); err != nil {
		t.Fatalf("RemovePorts(half): %v", err)
	}
	if err := fw.RemovePorts(ctx, all); err != nil {
		t.Fatalf("RemovePorts(all, half missing): %v", err)
	}
	start = time.Now()
	if err := fw.RemovePorts(ctx, dual); err != nil {
		t.Fatalf("RemovePorts(dual): %v", err)
	}
	t.Logf("RemovePorts of 6000 ports: %v", time.Since(start))
	if n := count(); n != 0 {
		t.Fatalf("after RemovePorts: %d elements left", n)
	}
}

// TestPortsLargeFailedAdd: an add that the kernel refuses part-way leaves none of its elements.
func TestPortsLargeFailedAdd(t *testing.T) {
	ns := newNetNS(t)
	fw := newFirewall(t, ns)
	ctx := t.Context()
	// Port 9999 is published to another target: the big add conflicts on its last element.
	other := Port{Protocol: "tcp", HostPort: 9999, Target: netip.MustParseAddrPort("10.2.0.9:1"), Owner: "other"}
	if err := fw.AddPorts(ctx, []Port{other}); err != nil {
		t.Fatal(err)
	}
	big := rangePorts("tcp", 5000, 9999, netip.MustParseAddr("10.2.0.2"), "big")
	err := fw.AddPorts(ctx, big)
	if err == nil {
		t.Fatal("AddPorts over a port published to another target succeeded")
	}
	if errors.Is(err, ErrInvalid) {
		t.Fatalf("AddPorts = %v: a kernel conflict, not invalid input", err)
	}
	ps, err := fw.Ports(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 1 || ps[0].Target != other.Target {
		t.Fatalf("after the failed add the kernel holds %d elements (%s...), want only %s", len(ps), fmt.Sprint(ps[:min(len(ps), 2)]), other)
	}
}

// TestPortsRemoveTakenPort: removing a port whose host port is now published to another target is
// not an error, and leaves the other element alone.
func TestPortsRemoveTakenPort(t *testing.T) {
	ns := newNetNS(t)
	fw := newFirewall(t, ns)
	ctx := t.Context()
	other := Port{Protocol: "tcp", HostPort: 9999, Target: netip.MustParseAddrPort("10.2.0.9:1"), Owner: "other"}
	mine := []Port{{Protocol: "tcp", HostPort: 9998, Target: netip.MustParseAddrPort("10.2.0.2:1"), Owner: "me"},
		{Protocol: "tcp", HostPort: 9999, Target: netip.MustParseAddrPort("10.2.0.2:1"), Owner: "me"}}
	if err := fw.AddPorts(ctx, []Port{other, mine[0]}); err != nil {
		t.Fatal(err)
	}
	if err := fw.RemovePorts(ctx, mine); err != nil {
		t.Fatalf("RemovePorts: %v", err)
	}
	ps, err := fw.Ports(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 1 || ps[0].Target != other.Target {
		t.Fatalf("after RemovePorts: %v, want only %v", ps, other)
	}
}
