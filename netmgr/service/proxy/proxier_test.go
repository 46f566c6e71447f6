package proxy

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr/service"
)

func svc(i int, affinity bool) *service.Service {
	s := &service.Service{Name: fmt.Sprintf("s%d", i), Type: service.NodePort, ClusterIP: netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)}),
		Ports:    []service.Port{{Port: 80, TargetPort: 8080, Protocol: "tcp", NodePort: uint16(30000 + i)}, {Port: 53, TargetPort: 53, Protocol: "udp"}},
		Selector: map[string]string{"app": fmt.Sprintf("s%d", i)}, ExternalTrafficPolicy: service.PolicyCluster}
	if affinity {
		s.SessionAffinity, s.AffinityTimeout = service.AffinityClientIP, 60e9
	}
	return s
}

func ep(i, j int, node string) (string, *service.Endpoint) {
	e := &service.Endpoint{Sandbox: fmt.Sprintf("s%d-%d", i, j), Node: node, Labels: map[string]string{"app": fmt.Sprintf("s%d", i)},
		Addrs: []service.EndpointAddr{{Network: "n", IP: netip.AddrFrom4([4]byte{10, 1, byte(i), byte(j + 1)}), Global: true}}}
	return service.EndpointKey(node, e.Sandbox), e
}

func loaded(t *testing.T, n int) *Proxier {
	t.Helper()
	ns := testutil.NewNS(t, "proxy")
	p := NewProxier(ns.Fd(), "here", testutil.Logger(t))
	t.Cleanup(p.Close)
	p.SetCIDR(netip.MustParsePrefix("10.96.0.0/12"))
	for i := 0; i < n; i++ {
		p.SetService(svc(i, i%10 == 0))
		for j := 0; j < 3; j++ {
			p.SetEndpoint(ep(i, j, "here"))
		}
	}
	if err := p.Sync(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		out, _ := exec.Command("nsenter", "--net="+ns.Path(), "nft", "list", "table", "ip", TableName).CombinedOutput()
		if t.Failed() {
			t.Logf("table:\n%s", out)
		}
	})
	return p
}

// One change sends the same messages whatever the number of services: only its own elements (and,
// for a chained service, its own chains).
func TestChangeCostIndependentOfServices(t *testing.T) {
	testutil.RequireNetAdmin(t)
	cost := func(n, i int) int {
		p := loaded(t, n)
		before := p.k.sent
		k, e := ep(i, 7, "here")
		p.SetEndpoint(k, e)
		if err := p.Sync(); err != nil {
			t.Fatal(err)
		}
		return p.k.sent - before
	}
	for _, i := range []int{1, 10} { // mapped, chained (affinity)
		small, large := cost(20, i), cost(400, i)
		if small == 0 || small != large {
			t.Errorf("service %d: one endpoint added sent %d messages with 20 services, %d with 400; want the same, non-zero", i, small, large)
		}
	}
}

// The table holds what the plan says, and a deleted service leaves nothing behind.
func TestTableContents(t *testing.T) {
	testutil.RequireNetAdmin(t)
	ns := testutil.NewNS(t, "proxy")
	p := NewProxier(ns.Fd(), "here", testutil.Logger(t))
	defer p.Close()
	p.SetCIDR(netip.MustParsePrefix("10.96.0.0/12"))
	p.SetService(svc(1, false))
	p.SetService(svc(2, true))
	for j := 0; j < 2; j++ {
		p.SetEndpoint(ep(1, j, "here"))
		p.SetEndpoint(ep(2, j, "other"))
	}
	p.SetService(svc(3, false)) // no endpoints
	if err := p.Sync(); err != nil {
		t.Fatal(err)
	}
	list := func() string {
		out, err := exec.Command("nsenter", "--net="+ns.Path(), "nft", "list", "table", "ip", TableName).CombinedOutput()
		if err != nil {
			t.Fatalf("nft list: %v\n%s", err, out)
		}
		return string(out)
	}
	got := list()
	for _, want := range []string{
		"10.96.0.1 . tcp . 80 . 0x00000000 : 10.1.1.1 . 8080", // s1 mapped: slot 0 and 1
		"10.96.0.1 . tcp . 80 . 0x00000001 : 10.1.1.2 . 8080",
		"10.96.0.3 . tcp . 80",              // s3: no endpoints (reject)
		"chain svc-s2/tcp/80",               // s2: chained for affinity
		"chain ep-s2/tcp/80__10.1.2.1/8080", // with its endpoint chains
		"10.1.1.1 . 10.1.1.1",               // hairpin of a local endpoint
		"numgen random mod 2",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("table lacks %q", want)
		}
	}
	if strings.Contains(got, "10.1.2.1 . 10.1.2.1") {
		t.Errorf("hairpin element for another node's endpoint")
	}
	for i := 1; i <= 3; i++ {
		p.DeleteService(fmt.Sprintf("s%d", i))
	}
	if err := p.Sync(); err != nil {
		t.Fatal(err)
	}
	got = list()
	for _, gone := range []string{"10.96.0.1 ", "10.96.0.2 ", "10.96.0.3 ", "10.1.", "svc-", "ep-", "aff-"} {
		if strings.Contains(got, gone) {
			t.Errorf("after deleting every service the table still has %q:\n%s", gone, got)
		}
	}
}
