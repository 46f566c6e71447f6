package agent

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/netmgr/netmgr/netmgr/cluster"
)

// TestLockRunDir: one agent per run directory; the second is refused with ErrExists naming the
// first one's pid, and the lock is free again once the first closes it.
func TestLockRunDir(t *testing.T) {
	dir := t.TempDir()
	first, err := lockRunDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = lockRunDir(dir)
	if !errors.Is(err, cluster.ErrExists) || !strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("second agent: %v, want ErrExists naming pid %d", err, os.Getpid())
	}
	first.Close()
	again, err := lockRunDir(dir)
	if err != nil {
		t.Fatalf("after the first closed: %v", err)
	}
	again.Close()
}
