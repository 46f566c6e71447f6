package service_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/service"
	"github.com/netmgr/netmgr/netmgr/store"
)

func registry(t *testing.T) (*service.Registry, store.Store) {
	t.Helper()
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return service.New(st), st
}

func snapshot(t *testing.T, st store.Store) string {
	t.Helper()
	kvs, _, err := st.List(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, kv := range kvs {
		fmt.Fprintf(&b, "%s=%s\n", kv.Key, kv.Value)
	}
	return b.String()
}

var web = map[string]string{"app": "web"}

func TestCreateDefaults(t *testing.T) {
	r, _ := registry(t)
	ctx := context.Background()
	s, err := r.Create(ctx, service.Spec{Name: "web", Selector: web, Ports: []service.Port{{Port: 80}}})
	if err != nil {
		t.Fatal(err)
	}
	if s.Type != service.ClusterIP || !service.DefaultCIDR.Contains(s.ClusterIP) || s.Ports[0].TargetPort != 80 ||
		s.Ports[0].Protocol != "tcp" || s.ExternalTrafficPolicy != "Cluster" || s.Ports[0].NodePort != 0 {
		t.Fatalf("defaults: %+v", s)
	}
	np, err := r.Create(ctx, service.Spec{Name: "np", Type: "NodePort", Selector: web, Ports: []service.Port{{Port: 80}, {Port: 53, Protocol: "udp"}},
		SessionAffinity: "ClientIP"})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range np.Ports {
		if p.NodePort < 30000 || p.NodePort > 32767 {
			t.Errorf("node port %d outside 30000-32767", p.NodePort)
		}
	}
	if np.AffinityTimeout != 3*time.Hour {
		t.Errorf("affinity timeout %v, want the default 3h", np.AffinityTimeout)
	}
	got, err := r.Get(ctx, "np")
	if err != nil || got.ClusterIP != np.ClusterIP || len(got.Ports) != 2 {
		t.Fatalf("Get: %+v %v", got, err)
	}
	list, err := r.List(ctx)
	if err != nil || len(list) != 2 || list[0].Name != "np" || list[1].Name != "web" {
		t.Fatalf("List: %v %v", list, err)
	}
	if err := r.Delete(ctx, "np"); err != nil {
		t.Fatal(err)
	}
	// Its address and ports are free again: asking for them works.
	if _, err := r.Create(ctx, service.Spec{Name: "again", Type: "NodePort", Selector: web, ClusterIP: np.ClusterIP,
		Ports: []service.Port{{Port: 80, NodePort: np.Ports[0].NodePort}}}); err != nil {
		t.Fatalf("re-using a deleted service's address and node port: %v", err)
	}
	if err := r.Delete(ctx, "np"); !errors.Is(err, netmgr.ErrNotFound) {
		t.Fatalf("delete twice: %v", err)
	}
}

// Every bad input is one line, the right sentinel, and nothing written.
func TestCreateBadInput(t *testing.T) {
	r, st := registry(t)
	ctx := context.Background()
	taken, err := r.Create(ctx, service.Spec{Name: "taken", Type: "NodePort", Selector: web, Ports: []service.Port{{Port: 80, NodePort: 30080}}})
	if err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, st)
	p80 := []service.Port{{Port: 80}}
	cases := []struct {
		name string
		spec service.Spec
		want error
		msg  string
	}{
		{"cluster IP outside the CIDR", service.Spec{Name: "a", Selector: web, Ports: p80, ClusterIP: netip.MustParseAddr("10.200.0.1")}, netmgr.ErrInvalid, "not a host address of the service CIDR"},
		{"cluster IP is the network address", service.Spec{Name: "a", Selector: web, Ports: p80, ClusterIP: netip.MustParseAddr("10.96.0.0")}, netmgr.ErrInvalid, "not a host address"},
		{"cluster IP taken", service.Spec{Name: "a", Selector: web, Ports: p80, ClusterIP: taken.ClusterIP}, netmgr.ErrExists, "is taken by service \"taken\""},
		{"node port below the range", service.Spec{Name: "a", Type: "NodePort", Selector: web, Ports: []service.Port{{Port: 80, NodePort: 8080}}}, netmgr.ErrInvalid, "outside the node port range 30000-32767"},
		{"node port above the range", service.Spec{Name: "a", Type: "NodePort", Selector: web, Ports: []service.Port{{Port: 80, NodePort: 32768}}}, netmgr.ErrInvalid, "outside the node port range"},
		{"node port taken", service.Spec{Name: "a", Type: "NodePort", Selector: web, Ports: []service.Port{{Port: 81, NodePort: 30080}}}, netmgr.ErrExists, "node port 30080/tcp is taken by service \"taken\""},
		{"node port on a ClusterIP service", service.Spec{Name: "a", Selector: web, Ports: []service.Port{{Port: 80, NodePort: 30081}}}, netmgr.ErrInvalid, "only a NodePort service"},
		{"port 0", service.Spec{Name: "a", Selector: web, Ports: []service.Port{{Port: 0}}}, netmgr.ErrInvalid, "port 0"},
		{"no port", service.Spec{Name: "a", Selector: web}, netmgr.ErrInvalid, "at least one port"},
		{"port twice", service.Spec{Name: "a", Selector: web, Ports: []service.Port{{Port: 80}, {Port: 80}}}, netmgr.ErrInvalid, "given twice"},
		{"empty selector", service.Spec{Name: "a", Ports: p80}, netmgr.ErrInvalid, "needs a selector"},
		{"malformed selector", service.Spec{Name: "a", Selector: map[string]string{"app": ""}, Ports: p80}, netmgr.ErrInvalid, "is not K=V"},
		{"duplicate name", service.Spec{Name: "taken", Selector: web, Ports: p80}, netmgr.ErrExists, "a service named \"taken\" exists"},
		{"bad name", service.Spec{Name: "Web_1", Selector: web, Ports: p80}, netmgr.ErrInvalid, "service name"},
		{"bad type", service.Spec{Name: "a", Type: "LoadBalancer", Selector: web, Ports: p80}, netmgr.ErrInvalid, "must be ClusterIP or NodePort"},
		{"bad policy", service.Spec{Name: "a", Type: "NodePort", ExternalTrafficPolicy: "Nearest", Selector: web, Ports: p80}, netmgr.ErrInvalid, "must be Cluster or Local"},
		{"bad affinity", service.Spec{Name: "a", SessionAffinity: "Cookie", Selector: web, Ports: p80}, netmgr.ErrInvalid, "must be ClientIP or None"},
		{"bad protocol", service.Spec{Name: "a", Selector: web, Ports: []service.Port{{Port: 80, Protocol: "sctp"}}}, netmgr.ErrInvalid, "must be tcp or udp"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := r.Create(ctx, c.spec)
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.msg) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("got %v, want %v containing %q on one line", err, c.want, c.msg)
			}
			if after := snapshot(t, st); after != before {
				t.Fatalf("the store changed:\n%s\nwant\n%s", after, before)
			}
		})
	}
}

func TestParse(t *testing.T) {
	for in, want := range map[string]service.Port{
		"80":          {Port: 80, TargetPort: 80, Protocol: "tcp"},
		"80:8080":     {Port: 80, TargetPort: 8080, Protocol: "tcp"},
		"53/udp":      {Port: 53, TargetPort: 53, Protocol: "udp"},
		"53:5353/UDP": {Port: 53, TargetPort: 5353, Protocol: "udp"},
	} {
		got, err := service.ParsePort(in)
		if err != nil || got != want {
			t.Errorf("ParsePort(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "0", "65536", "80:0", "80:70000", "x", "80/sctp", "80:", ":80", "-1"} {
		if _, err := service.ParsePort(bad); !errors.Is(err, netmgr.ErrInvalid) {
			t.Errorf("ParsePort(%q): %v, want ErrInvalid", bad, err)
		}
	}
	sel, err := service.ParseSelector("app=web,tier=front")
	if err != nil || len(sel) != 2 || sel["tier"] != "front" {
		t.Errorf("ParseSelector: %v %v", sel, err)
	}
	for _, bad := range []string{"", " ", "app", "app=", "=web", "a=b,,c=d", "a=b=c"} {
		if _, err := service.ParseSelector(bad); !errors.Is(err, netmgr.ErrInvalid) {
			t.Errorf("ParseSelector(%q): %v, want ErrInvalid", bad, err)
		}
	}
}

// Concurrent creates in a small CIDR never share a cluster IP or a node port.
func TestCreateConcurrent(t *testing.T) {
	r, _ := registry(t)
	ctx := context.Background()
	if err := r.SetCIDRs(ctx, netip.MustParsePrefix("10.96.0.0/27")); err != nil {
		t.Fatal(err)
	}
	const n = 40 // more than the 29 addresses the /27 gives (30 host addresses, .1 kept)
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = r.Create(ctx, service.Spec{Name: fmt.Sprintf("s%d", i), Type: "NodePort", Selector: web, Ports: []service.Port{{Port: 80}}})
		}()
	}
	wg.Wait()
	ok, full := 0, 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, netmgr.ErrFull):
			full++
		default:
			t.Errorf("create: %v", err)
		}
	}
	list, err := r.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ips, ports := map[netip.Addr]string{}, map[uint16]string{}
	for _, s := range list {
		if o, dup := ips[s.ClusterIP]; dup {
			t.Errorf("%s and %s share cluster IP %s", o, s.Name, s.ClusterIP)
		}
		ips[s.ClusterIP] = s.Name
		if o, dup := ports[s.Ports[0].NodePort]; dup {
			t.Errorf("%s and %s share node port %d", o, s.Name, s.Ports[0].NodePort)
		}
		ports[s.Ports[0].NodePort] = s.Name
	}
	if ok != len(list) || ok != 29 || full != n-29 {
		t.Errorf("%d created (%d listed), %d full; want 29 created and the rest ErrFull", ok, len(list), full)
	}
	// The CIDR cannot shrink below a service's address.
	if err := r.SetCIDRs(ctx, netip.MustParsePrefix("10.100.0.0/16")); !errors.Is(err, netmgr.ErrInvalid) {
		t.Errorf("SetCIDRs below existing services: %v", err)
	}
}

func TestWatch(t *testing.T) {
	r, st := registry(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	seen := make(chan []*service.Service, 10)
	go service.Watch(ctx, st, func(s []*service.Service) error { seen <- s; return nil })
	if got := <-seen; len(got) != 0 {
		t.Fatalf("first update: %v", got)
	}
	if _, err := r.Create(ctx, service.Spec{Name: "web", Selector: web, Ports: []service.Port{{Port: 80}}}); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-seen:
		if len(got) != 1 || got[0].Name != "web" {
			t.Fatalf("after create: %v", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no update after a create")
	}
}
