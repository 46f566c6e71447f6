package dns_test

import (
	"context"
	"slices"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/agent"
	"github.com/netmgr/netmgr/netmgr/dns"
)

// The agent on one host (a bolt store) runs the DNS controller, which answers on the network.
func TestAgentRunsDNS(t *testing.T) {
	testutil.RequireNetAdmin(t)
	host := testutil.NewNS(t, "host")
	m, err := netmgr.New(context.Background(), netmgr.WithStateDir(t.TempDir()), netmgr.WithRunDir(t.TempDir()), netmgr.WithHostNetNS(host.Path()))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx := context.Background()
	n, err := m.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "neta", Driver: "bridge"})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, name := range []string{"web", "client"} {
		s, err := m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: name, Networks: []netmgr.AttachSpec{{Network: "neta"}}})
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, s.Attachments[0].IPv4.Addr().String())
		defer m.DeleteSandbox(ctx, name)
	}
	client, _ := m.Sandbox(ctx, "client")
	clientNS := testutil.Open(t, client.NetNS)
	a, err := agent.New(agent.Config{Manager: m, Logger: testutil.Logger(t), Controllers: []agent.Controller{
		&dns.Controller{Config: dns.Config{ResolvConf: t.TempDir() + "/none"}}}})
	if err != nil {
		t.Fatal(err)
	}
	actx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(actx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r, err := query(clientNS, n.Gateways[0], "web", mdns.TypeA, "udp")
		if err == nil && slices.Equal(answerAddrs(r), names[:1]) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent's DNS: %v, %v", r, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
