package netmgr_test

import (
	"context"
	"errors"
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/netmgr/netmgr/netmgr"
)

// TestSetLabels: SetLabels replaces a sandbox's labels and nothing else, WatchSandboxes reports it,
// bad keys and unknown sandboxes change nothing, and concurrent SetLabels and Attach lose neither the
// labels nor the attachment.
func TestSetLabels(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.network(t, "pods", "10.31.0.0/24")
	e.network(t, "extra", "10.32.0.0/24")
	before, _ := e.sandbox(t, "web", "pods")

	seen := make(chan map[string]string, 100)
	wctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = e.m.WatchSandboxes(wctx, func(sbs []*netmgr.Sandbox) error {
			for _, s := range sbs {
				if s.Name == "web" {
					seen <- s.Labels
				}
			}
			return nil
		})
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })

	want := map[string]string{"app": "web", "cni.netmgr.io/container-id": "abc"}
	if err := e.m.SetLabels(ctx, "web", want); err != nil {
		t.Fatal(err)
	}
	after, err := e.m.Sandbox(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(after.Labels, want) {
		t.Errorf("labels %v, want %v", after.Labels, want)
	}
	if after.ID != before.ID || after.NetNS != before.NetNS || len(after.Attachments) != 1 || after.Attachments[0].IPv4 != before.Attachments[0].IPv4 {
		t.Errorf("SetLabels changed more than labels: before %+v, after %+v", before, after)
	}
	deadline := time.After(10 * time.Second)
	for got := map[string]string(nil); !maps.Equal(got, want); {
		select {
		case got = <-seen:
		case <-deadline:
			t.Fatalf("WatchSandboxes never reported labels %v", want)
		}
	}

	// User errors: one typed error, nothing changed.
	for _, bad := range []map[string]string{{"": "x"}, {"a=b": "x"}, {"a,b": "x"}, {"a b": "x"}} {
		if err := e.m.SetLabels(ctx, "web", bad); !errors.Is(err, netmgr.ErrInvalid) {
			t.Errorf("SetLabels %v: %v, want ErrInvalid", bad, err)
		}
	}
	if err := e.m.SetLabels(ctx, "nope", want); !errors.Is(err, netmgr.ErrNotFound) {
		t.Errorf("SetLabels on a missing sandbox: %v, want ErrNotFound", err)
	}
	if err := e.m.SetLabels(ctx, "bad/name", want); !errors.Is(err, netmgr.ErrInvalid) {
		t.Errorf("SetLabels on a bad name: %v, want ErrInvalid", err)
	}
	if s, _ := e.m.Sandbox(ctx, "web"); !maps.Equal(s.Labels, want) {
		t.Errorf("after refused calls: labels %v, want %v", s.Labels, want)
	}

	// Concurrent with an attach: both land.
	final := map[string]string{"app": "web2"}
	errs := make(chan error, 2)
	go func() { errs <- e.m.SetLabels(ctx, "web", final) }()
	go func() { _, err := e.m.Attach(ctx, "web", netmgr.AttachSpec{Network: "extra"}); errs <- err }()
	for i := 0; i < 2; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	s, err := e.m.Sandbox(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(s.Labels, final) || len(s.Attachments) != 2 {
		t.Errorf("after concurrent SetLabels and Attach: labels %v, %d attachments; want %v and 2", s.Labels, len(s.Attachments), final)
	}

	// Clearing.
	if err := e.m.SetLabels(ctx, "web", nil); err != nil {
		t.Fatal(err)
	}
	if s, _ := e.m.Sandbox(ctx, "web"); len(s.Labels) != 0 {
		t.Errorf("after SetLabels nil: labels %v", s.Labels)
	}
}
