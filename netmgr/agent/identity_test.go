package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestHostIdentity: the token is made with its directory on the first start (a node with a cluster
// store has no state directory yet: the agent failed "open .../agent-identity.tmp: no such file or
// directory" before), kept across starts, different per directory, and carries the boot id.
func TestHostIdentity(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state", "not-yet")
	a, err := hostIdentity(dir)
	if err != nil {
		t.Fatalf("fresh state dir: %v", err)
	}
	b, err := hostIdentity(dir)
	if err != nil || a != b {
		t.Fatalf("second start: %q, %v; want %q", b, err, a)
	}
	other, err := hostIdentity(t.TempDir())
	if err != nil || other == a {
		t.Fatalf("another state dir: %q, %v; want a token of its own", other, err)
	}
	boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err == nil && !strings.HasSuffix(a, "/"+strings.TrimSpace(string(boot))) {
		t.Errorf("identity %q does not carry the boot id %s", a, boot)
	}
}
