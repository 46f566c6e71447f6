package sandbox_test

import (
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/netmgr/netmgr/sandbox"
)

// A pause process started in a sandbox is found by ProcessesIn (also by its binary), Stop ends it,
// and the caller reaps it, so it leaves no zombie behind.
func TestStartPauseProcessesInStop(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "pause")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/netmgr/netmgr/examples/pause").CombinedOutput(); err != nil {
		t.Fatalf("build pause: %v\n%s", err, out)
	}
	p := filepath.Join(dir, "ns")
	ns, err := sandbox.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { ns.Close(); _ = sandbox.Remove(p) }()
	if got := sandbox.ProcessesIn(p, ""); len(got) != 0 {
		t.Fatalf("a new namespace holds processes %v", got)
	}
	proc, err := sandbox.StartPause(ns, bin, "")
	if err != nil {
		t.Fatal(err)
	}
	defer proc.Stop()
	if !proc.Alive() {
		t.Fatal("pause process not alive after start")
	}
	if got := sandbox.ProcessesIn(p, bin); !slices.Equal(got, []int{proc.PID}) {
		t.Errorf("ProcessesIn(pause binary) = %v, want [%d]", got, proc.PID)
	}
	if got := sandbox.ProcessesIn(p, "/bin/true"); len(got) != 0 {
		t.Errorf("ProcessesIn(another binary) = %v", got)
	}
	if got := sandbox.ProcessesIn(p, "", proc.PID); len(got) != 0 {
		t.Errorf("ProcessesIn leaving the pause process out = %v", got)
	}
	proc.Stop()
	for deadline := time.Now().Add(5 * time.Second); proc.Alive(); {
		if time.Now().After(deadline) {
			t.Fatal("pause process still alive (or a zombie) after Stop")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
