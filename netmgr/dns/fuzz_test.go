package dns

import (
	"context"
	"net/netip"
	"testing"

	mdns "github.com/miekg/dns"
)

// FuzzAnswer feeds arbitrary packets to the query handler (what a flood of malformed queries reaches
// after the library's own parsing), with local names and services but no upstreams: it must never
// panic, and always answer with the query's ID.
func FuzzAnswer(f *testing.F) {
	for _, q := range []struct {
		name  string
		qtype uint16
	}{{"web.", mdns.TypeA}, {"web.", mdns.TypeAAAA}, {"api.svc.cluster.local.", mdns.TypeA}, {"2.0.89.10.in-addr.arpa.", mdns.TypePTR},
		{"x.svc.", mdns.TypeANY}, {"example.com.", mdns.TypeMX}, {"1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.", mdns.TypePTR}} {
		m := new(mdns.Msg)
		m.SetQuestion(q.name, q.qtype)
		m.SetEdns0(4096, false)
		b, _ := m.Pack()
		f.Add(b, true)
	}
	f.Add([]byte{0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0}, false)
	s, err := New(Config{Hosts: staticHosts{}, HostNetNS: "/proc/self/ns/net", ResolvConf: "/nonexistent/resolv.conf"})
	if err != nil {
		f.Fatal(err)
	}
	s.tab.Store(buildTable(Snapshot{
		Nets: []Net{{Name: "n", Subnets: []netip.Prefix{netip.MustParsePrefix("10.89.0.0/24"), netip.MustParsePrefix("fd00::/64")},
			Gateways: []netip.Addr{netip.MustParseAddr("10.89.0.1")}}},
		Hosts:    []Host{{Name: "web", Aliases: []string{"www", "bad name", ""}, Addrs: map[string][]netip.Addr{"n": {netip.MustParseAddr("10.89.0.2"), netip.MustParseAddr("fd00::2")}}}},
		Services: []Service{{Name: "api", Namespace: "ns", IPs: []netip.Addr{netip.MustParseAddr("10.96.0.1")}}},
	}, "cluster.local"))
	f.Fuzz(func(t *testing.T, b []byte, inNet bool) {
		r := new(mdns.Msg)
		if err := r.Unpack(b); err != nil {
			return
		}
		src := netip.MustParseAddr("10.89.0.5")
		if !inNet {
			src = netip.MustParseAddr("192.0.2.1")
		}
		resp := s.Answer(context.Background(), "n", src, r, false)
		if resp == nil || resp.Id != r.Id {
			t.Fatalf("answer %v to %v", resp, r)
		}
		resp.Truncate(mdns.MinMsgSize)
		if _, err := resp.Pack(); err != nil {
			t.Fatalf("answer does not pack: %v\n%v", err, resp)
		}
	})
}

type staticHosts struct{}

func (staticHosts) Hosts(context.Context) ([]Net, []Host, error) { return nil, nil, nil }
