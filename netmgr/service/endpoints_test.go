package service_test

import (
	"context"
	"net/netip"
	"testing"

	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/service"
	"github.com/netmgr/netmgr/netmgr/store"
)

func sandboxOn(name, network, ip string, labels map[string]string) *netmgr.Sandbox {
	return &netmgr.Sandbox{Name: name, Labels: labels, Attachments: []netmgr.Attachment{{Network: network, IPv4: netip.MustParsePrefix(ip + "/24")}}}
}

func keys(t *testing.T, st store.Store, prefix string) map[string]bool {
	t.Helper()
	kvs, _, err := st.List(context.Background(), prefix)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, kv := range kvs {
		out[kv.Key] = true
	}
	return out
}

// The publisher puts a node's labelled sandboxes, deletes the ones that went (also those a previous
// run left), leaves other nodes' alone, and marks addresses on networks that span nodes.
func TestPublisher(t *testing.T) {
	_, st := registry(t)
	ctx := context.Background()
	// Left by an earlier agent of node a (its sandbox is gone), and one of node b.
	if err := st.Txn(ctx, nil, []store.Op{store.Put(service.EndpointKey("a", "old"), []byte(`{}`)), store.Put(service.EndpointKey("b", "x"), []byte(`{}`))}); err != nil {
		t.Fatal(err)
	}
	pub := service.NewPublisher(st, "a", func(n string) bool { return n == "ov" })
	sbs := []*netmgr.Sandbox{
		sandboxOn("web1", "ov", "10.244.1.2", map[string]string{"app": "web"}),
		sandboxOn("web2", "br", "10.88.0.2", map[string]string{"app": "web"}),
		sandboxOn("nolabel", "ov", "10.244.1.3", nil),
	}
	if err := pub.Sync(ctx, sbs, store.NoLease); err != nil {
		t.Fatal(err)
	}
	got := keys(t, st, service.KeyEndpoints)
	want := map[string]bool{service.EndpointKey("a", "web1"): true, service.EndpointKey("a", "web2"): true, service.EndpointKey("b", "x"): true}
	if len(got) != len(want) {
		t.Fatalf("endpoints %v, want %v", got, want)
	}
	for k := range want {
		if !got[k] {
			t.Fatalf("endpoints %v, want %v", got, want)
		}
	}
	eps, err := service.New(st).Endpoints(ctx)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, e := range eps {
		seen[e.Sandbox] = true
		switch e.Sandbox {
		case "web1":
			if ip, ok := e.Addr("b", false); !ok || ip != netip.MustParseAddr("10.244.1.2") {
				t.Errorf("web1 on a network that spans nodes: node b reaches it at %v %v", ip, ok)
			}
		case "web2":
			if _, ok := e.Addr("b", false); ok {
				t.Errorf("web2 on node a's local bridge: node b must not use it")
			}
			if ip, ok := e.Addr("a", false); !ok || ip != netip.MustParseAddr("10.88.0.2") {
				t.Errorf("web2 from its own node: %v %v", ip, ok)
			}
		}
	}
	if !seen["web1"] || !seen["web2"] {
		t.Errorf("Endpoints read back %v, want web1 and web2", seen)
	}
	// web2 goes.
	if err := pub.Sync(ctx, sbs[:1], store.NoLease); err != nil {
		t.Fatal(err)
	}
	if got := keys(t, st, service.KeyEndpoints); got[service.EndpointKey("a", "web2")] || !got[service.EndpointKey("a", "web1")] || !got[service.EndpointKey("b", "x")] {
		t.Fatalf("after web2 went: %v", got)
	}
	// A bolt store has no leases: publishing with one fails, and says so.
	if err := service.NewPublisher(st, "c", nil).Sync(ctx, sbs[:1], 42); err == nil {
		t.Fatal("a lease on a store without leases: no error")
	}
}

// A pod that its readiness probe holds unready is no endpoint; ready again (or without a probe), it is.
func TestEndpointReadiness(t *testing.T) {
	sb := &netmgr.Sandbox{Name: "p", Labels: map[string]string{"app": "web", service.LabelReady: "false"},
		Attachments: []netmgr.Attachment{{Network: "n", IPv4: netip.MustParsePrefix("10.1.0.2/24")}}}
	if e := service.EndpointOf("n1", sb, func(string) bool { return false }); e != nil {
		t.Fatalf("unready sandbox is endpoint %+v", e)
	}
	sb.Labels[service.LabelReady] = "true"
	if e := service.EndpointOf("n1", sb, func(string) bool { return false }); e == nil {
		t.Fatal("ready sandbox is no endpoint")
	}
	delete(sb.Labels, service.LabelReady)
	if e := service.EndpointOf("n1", sb, func(string) bool { return false }); e == nil {
		t.Fatal("sandbox without a readiness probe is no endpoint")
	}
}
