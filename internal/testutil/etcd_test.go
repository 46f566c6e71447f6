package testutil

import (
	"os"
	"syscall"
	"testing"
)

// StartEtcd's server answers in its namespace, survives Stop/Restart and Kill/Restart with its
// data, compacts, and is gone after Kill.
func TestStartEtcd(t *testing.T) {
	e := StartEtcd(t, EtcdOptions{})
	rev := e.Revision()
	if rev < 1 {
		t.Fatalf("revision %d", rev)
	}
	if at := e.Compact(0); at != rev {
		t.Fatalf("compacted at %d, want %d", at, rev)
	}
	e.Stop()
	if err := e.healthy(); err == nil {
		t.Fatal("etcd answers after Stop")
	}
	e.Restart()
	e.Kill()
	e.Restart()
	if got := e.Revision(); got != rev {
		t.Fatalf("revision after restarts %d, want %d (same data)", got, rev)
	}
	pid := e.cmd.Process.Pid
	e.Kill()
	if err := syscall.Kill(pid, 0); err == nil {
		t.Fatalf("etcd %d still running after Kill", pid)
	}
	if _, err := os.Stat(e.Dir); err != nil {
		t.Fatalf("data dir gone after Kill: %v", err)
	}
}
