package dns

import (
	"net/netip"
	"testing"

	mdns "github.com/miekg/dns"
)

// BenchmarkLocal is the handler's own work for a local name: the lookup and the answer's packing
// (the library's read, unpack and write are not in it).
func BenchmarkLocal(b *testing.B) {
	s, err := New(Config{Hosts: staticHosts{}, HostNetNS: "/proc/self/ns/net", ResolvConf: "/nonexistent"})
	if err != nil {
		b.Fatal(err)
	}
	t := buildTable(Snapshot{
		Nets:  []Net{{Name: "n", Subnets: []netip.Prefix{netip.MustParsePrefix("10.89.0.0/24")}, Gateways: []netip.Addr{netip.MustParseAddr("10.89.0.1")}}},
		Hosts: []Host{{Name: "web", Addrs: map[string][]netip.Addr{"n": {netip.MustParseAddr("10.89.0.2")}}}},
	}, "cluster.local")
	q := new(mdns.Msg)
	q.SetQuestion("web.", mdns.TypeA)
	src := netip.MustParseAddr("10.89.0.9")
	b.ReportAllocs()
	for b.Loop() {
		m, fwd := s.local(t, "n", src, q)
		if fwd || len(m.Answer) != 1 {
			b.Fatal(m)
		}
		if _, err := m.Pack(); err != nil {
			b.Fatal(err)
		}
	}
}
