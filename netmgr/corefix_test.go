package netmgr_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/store"
	"github.com/netmgr/netmgr/sandbox"
)

// Names reach lock-file paths: every entry point must refuse a name that could leave the run dir
// before any path is derived from it (issue 15 item 1).
func TestNamesCannotEscapeRunDir(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.network(t, "n1", "10.71.0.0/24")
	victim := t.TempDir()
	for _, f := range []string{"important.lock", "important2.lock"} {
		if err := os.WriteFile(filepath.Join(victim, f), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	rel, err := filepath.Rel(filepath.Join(e.runDir, "locks"), victim)
	if err != nil {
		t.Fatal(err)
	}
	evil := "x/../" + rel
	check := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, netmgr.ErrInvalid) {
			t.Errorf("%s: got %v, want ErrInvalid", what, err)
		}
	}
	check("delete sandbox", e.m.DeleteSandbox(ctx, evil+"/important"))
	check("delete network", e.m.DeleteNetwork(ctx, evil+"/important2"))
	_, err = e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "s1", Networks: []netmgr.AttachSpec{{Network: evil + "/newdir/evil"}}})
	check("create with network", err)
	_, err = e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "s2", Join: evil + "/j"})
	check("create joining", err)
	_, err = e.m.Attach(ctx, evil+"/a", netmgr.AttachSpec{Network: "n1"})
	check("attach sandbox", err)
	_, err = e.m.Attach(ctx, "s3", netmgr.AttachSpec{Network: evil + "/b"})
	check("attach network", err)
	check("detach sandbox", e.m.Detach(ctx, evil+"/c", "n1"))
	check("detach network", e.m.Detach(ctx, "s3", evil+"/d"))
	_, err = e.m.Sandbox(ctx, "../x")
	check("inspect sandbox", err)
	_, err = e.m.Network(ctx, "../x")
	check("inspect network", err)
	for _, f := range []string{"important.lock", "important2.lock"} {
		if _, err := os.Stat(filepath.Join(victim, f)); err != nil {
			t.Errorf("%s outside the run dir: %v", f, err)
		}
	}
	ents, _ := os.ReadDir(victim)
	if len(ents) != 2 {
		t.Errorf("victim dir holds %d entries, want the 2 it had", len(ents))
	}
	locks, _ := filepath.Glob(filepath.Join(e.runDir, "locks", "*"))
	for _, l := range locks {
		if fi, err := os.Stat(l); err == nil && fi.IsDir() {
			t.Errorf("a directory was made under locks: %s", l)
		}
	}
}

// A typo'd network name must not leave a lock file behind (issue 15 item 17).
func TestMissingNetworkLeavesNoLockFile(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for i := range 5 {
		_, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "s", Networks: []netmgr.AttachSpec{{Network: "missing" + strconv.Itoa(i)}}})
		if !errors.Is(err, netmgr.ErrNotFound) {
			t.Fatalf("create on a missing network: %v", err)
		}
		if _, err := e.m.Attach(ctx, "nosuch"+strconv.Itoa(i), netmgr.AttachSpec{Network: "missing"}); !errors.Is(err, netmgr.ErrNotFound) {
			t.Fatalf("attach of a missing sandbox: %v", err)
		}
	}
	locks, _ := filepath.Glob(filepath.Join(e.runDir, "locks", "*"))
	if len(locks) != 0 {
		t.Errorf("lock files left: %v", locks)
	}
}

// A stuck holder of a sandbox's lock must not hang the others: the wait ends with the context, promptly,
// and the error names what was waited for (issue 15 item 16).
func TestLockWaitHonoursContext(t *testing.T) {
	e := newEnv(t)
	e.network(t, "n1", "10.72.0.0/24")
	lockFile := filepath.Join(e.runDir, "locks", "sandbox-s.lock")
	if err := os.MkdirAll(filepath.Dir(lockFile), 0o700); err != nil {
		t.Fatal(err)
	}
	// Another process holds the lock, as a hung podctl would.
	holder := exec.Command("flock", lockFile, "sleep", "30")
	if err := holder.Start(); err != nil {
		t.Skip("flock(1) not available:", err)
	}
	t.Cleanup(func() { _ = holder.Process.Kill(); _ = holder.Wait() })
	for deadline := time.Now().Add(5 * time.Second); ; {
		f, _ := os.Open(lockFile)
		if f != nil {
			busy := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil
			f.Close()
			if busy {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("flock holder never took the lock")
		}
		time.Sleep(10 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "s", Networks: []netmgr.AttachSpec{{Network: "n1"}}})
	late := time.Since(start) - 300*time.Millisecond
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want a deadline error", err)
	}
	// The wait selects on ctx.Done(), so it ends at once (about 5 ms here on a quiet machine); the
	// bound is loose because a loaded CI machine delays any goroutine, and the failure this guards
	// against is a wait that lasts until the holder lets go (30 s).
	t.Logf("returned %v after the deadline", late)
	if late > time.Second {
		t.Errorf("returned %v after the deadline", late)
	}
	if want := "flock"; !contains(err.Error(), "sandbox-s") || !contains(err.Error(), want) {
		t.Errorf("error %q does not name the lock and its holder", err)
	}
	// Bounded even without a deadline.
	m2, err := netmgr.New(context.Background(), netmgr.WithStateDir(e.stateDir), netmgr.WithRunDir(e.runDir),
		netmgr.WithHostNetNS(e.host.Path()), netmgr.WithLockTimeout(200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	if err := m2.DeleteSandbox(context.Background(), "s"); !errors.Is(err, netmgr.ErrBusy) {
		t.Errorf("delete under a held lock with a 200ms bound: got %v, want ErrBusy", err)
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

// The crash-test hook is read from the environment only by binaries built for crash tests: an
// embedder with NETMGR_TEST_PAUSE_AT set must not hang (issue 15 item 17).
func TestPauseEnvIgnoredByDefault(t *testing.T) {
	t.Setenv("NETMGR_TEST_PAUSE_AT", netmgr.StepNetworkReserved)
	e := newEnv(t)
	done := make(chan error, 1)
	go func() {
		_, err := e.m.CreateNetwork(context.Background(), netmgr.NetworkSpec{Name: "n1", Driver: "bridge"})
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("CreateNetwork stopped at the step NETMGR_TEST_PAUSE_AT names")
	}
}

// Relative directories are made absolute: records hold paths that work from any directory (item 13).
func TestRelativeDirsBecomeAbsolute(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	base := t.TempDir()
	wd, _ := os.Getwd()
	t.Cleanup(func() { _ = os.Chdir(wd) })
	if err := os.Chdir(base); err != nil {
		t.Fatal(err)
	}
	m, err := netmgr.New(ctx, netmgr.WithStateDir("st"), netmgr.WithRunDir("rn"), netmgr.WithHostNetNS(e.host.Path()))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := m.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "r1", Subnets: prefixes("10.73.0.0/24")}); err != nil {
		t.Fatal(err)
	}
	sb, err := m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "s1", Networks: []netmgr.AttachSpec{{Network: "r1"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.DeleteSandbox(ctx, "s1") //nolint:errcheck
	if !filepath.IsAbs(sb.NetNS) || !filepath.IsAbs(m.RunDir()) {
		t.Errorf("netns %q, run dir %q: want absolute paths", sb.NetNS, m.RunDir())
	}
	if err := os.Chdir(t.TempDir()); err != nil {
		t.Fatal(err)
	}
	rep, err := m.Recover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Stale) > 0 {
		t.Errorf("gc from another directory dropped live sandboxes: %v", rep.Stale)
	}
}

// A sandbox whose network record is gone (a torn or lost state file) can still be removed, by gc and
// by delete, from what its own record holds (issue 15 item 7).
func TestTeardownWithoutNetworkRecord(t *testing.T) {
	for _, tc := range []struct {
		name     string
		stripNet bool // a record written before endpoints carried their network
		viaGC    bool
	}{{"delete", false, false}, {"gc", false, true}, {"old-record", true, false}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			ctx := context.Background()
			e.network(t, "t1", "10.74.0.0/24")
			sb, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "a1", Networks: []netmgr.AttachSpec{{Network: "t1"}}})
			if err != nil {
				t.Fatal(err)
			}
			hostIf := sb.Attachments[0].HostInterface
			if err := e.st.Txn(ctx, nil, []store.Op{store.Del("networks/t1")}); err != nil {
				t.Fatal(err)
			}
			if tc.stripNet {
				kv, err := e.rt.Get(ctx, "sandboxes/a1")
				if err != nil {
					t.Fatal(err)
				}
				var rec map[string]any
				if err := json.Unmarshal(kv.Value, &rec); err != nil {
					t.Fatal(err)
				}
				for _, ep := range rec["endpoints"].([]any) {
					delete(ep.(map[string]any), "net")
				}
				b, _ := json.Marshal(rec)
				if err := e.rt.Txn(ctx, nil, []store.Op{store.Put("sandboxes/a1", b)}); err != nil {
					t.Fatal(err)
				}
			}
			if tc.viaGC {
				// gc drops it only once its namespace is gone: as after a reboot.
				if err := sandbox.Remove(sb.NetNS); err != nil {
					t.Fatal(err)
				}
				if _, err := e.m.Recover(ctx); err != nil {
					t.Fatalf("gc: %v", err)
				}
			} else if err := e.m.DeleteSandbox(ctx, "a1"); err != nil {
				t.Fatalf("delete: %v", err)
			}
			if _, err := e.m.Sandbox(ctx, "a1"); !errors.Is(err, netmgr.ErrNotFound) {
				t.Errorf("sandbox still recorded: %v", err)
			}
			if sandbox.IsPinned(sb.NetNS) {
				t.Error("namespace still pinned")
			}
			if ips, _, _ := e.rt.List(ctx, "ipam/"); len(ips) != 0 {
				t.Errorf("addresses still held: %v", ips)
			}
			hh, err := e.host.NewHandle()
			if err != nil {
				t.Fatal(err)
			}
			defer hh.Close()
			if l, err := hh.LinkByName(hostIf); err == nil && l.Attrs().OperState == netlink.OperUp {
				t.Errorf("host interface %s still up", hostIf)
			}
		})
	}
}

// A sandbox must not attach to a network whose create died half way: its repair would then take
// the network from under the sandbox (issue 15 item 6a).
func TestAttachRefusesInterruptedNetworkCreate(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	m, err := netmgr.New(ctx, netmgr.WithStateDir(e.stateDir), netmgr.WithRunDir(e.runDir), netmgr.WithHostNetNS(e.host.Path()),
		netmgr.WithStepHook(func(step string) {
			if step == netmgr.StepNetworkCreated {
				runtime.Goexit() // the process dies here: its locks are released, its intent stays
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = m.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "half", Subnets: prefixes("10.75.0.0/24")})
	}()
	<-done
	_, err = e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "s1", Networks: []netmgr.AttachSpec{{Network: "half"}}})
	if !errors.Is(err, netmgr.ErrBusy) {
		t.Fatalf("create on a half-created network: %v, want ErrBusy", err)
	}
	if _, err := e.m.Sandbox(ctx, "s1"); !errors.Is(err, netmgr.ErrNotFound) {
		t.Errorf("sandbox recorded: %v", err)
	}
	// After the repair the name is free again, or the network is whole: either way a create works.
	if _, err := e.m.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Network(ctx, "half"); err == nil {
		if _, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "s1", Networks: []netmgr.AttachSpec{{Network: "half"}}}); err != nil {
			t.Fatalf("after repair: %v", err)
		}
	}
}

// Detaching the network that holds the default route moves it to another attachment with a gateway
// of that family, as Docker does (issue 15 item 14).
func TestDetachMovesDefaultRoute(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.network(t, "n1", "10.76.0.0/24")
	e.network(t, "n2", "10.78.0.0/24")
	sb, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "s", Networks: []netmgr.AttachSpec{{Network: "n1"}, {Network: "n2"}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.m.Detach(ctx, "s", "n1"); err != nil {
		t.Fatal(err)
	}
	ns, err := sandbox.Open(sb.NetNS)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := ns.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	routes, err := h.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	var gw string
	for _, r := range routes {
		if r.Dst == nil || r.Dst.IP.IsUnspecified() {
			gw = r.Gw.String()
		}
	}
	if gw != "10.78.0.1" {
		t.Fatalf("default route via %q after detaching n1, want 10.78.0.1 (routes %v)", gw, routes)
	}
	got, err := e.m.Sandbox(ctx, "s")
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Attachments) != 1 || len(got.Attachments[0].Gateways) != 1 || got.Attachments[0].Gateways[0].String() != "10.78.0.1" {
		t.Errorf("record after detach: %+v", got.Attachments)
	}
}

// A long-lived embedder with N pause processes must not hold N OS threads waiting for them (issue 15
// item 17), and they are still reaped when they exit.
func TestPauseProcessesHoldNoThreads(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	dir := t.TempDir()
	pause := filepath.Join(dir, "pause")
	if out, err := exec.Command("go", "build", "-o", pause, "github.com/netmgr/netmgr/examples/pause").CombinedOutput(); err != nil {
		t.Fatalf("build pause: %v\n%s", err, out)
	}
	m, err := netmgr.New(ctx, netmgr.WithStateDir(e.stateDir), netmgr.WithRunDir(e.runDir), netmgr.WithHostNetNS(e.host.Path()), netmgr.WithPauseBinary(pause))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	const n = 24
	before := threads(t)
	var pids []int
	for i := range n {
		sb, err := m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "p" + strconv.Itoa(i), Pause: true})
		if err != nil {
			t.Fatal(err)
		}
		pids = append(pids, sb.PausePID)
	}
	time.Sleep(200 * time.Millisecond)
	if grown := threads(t) - before; grown >= n/2 {
		t.Errorf("%d pause processes added %d OS threads", n, grown)
	}
	// One exits by itself: it must not stay a zombie.
	if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := os.ReadFile("/proc/" + strconv.Itoa(pids[0]) + "/stat")
		if err != nil {
			break // reaped
		}
		if time.Now().After(deadline) {
			t.Fatalf("pause process %d not reaped: %s", pids[0], st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for i := range n {
		if err := m.DeleteSandbox(ctx, "p"+strconv.Itoa(i)); err != nil {
			t.Error(err)
		}
	}
}

func threads(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Threads:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	t.Fatal("no Threads line")
	return 0
}

// Creating a sandbox under a taken name says so, also when it publishes the taken name's ports.
func TestCreateExistingNameWithPorts(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.network(t, "b1", "10.79.0.0/24")
	spec := netmgr.SandboxSpec{Name: "k4", Networks: []netmgr.AttachSpec{{Network: "b1"}},
		Publish: []netmgr.PortMapping{{HostPort: 10004, ContainerPort: 80, Protocol: "tcp"}}}
	if _, err := e.m.CreateSandbox(ctx, spec); err != nil {
		t.Fatal(err)
	}
	_, err := e.m.CreateSandbox(ctx, spec)
	if !errors.Is(err, netmgr.ErrExists) || !strings.Contains(err.Error(), `a sandbox named "k4" exists`) {
		t.Fatalf("second create: %v", err)
	}
}

// A run dir kept across a reboot holds pin files of namespaces that died with the boot: their names
// are free again at once, not only after a gc.
func TestPinsOfAnotherBootDoNotBlockNames(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.m.Close()
	if err := os.WriteFile(filepath.Join(e.runDir, "runtime.db.boot"), []byte("another-boot\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(e.runDir, "netns"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.runDir, "netns", "s1"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	m, err := netmgr.New(ctx, netmgr.WithStateDir(e.stateDir), netmgr.WithRunDir(e.runDir), netmgr.WithHostNetNS(e.host.Path()))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "s1"}); err != nil {
		t.Fatalf("create after reboot: %v", err)
	}
	if err := m.DeleteSandbox(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
}
