package routed

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/netmgr/netmgr/drivers"
	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/sandbox"
)

// BenchmarkAttach times the driver's Attach alone (the sandbox namespace is made outside the timer),
// and BenchmarkHostEndSysctls its per-veth sysctl writes in the host namespace.
func BenchmarkAttach(b *testing.B) {
	testutil.RequireRoot(b)
	host := testutil.NewNS(b, "host")
	hh, err := host.NewHandle()
	if err != nil {
		b.Fatal(err)
	}
	defer hh.Close()
	dd, _ := New(drivers.Env{Host: host, HostHandle: hh})
	d := dd.(*Driver)
	n := &drivers.Network{ID: "id", Name: "rt", Driver: Name, Subnets: []netip.Prefix{netip.MustParsePrefix("10.90.0.0/16")}}
	if err := d.PrepareNetwork(n, nil); err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	var paths []string
	defer func() {
		for _, p := range paths {
			_ = sandbox.Remove(p)
		}
	}()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		p := filepath.Join(dir, fmt.Sprint(i))
		sb, err := sandbox.Create(p)
		if err != nil {
			b.Fatal(err)
		}
		paths = append(paths, p)
		ep := &drivers.Endpoint{ID: fmt.Sprintf("ep%d", i), Sandbox: "s", IfName: "eth0",
			Addrs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 90, byte(i >> 8), byte(i)}), 16)}, Gateways: []netip.Addr{netip.MustParseAddr("10.90.0.1")}}
		if err := d.PrepareEndpoint(n, ep); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if err := d.Attach(b.Context(), n, ep, sb); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		sb.Close()
		b.StartTimer()
	}
}

func BenchmarkHostEndSysctls(b *testing.B) {
	testutil.RequireRoot(b)
	host := testutil.NewNS(b, "host")
	hh, err := host.NewHandle()
	if err != nil {
		b.Fatal(err)
	}
	defer hh.Close()
	dd, _ := New(drivers.Env{Host: host, HostHandle: hh})
	d := dd.(*Driver)
	for b.Loop() {
		if err := d.hostEndSysctls("lo", true, false); err != nil {
			b.Fatal(err)
		}
	}
}
