package netmgr_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/netmgr/netmgr/netmgr"
)

// TestSetSandboxLabels: labels are set and removed on the record (what Sandbox returns), the others
// kept; a missing sandbox is ErrNotFound and leaves no lock file behind.
func TestSetSandboxLabels(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if _, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "s", Labels: map[string]string{"app": "web"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.SetSandboxLabels(ctx, "s", map[string]string{"netmgr.io/ready": "false"}); err != nil {
		t.Fatal(err)
	}
	sb, err := e.m.Sandbox(ctx, "s")
	if err != nil || sb.Labels["netmgr.io/ready"] != "false" || sb.Labels["app"] != "web" {
		t.Fatalf("after set: %+v %v", sb, err)
	}
	if _, err := e.m.SetSandboxLabels(ctx, "s", map[string]string{"netmgr.io/ready": ""}); err != nil {
		t.Fatal(err)
	}
	if sb, _ = e.m.Sandbox(ctx, "s"); len(sb.Labels) != 1 {
		t.Fatalf("after remove: %v", sb.Labels)
	}
	if _, err := e.m.SetSandboxLabels(ctx, "ghost", map[string]string{"a": "b"}); !errors.Is(err, netmgr.ErrNotFound) {
		t.Fatalf("missing sandbox: %v", err)
	}
	if _, err := os.Stat(filepath.Join(e.runDir, "locks", "sandbox-ghost.lock")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lock file for a missing sandbox: %v", err)
	}
}
