package agent_test

import (
	"context"
	"testing"
	"time"

	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/agent"
)

type countingController struct{ ran chan *agent.Agent }

func (c countingController) Name() string { return "counting" }
func (c countingController) Run(ctx context.Context, a *agent.Agent) error {
	c.ran <- a
	<-ctx.Done()
	return nil
}

// On one host (the Manager's own bbolt store, which has no leases) the agent registers nothing and
// runs only its controllers, on the Manager's store.
func TestAgentOneHost(t *testing.T) {
	testutil.RequireNetAdmin(t)
	host := testutil.NewNS(t, "host")
	m, err := netmgr.New(context.Background(), netmgr.WithStateDir(t.TempDir()), netmgr.WithRunDir(t.TempDir()), netmgr.WithHostNetNS(host.Path()))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	c := countingController{ran: make(chan *agent.Agent, 1)}
	a, err := agent.New(agent.Config{Manager: m, Controllers: []agent.Controller{c}, Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if !a.Local() || a.Cluster() != m.NetworkStore() {
		t.Fatalf("agent on a bolt store: local %v, store %T", a.Local(), a.Cluster())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	select {
	case got := <-c.ran:
		if got != a {
			t.Fatal("controller got another agent")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("controller not started")
	}
	<-a.Ready()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}
