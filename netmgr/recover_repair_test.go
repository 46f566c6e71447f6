package netmgr_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/store"
	"github.com/netmgr/netmgr/sandbox"
)

// reopen opens a second Manager on e's state, as the next podctl command does, logging into log.
func (e *env) reopen(t *testing.T, log *testutil.SyncBuffer, opts ...netmgr.Option) *netmgr.Manager {
	t.Helper()
	opts = append([]netmgr.Option{netmgr.WithStateDir(e.stateDir), netmgr.WithRunDir(e.runDir), netmgr.WithHostNetNS(e.host.Path()),
		netmgr.WithLogger(slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelWarn})))}, opts...)
	m, err := netmgr.New(context.Background(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// putKey writes one key into a store, as bbolt's fallback to its previous meta page brings it back.
func putKey(t *testing.T, s store.Store, key, value string) {
	t.Helper()
	if err := s.Txn(context.Background(), nil, []store.Op{store.Put(key, []byte(value))}); err != nil {
		t.Fatal(err)
	}
}

func absent(t *testing.T, s store.Store, key string) {
	t.Helper()
	if _, err := s.Get(context.Background(), key); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("key %s left (err %v)", key, err)
	}
}

// TestRepairKeepsNetworkInUse: a network's create intent that comes back after its create finished
// (bbolt's meta page fallback, simulated by writing the intent again) is not undone while anything
// uses the network: the next Manager finishes the create instead, keeps the network, its bridge and
// its sandboxes, clears the intent, and says so at Warn level. Unused, it is undone as before.
func TestRepairKeepsNetworkInUse(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()

	t.Run("sandbox attached", func(t *testing.T) {
		e.network(t, "inuse", "10.61.0.0/24")
		_, ns := e.sandbox(t, "a1", "inuse")
		putKey(t, e.st, "intents/network/inuse", "create")
		var log testutil.SyncBuffer
		m := e.reopen(t, &log)
		if _, err := m.Network(ctx, "inuse"); err != nil {
			t.Fatalf("network undone under its sandbox: %v", err)
		}
		if !testutil.HasLink(t, e.host, "nm-inuse") {
			t.Fatal("bridge deleted under its sandbox")
		}
		if _, err := m.Sandbox(ctx, "a1"); err != nil {
			t.Fatal(err)
		}
		if err := testutil.Ping(ns, "10.61.0.1"); err != nil {
			t.Fatalf("sandbox cut off: %v", err)
		}
		absent(t, e.st, "intents/network/inuse")
		if !strings.Contains(log.String(), "level=WARN") || !strings.Contains(log.String(), "network=inuse") {
			t.Errorf("repair not logged at Warn: %q", log.String())
		}
		if err := m.DeleteSandbox(ctx, "a1"); err != nil {
			t.Fatal(err)
		}
		if err := m.DeleteNetwork(ctx, "inuse"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("port on the bridge only", func(t *testing.T) {
		e.network(t, "ported", "10.61.1.0/24")
		h, err := e.host.NewHandle()
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		br, err := h.LinkByName("nm-ported")
		if err != nil {
			t.Fatal(err)
		}
		// A netmgr host end whose records are lost (the runtime file fell back too).
		if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "nmvorphan0", MasterIndex: br.Attrs().Index}, PeerName: "orphanpeer"}); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if l, err := h.LinkByName("nmvorphan0"); err == nil {
				_ = h.LinkDel(l)
			}
		}()
		putKey(t, e.st, "intents/network/ported", "create")
		var log testutil.SyncBuffer
		m := e.reopen(t, &log)
		if _, err := m.Network(ctx, "ported"); err != nil {
			t.Fatalf("network undone with a port on its bridge: %v", err)
		}
		if !testutil.HasLink(t, e.host, "nm-ported") {
			t.Fatal("bridge with a port deleted")
		}
		absent(t, e.st, "intents/network/ported")
	})

	t.Run("unused", func(t *testing.T) {
		e.network(t, "idle", "10.61.2.0/24")
		putKey(t, e.st, "intents/network/idle", "create")
		var log testutil.SyncBuffer
		m := e.reopen(t, &log)
		if _, err := m.Network(ctx, "idle"); !errors.Is(err, netmgr.ErrNotFound) {
			t.Fatalf("unused network with a create intent not undone: %v", err)
		}
		if testutil.HasLink(t, e.host, "nm-idle") {
			t.Fatal("bridge of an undone create left")
		}
		if !strings.Contains(log.String(), "level=WARN") {
			t.Errorf("undo not logged at Warn: %q", log.String())
		}
	})
}

// TestRepairKeepsSandboxInUse: a sandbox's create intent that comes back after its create finished is
// not undone while a sandbox joined it or a process other than its pause process runs in its
// namespace; the create is finished instead. Unused, it is undone as before.
func TestRepairKeepsSandboxInUse(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.network(t, "sbuse", "10.62.0.0/24")

	t.Run("joined", func(t *testing.T) {
		_, ns := e.sandbox(t, "target", "sbuse")
		if _, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "joiner", Join: "target"}); err != nil {
			t.Fatal(err)
		}
		putKey(t, e.rt, "intents/sandbox/target", "create")
		var log testutil.SyncBuffer
		m := e.reopen(t, &log)
		for _, n := range []string{"target", "joiner"} {
			if _, err := m.Sandbox(ctx, n); err != nil {
				t.Fatalf("sandbox %s undone while joined: %v", n, err)
			}
		}
		if err := testutil.Ping(ns, "10.62.0.1"); err != nil {
			t.Fatalf("joined sandbox lost its network: %v", err)
		}
		absent(t, e.rt, "intents/sandbox/target")
		if !strings.Contains(log.String(), "sandbox=target") {
			t.Errorf("repair not logged at Warn: %q", log.String())
		}
		if err := m.DeleteSandbox(ctx, "joiner"); err != nil {
			t.Fatal(err)
		}
		if err := m.DeleteSandbox(ctx, "target"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("process in the namespace", func(t *testing.T) {
		s, ns := e.sandbox(t, "busy", "sbuse")
		sleep := startIn(t, ns, "sleep", "600")
		putKey(t, e.rt, "intents/sandbox/busy", "create")
		var log testutil.SyncBuffer
		m := e.reopen(t, &log)
		if _, err := m.Sandbox(ctx, "busy"); err != nil {
			t.Fatalf("sandbox undone with a process in it: %v", err)
		}
		if !sandbox.IsPinned(s.NetNS) {
			t.Fatal("pin removed under a process")
		}
		if err := testutil.Ping(ns, "10.62.0.1"); err != nil {
			t.Fatalf("sandbox with a process cut off: %v", err)
		}
		absent(t, e.rt, "intents/sandbox/busy")
		_ = sleep.Process.Kill()
		_ = sleep.Wait()
		if err := m.DeleteSandbox(ctx, "busy"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("unused", func(t *testing.T) {
		s, _ := e.sandbox(t, "idle", "sbuse")
		putKey(t, e.rt, "intents/sandbox/idle", "create")
		var log testutil.SyncBuffer
		m := e.reopen(t, &log)
		if _, err := m.Sandbox(ctx, "idle"); !errors.Is(err, netmgr.ErrNotFound) {
			t.Fatalf("unused sandbox with a create intent not undone: %v", err)
		}
		if sandbox.IsPinned(s.NetNS) {
			t.Fatal("pin of an undone create left")
		}
	})
}

// startIn starts busybox APPLET ARGS inside ns (the child inherits the namespace of the thread that
// forks it); the test kills it.
func startIn(t *testing.T, ns *sandbox.NetNS, applet string, args ...string) *exec.Cmd {
	t.Helper()
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("needs busybox")
	}
	c := exec.Command(bb, append([]string{applet}, args...)...)
	if err := ns.Do(c.Start); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.Process.Kill()
		_, _ = c.Process.Wait()
	})
	return c
}

// crashNetworkCreate runs a network create on its own Manager that dies at step (the hook panics, so
// the lock is released and the intent stays, as when the process is killed there).
func (e *env) crashNetworkCreate(t *testing.T, step string, spec netmgr.NetworkSpec) {
	t.Helper()
	type died struct{}
	crashing, err := netmgr.New(context.Background(), netmgr.WithStateDir(e.stateDir), netmgr.WithRunDir(e.runDir), netmgr.WithHostNetNS(e.host.Path()),
		netmgr.WithStepHook(func(s string) {
			if s == step {
				panic(died{})
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer crashing.Close()
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(died); !ok {
				panic(r)
			}
		}
	}()
	_, _ = crashing.CreateNetwork(context.Background(), spec)
	t.Fatal("create did not stop at", step)
}

// TestRepairAfterRebootUndoesCreate: a network create that died after recording (and after making
// its bridge), followed by a reboot, which empties the run dir (a tmpfs) and so every lock file, is
// rolled back by the next Manager: the network, its intent and its bridge are gone, and the name can
// be used again. The reboot shows as an intent carrying another boot's ID, or, for an intent written
// without one, as a record created before this boot started.
func TestRepairAfterRebootUndoesCreate(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	spec := netmgr.NetworkSpec{Name: "flaky", Subnets: []netip.Prefix{netip.MustParsePrefix("10.63.0.0/24")}}
	earlier := map[string]func(t *testing.T){
		"intent of another boot": func(t *testing.T) {
			putKey(t, e.st, "intents/network/flaky", "create boot=00000000-0000-0000-0000-000000000000")
		},
		"record of an earlier boot": func(t *testing.T) {
			kv, err := e.st.Get(ctx, "networks/flaky")
			if err != nil {
				t.Fatal(err)
			}
			var rec map[string]any
			if err := json.Unmarshal(kv.Value, &rec); err != nil {
				t.Fatal(err)
			}
			rec["created"] = time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC)
			b, _ := json.Marshal(rec)
			putKey(t, e.st, "networks/flaky", string(b))
			// As an older netmgr wrote it: no boot ID in the intent.
			putKey(t, e.st, "intents/network/flaky", "create")
		},
	}
	for _, step := range []string{netmgr.StepNetworkReserved, netmgr.StepNetworkCreated} {
		for how, mark := range earlier {
			t.Run(step+"/"+how, func(t *testing.T) {
				e.crashNetworkCreate(t, step, spec)
				if step == netmgr.StepNetworkCreated && !testutil.HasLink(t, e.host, "nm-flaky") {
					t.Fatal("no bridge at", step)
				}
				mark(t)
				// The reboot: the run dir's contents are gone.
				ents, _ := os.ReadDir(e.runDir)
				for _, d := range ents {
					if err := os.RemoveAll(filepath.Join(e.runDir, d.Name())); err != nil {
						t.Fatal(err)
					}
				}
				var log testutil.SyncBuffer
				m := e.reopen(t, &log)
				if _, err := m.Network(ctx, "flaky"); !errors.Is(err, netmgr.ErrNotFound) {
					t.Fatalf("interrupted create adopted after a reboot: %v", err)
				}
				absent(t, e.st, "intents/network/flaky")
				if testutil.HasLink(t, e.host, "nm-flaky") {
					t.Fatal("bridge of the interrupted create left")
				}
				if _, err := m.CreateNetwork(ctx, spec); err != nil {
					t.Fatal(err)
				}
				if err := m.DeleteNetwork(ctx, "flaky"); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}

// TestRepairLeavesLiveCreateAlone: a Manager whose run dir has no lock file for a network intent of
// this boot (another run dir, whose owner is alive) does not repair it: the create in flight
// completes.
func TestRepairLeavesLiveCreateAlone(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	paused, resume := make(chan struct{}), make(chan struct{})
	live, err := netmgr.New(ctx, netmgr.WithStateDir(e.stateDir), netmgr.WithRunDir(e.runDir), netmgr.WithHostNetNS(e.host.Path()),
		netmgr.WithStepHook(func(s string) {
			if s == netmgr.StepNetworkCreated {
				close(paused)
				<-resume
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	done := make(chan error, 1)
	go func() {
		_, err := live.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "inflight", Subnets: []netip.Prefix{netip.MustParsePrefix("10.63.1.0/24")}})
		done <- err
	}()
	<-paused
	other, err := netmgr.New(ctx, netmgr.WithStateDir(e.stateDir), netmgr.WithRunDir(t.TempDir()), netmgr.WithHostNetNS(e.host.Path()))
	if err != nil {
		close(resume)
		t.Fatal(err)
	}
	defer other.Close()
	_, err = other.Network(ctx, "inflight")
	close(resume)
	if err != nil {
		t.Fatalf("a create in flight was repaired by a Manager of another run dir: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := e.m.DeleteNetwork(ctx, "inflight"); err != nil {
		t.Fatal(err)
	}
}
