package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr/pod/keeper"
)

type keptContainer struct {
	Name         string `json:"name"`
	State        string `json:"state"`
	ExitCode     int    `json:"exit_code"`
	Restarts     int    `json:"restarts"`
	LastExitCode *int   `json:"last_exit_code"`
	Reason       string `json:"reason"`
}

type keptPod struct {
	IPs           []string        `json:"ips"`
	RestartPolicy string          `json:"restart_policy"`
	Containers    []keptContainer `json:"containers"`
}

func (ph *podHost) kept(t *testing.T, name string) keptPod {
	t.Helper()
	var p keptPod
	if err := json.Unmarshal([]byte(ph.mustPod(t, "-o", "json", "inspect", name)), &p); err != nil {
		t.Fatal(err)
	}
	if len(p.Containers) != 1 {
		t.Fatalf("%s: containers %+v", name, p.Containers)
	}
	return p
}

// startAgent runs `podctl agent` on the host (its pod keeper with a fast back-off) until cleanup.
func (ph *podHost) startAgent(t *testing.T, args ...string) {
	t.Helper()
	full := append([]string{"--containerd", ph.ctd.Address, "agent", "--containerd-namespace", ph.ctdNS}, args...)
	cmd := ph.cmd(context.Background(), full...)
	log := &testutil.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("agent log:\n%s", lastLines(log.String(), 40))
		}
	})
	lock := filepath.Join(ph.runDir, "pod-keeper-"+ph.ctdNS+".lock")
	eventually(t, 20*time.Second, "the agent's pod keeper runs", func() error {
		select {
		case <-done:
			t.Fatalf("agent exited: %s", log.String())
		default:
		}
		if !keeper.Running(lock) {
			return exec.ErrNotFound
		}
		return nil
	})
}

const crashPod = `apiVersion: v1
kind: Pod
metadata: {name: NAME}
spec:
  restartPolicy: POLICY
  containers:
  - name: main
    image: ROOTFS
    command: [sh, -c, 'echo started; sleep 0.3; exit CODE']
`

// TestPodRestartPolicy: the agent's keeper restarts a container that exits 1 under OnFailure with
// growing delays, and the pod keeps its IP; under Never it stays exited, and under OnFailure an exit 0
// is left alone; pod rm during a back-off removes everything; without an agent podctl says a restart
// policy needs one.
func TestPodRestartPolicy(t *testing.T) {
	ph := newPodHost(t)
	ctx := context.Background()
	ph.must(t, "network", "create", "keep", "--driver", "bridge", "--subnet", "10.44.0.0/24")
	m := func(name, policy, code string) string {
		return ph.manifest(t, name, strings.NewReplacer("NAME", name, "POLICY", policy, "CODE", code).Replace(crashPod))
	}

	// No agent: refused, nothing made.
	if _, err := ph.pod(ctx, "run", "-f", m("crash", "OnFailure", "1"), "--network", "keep"); err == nil || !strings.Contains(err.Error(), "restartPolicy OnFailure needs a running agent") {
		t.Fatalf("OnFailure without an agent: %v", err)
	}
	ph.assertPodsClean(t, "keep")

	ph.startAgent(t, "--restart-backoff", "500ms", "--restart-backoff-max", "4s")
	ph.mustPod(t, "run", "-f", m("crash", "OnFailure", "1"), "--network", "keep")
	ph.mustPod(t, "run", "-f", m("never", "Never", "1"), "--network", "keep")
	ph.mustPod(t, "run", "-f", m("done", "OnFailure", "0"), "--network", "keep")
	first := ph.kept(t, "crash")
	if len(first.IPs) != 1 || first.RestartPolicy != "OnFailure" {
		t.Fatalf("crash: %+v", first)
	}

	// Restarts at growing intervals: 0.5 s, 1 s, 2 s, 4 s of back-off after each 0.3 s run.
	var at []time.Time
	seenBackOff := false
	last := 0
	eventually(t, 60*time.Second, "four restarts", func() error {
		p := ph.kept(t, "crash")
		if p.IPs[0] != first.IPs[0] {
			t.Fatalf("pod IP changed: %v -> %v", first.IPs, p.IPs)
		}
		c := p.Containers[0]
		if c.Reason == keeper.ReasonCrashLoopBackOff && c.State == "stopped" {
			seenBackOff = true
		}
		if c.Restarts > last {
			for range c.Restarts - last {
				at = append(at, time.Now())
			}
			last = c.Restarts
			if c.LastExitCode == nil || *c.LastExitCode != 1 {
				t.Errorf("restart %d: last exit code %v, want 1", c.Restarts, c.LastExitCode)
			}
		}
		if c.Restarts < 4 {
			return &restartsErr{c.Restarts}
		}
		return nil
	})
	gaps := []time.Duration{at[1].Sub(at[0]), at[2].Sub(at[1]), at[3].Sub(at[2])}
	t.Logf("intervals between restarts: %v", gaps)
	if gaps[2] <= gaps[0] || gaps[2] < 2*time.Second {
		t.Errorf("restart intervals do not grow: %v", gaps)
	}
	if !seenBackOff {
		t.Errorf("never saw the container waiting in %s", keeper.ReasonCrashLoopBackOff)
	}
	if out := ph.mustPod(t, "inspect", "crash"); !strings.Contains(out, "RESTARTS") || !strings.Contains(out, "OnFailure") {
		t.Errorf("inspect table:\n%s", out)
	}
	for name, code := range map[string]int{"never": 1, "done": 0} {
		c := ph.kept(t, name).Containers[0]
		if c.State != "stopped" || c.ExitCode != code || c.Restarts != 0 {
			t.Errorf("%s: %+v, want stopped with exit %d and no restarts", name, c, code)
		}
	}
	if c := ph.kept(t, "done").Containers[0]; c.Reason != keeper.ReasonCompleted {
		t.Errorf("done: reason %q, want %s", c.Reason, keeper.ReasonCompleted)
	}

	// pod rm during a back-off (4 s by now) removes everything, and the keeper does not bring it back.
	eventually(t, 20*time.Second, "crash waits in back-off", func() error {
		if c := ph.kept(t, "crash").Containers[0]; c.State != "stopped" || c.Reason != keeper.ReasonCrashLoopBackOff {
			return &restartsErr{c.Restarts}
		}
		return nil
	})
	ph.mustPod(t, "rm", "crash", "never", "done")
	time.Sleep(5 * time.Second) // past the back-off: a keeper that restarted it would have by now
	ph.assertPodsClean(t, "keep")
}

type restartsErr struct{ n int }

func (e *restartsErr) Error() string { return fmt.Sprintf("%d restarts so far", e.n) }
