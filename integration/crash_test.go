package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/store"
	"github.com/netmgr/netmgr/sandbox"
)

// repairers are the two ways a crash gets repaired: the next podctl start (any command), or podctl gc.
var repairers = []struct {
	name string
	args []string
}{
	{"next-start", []string{"sandbox", "ls"}},
	{"gc", []string{"gc"}},
}

// TestCrashDuringSandboxCreate kills podctl at each step of a sandbox create and checks that the next
// start or gc leaves kernel and store consistent and the address reusable.
func TestCrashDuringSandboxCreate(t *testing.T) {
	h := newHost(t)
	h.must(t, "network", "create", "crash", "--driver", "bridge", "--subnet", "10.41.0.0/24")
	for _, step := range []string{netmgr.StepSandboxReserved, netmgr.StepSandboxNetNS, netmgr.StepSandboxAttached} {
		for _, r := range repairers {
			t.Run(step+"/"+r.name, func(t *testing.T) {
				h.killAt(t, step, "sandbox", "create", "victim", "--network", "crash,ip=10.41.0.50")
				h.must(t, r.args...)
				h.assertClean(t, "crash")
				// The address is free again: a new sandbox can take it.
				h.must(t, "sandbox", "create", "again", "--network", "crash,ip=10.41.0.50")
				h.must(t, "sandbox", "rm", "again")
				h.assertClean(t, "crash")
			})
		}
	}
}

// TestCrashWithPauseAndPorts kills podctl at each step of creating a sandbox with a pause process and
// a published port, and of deleting it: afterwards no pause process, nftables element or port key is
// left, and the port and address can be taken again at once.
func TestCrashWithPauseAndPorts(t *testing.T) {
	h := newHost(t)
	h.must(t, "network", "create", "crashp", "--driver", "bridge", "--subnet", "10.44.0.0/24")
	create := []string{"sandbox", "create", "victim", "--pause", "--network", "crashp,ip=10.44.0.50", "--publish", "18080:80"}
	for _, step := range []string{netmgr.StepSandboxAttached, netmgr.StepSandboxComplete} {
		t.Run("create/"+step, func(t *testing.T) {
			h.killAt(t, step, create...)
			h.must(t, "gc")
			h.assertClean(t, "crashp")
			h.assertNoPause(t)
			h.must(t, "sandbox", "create", "again", "--network", "crashp,ip=10.44.0.50", "--publish", "18080:80")
			h.must(t, "sandbox", "rm", "again")
		})
	}
	for _, step := range []string{netmgr.StepSandboxDeleting, netmgr.StepSandboxDetached, netmgr.StepSandboxUnpinned} {
		t.Run("delete/"+step, func(t *testing.T) {
			h.must(t, create...)
			h.killAt(t, step, "sandbox", "rm", "victim")
			h.must(t, "sandbox", "ls") // the next start repairs
			h.assertClean(t, "crashp")
			h.assertNoPause(t)
			h.must(t, "sandbox", "create", "again", "--network", "crashp,ip=10.44.0.50", "--publish", "18080:80")
			h.must(t, "sandbox", "rm", "again")
		})
	}
}

// assertNoPause checks that no pause process started from the test's binary is left.
func (h *host) assertNoPause(t *testing.T) {
	t.Helper()
	pause := filepath.Join(filepath.Dir(podctlBin), "pause")
	procs, _ := filepath.Glob("/proc/[0-9]*/exe")
	for _, p := range procs {
		if exe, err := os.Readlink(p); err == nil && exe == pause {
			st, _ := os.ReadFile(filepath.Join(filepath.Dir(p), "stat"))
			if !strings.Contains(string(st), ") Z ") { // a zombie waits for its reaper, it holds nothing
				t.Errorf("pause process left: %s", filepath.Dir(p))
			}
		}
	}
}

// TestCrashDuringAttachAndDetach kills podctl at each step of attaching a sandbox to a second network
// and of detaching it: afterwards the sandbox is on its first network only, with one host veth, and
// the second network's address can be taken again.
func TestCrashDuringAttachAndDetach(t *testing.T) {
	h := newHost(t)
	h.must(t, "network", "create", "first", "--driver", "bridge", "--subnet", "10.45.1.0/24")
	h.must(t, "network", "create", "second", "--driver", "bridge", "--subnet", "10.45.2.0/24")
	h.must(t, "sandbox", "create", "multi", "--network", "first")
	onlyFirst := func(t *testing.T) {
		t.Helper()
		sbs := h.sandboxes(t)
		if len(sbs) != 1 || len(sbs[0].Attachments) != 1 || sbs[0].Attachments[0].Network != "first" {
			t.Fatalf("after repair: %+v, want multi on network first only", sbs)
		}
		if out := h.must(t, "-o", "json", "network", "inspect", "second"); !containsJSONEmptyList(out, "sandboxes") {
			t.Fatalf("network second still lists a sandbox: %s", out)
		}
		waitLinkCount(t, h, "nmv", 1)
	}
	for _, step := range []string{netmgr.StepAttachReserved, netmgr.StepAttachPlumbed} {
		for _, r := range repairers {
			t.Run("attach/"+step+"/"+r.name, func(t *testing.T) {
				h.killAt(t, step, "sandbox", "attach", "multi", "--network", "second,ip=10.45.2.50")
				h.must(t, r.args...)
				onlyFirst(t)
			})
		}
	}
	for _, r := range repairers {
		t.Run("detach/"+netmgr.StepDetachMarked+"/"+r.name, func(t *testing.T) {
			h.must(t, "sandbox", "attach", "multi", "--network", "second,ip=10.45.2.50")
			h.killAt(t, netmgr.StepDetachMarked, "sandbox", "detach", "multi", "--network", "second")
			h.must(t, r.args...)
			onlyFirst(t)
		})
	}
	// The address is free: attaching with it works, and a plain detach cleans up.
	h.must(t, "sandbox", "attach", "multi", "--network", "second,ip=10.45.2.50")
	h.must(t, "sandbox", "detach", "multi", "--network", "second")
	onlyFirst(t)
}

// waitLinkCount polls until the host has exactly n links whose name starts with prefix.
func waitLinkCount(t *testing.T, h *host, prefix string, n int) {
	t.Helper()
	hd, err := h.ns.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer hd.Close()
	var got []string
	for i := 0; i < 200; i++ {
		got = got[:0]
		links, _ := hd.LinkList()
		for _, l := range links {
			if strings.HasPrefix(l.Attrs().Name, prefix) {
				got = append(got, l.Attrs().Name)
			}
		}
		if len(got) == n {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("links %s*: %v, want %d", prefix, got, n)
}

// TestCrashDuringSandboxDelete kills podctl at each step of a sandbox delete.
func TestCrashDuringSandboxDelete(t *testing.T) {
	h := newHost(t)
	h.must(t, "network", "create", "crash", "--driver", "bridge", "--subnet", "10.42.0.0/24")
	for _, step := range []string{netmgr.StepSandboxDeleting, netmgr.StepSandboxDetached, netmgr.StepSandboxUnpinned} {
		for _, r := range repairers {
			t.Run(step+"/"+r.name, func(t *testing.T) {
				h.must(t, "sandbox", "create", "victim", "--network", "crash,ip=10.42.0.50")
				h.killAt(t, step, "sandbox", "rm", "victim")
				h.must(t, r.args...)
				h.assertClean(t, "crash")
				h.must(t, "sandbox", "create", "again", "--network", "crash,ip=10.42.0.50")
				h.must(t, "sandbox", "rm", "again")
			})
		}
	}
}

// TestCrashDuringNetworkCreateAndDelete kills podctl inside network create and delete; afterwards the
// network is either wholly there or wholly gone (bridge, record and firewall rules agree), and the
// same name and subnet can be used again.
func TestCrashDuringNetworkCreateAndDelete(t *testing.T) {
	h := newHost(t)
	for _, step := range []string{netmgr.StepNetworkReserved, netmgr.StepNetworkCreated} {
		for _, r := range repairers {
			t.Run(step+"/"+r.name, func(t *testing.T) {
				h.killAt(t, step, "network", "create", "flaky", "--driver", "bridge", "--subnet", "10.43.0.0/24")
				h.must(t, r.args...)
				if out := h.must(t, "network", "ls"); strings.Contains(out, "flaky") {
					t.Fatalf("interrupted network create left the network:\n%s", out)
				}
				if testutil.HasLink(t, h.ns, "nm-flaky") {
					t.Fatal("interrupted network create left its bridge")
				}
				h.must(t, "network", "create", "flaky", "--driver", "bridge", "--subnet", "10.43.0.0/24")
				h.must(t, "network", "rm", "flaky")
			})
		}
	}
	for _, step := range []string{netmgr.StepNetworkDeleting, netmgr.StepNetworkRemoved} {
		for _, r := range repairers {
			t.Run(step+"/"+r.name, func(t *testing.T) {
				h.must(t, "network", "create", "flaky", "--driver", "bridge", "--subnet", "10.43.0.0/24")
				h.killAt(t, step, "network", "rm", "flaky")
				h.must(t, r.args...)
				if out := h.must(t, "network", "ls"); strings.Contains(out, "flaky") {
					t.Fatalf("interrupted network delete left the network:\n%s", out)
				}
				if testutil.HasLink(t, h.ns, "nm-flaky") {
					t.Fatal("interrupted network delete left its bridge")
				}
				h.must(t, "network", "create", "flaky", "--driver", "bridge", "--subnet", "10.43.0.0/24")
				h.must(t, "network", "rm", "flaky")
			})
		}
	}
}

// TestCrashNetworkCreateThenAttach: a network create is killed after its bridge is up, while a
// sandbox create waits for the network's lock. Whatever the waiting create then does, the state stays
// whole: either the sandbox got attached, and then the next start keeps the network under it (it
// finishes the create rather than undoing it) and both can be removed as usual; or the sandbox was
// refused, and then the network is rolled back.
func TestCrashNetworkCreateThenAttach(t *testing.T) {
	h := newHost(t)
	kill := h.pauseAt(t, netmgr.StepNetworkCreated, "network", "create", "half", "--driver", "bridge", "--subnet", "10.46.0.0/24")
	waiter := h.cmd(context.Background(), "sandbox", "create", "s", "--network", "half")
	var out bytes.Buffer
	waiter.Stdout, waiter.Stderr = &out, &out
	if err := waiter.Start(); err != nil {
		kill()
		t.Fatal(err)
	}
	h.waitLockWaiter(t, "network-half")
	kill()
	attached := waiter.Wait() == nil
	t.Logf("sandbox create after the kill: attached=%v: %s", attached, strings.TrimSpace(out.String()))
	netLs := h.must(t, "network", "ls") // the next start repairs
	if !attached {
		if strings.Contains(netLs, "half") || testutil.HasLink(t, h.ns, "nm-half") {
			t.Fatalf("interrupted create with no user not rolled back:\n%s", netLs)
		}
		return
	}
	if !strings.Contains(netLs, "half") || !testutil.HasLink(t, h.ns, "nm-half") {
		t.Fatalf("the next start deleted the network under sandbox s:\n%s", netLs)
	}
	ns, err := sandbox.Open(filepath.Join(h.runDir, "netns", "s"))
	if err != nil {
		t.Fatal(err)
	}
	err = testutil.Ping(ns, "10.46.0.1")
	ns.Close() // an open namespace outlives its pin, and its veth with it
	if err != nil {
		t.Fatalf("sandbox cut off after the repair: %v", err)
	}
	h.must(t, "gc")
	h.must(t, "sandbox", "rm", "s")
	h.must(t, "network", "rm", "half")
	h.assertClean(t)
	if testutil.HasLink(t, h.ns, "nm-half") {
		t.Fatal("bridge left after network rm")
	}
}

// TestCrashNetworkCreateThenReboot: a network create killed after recording, then a reboot (the run
// dir is a tmpfs: its lock files, pins and runtime state are gone): the next start rolls the create
// back instead of adopting it, and gc leaves no bridge. The test cannot reboot; the boot shows in the
// network's record, re-dated to before this boot started, and in its intent, given another boot's ID.
func TestCrashNetworkCreateThenReboot(t *testing.T) {
	h := newHost(t)
	for _, step := range []string{netmgr.StepNetworkReserved, netmgr.StepNetworkCreated} {
		for _, r := range repairers {
			t.Run(step+"/"+r.name, func(t *testing.T) {
				h.killAt(t, step, "network", "create", "flaky", "--driver", "bridge", "--subnet", "10.47.0.0/24")
				h.redateNetwork(t, "flaky", time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC))
				ents, _ := os.ReadDir(h.runDir)
				for _, e := range ents {
					if err := os.RemoveAll(filepath.Join(h.runDir, e.Name())); err != nil {
						t.Fatal(err)
					}
				}
				h.must(t, r.args...)
				if out := h.must(t, "network", "ls"); strings.Contains(out, "flaky") {
					t.Fatalf("interrupted network create adopted after a reboot:\n%s", out)
				}
				if testutil.HasLink(t, h.ns, "nm-flaky") {
					t.Fatal("interrupted network create left its bridge after a reboot")
				}
				h.must(t, "network", "create", "flaky", "--driver", "bridge", "--subnet", "10.47.0.0/24")
				h.must(t, "network", "rm", "flaky")
			})
		}
	}
}

// pauseAt starts podctl with the test pause hook at step and waits until it stopped there; the
// returned func SIGKILLs it (and is also run at cleanup).
func (h *host) pauseAt(t *testing.T, step string, args ...string) (kill func()) {
	t.Helper()
	c := h.cmd(context.Background(), args...)
	c.Env = append(os.Environ(), "NETMGR_TEST_PAUSE_AT="+step)
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr, err := c.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	kill = func() {
		once.Do(func() {
			_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
			_ = c.Wait()
		})
	}
	t.Cleanup(kill)
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		if strings.Contains(sc.Text(), "paused at "+step) {
			return kill
		}
	}
	kill()
	t.Fatalf("podctl %v never paused at %s", args, step)
	return nil
}

// waitLockWaiter waits until some process is queued on the lock file of name (a "->" line in
// /proc/locks for its inode), for at most 10 s; past that the test goes on, and the waiter may lock
// after it was expected to.
func (h *host) waitLockWaiter(t *testing.T, name string) {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(h.runDir, "locks", name+".lock"), &st); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf(":%d ", st.Ino)
	for i := 0; i < 200; i++ {
		b, _ := os.ReadFile("/proc/locks")
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, "->") && strings.Contains(line, want) {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("no process seen waiting on %s", name)
}

// redateNetwork rewrites the creation time in a network's record, in the state file podctl uses.
func (h *host) redateNetwork(t *testing.T, name string, when time.Time) {
	t.Helper()
	st, err := store.OpenBolt(filepath.Join(h.stateDir, "netmgr.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	kv, err := st.Get(ctx, "networks/"+name)
	if err != nil {
		t.Fatal(err)
	}
	var rec map[string]any
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		t.Fatal(err)
	}
	rec["created"] = when
	b, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	ops := []store.Op{store.Put(kv.Key, b)}
	// The intent names the boot it was recorded in; after a real reboot that is another boot's.
	if ikv, err := st.Get(ctx, "intents/network/"+name); err == nil {
		if kind, _, ok := strings.Cut(string(ikv.Value), " boot="); ok {
			ops = append(ops, store.Put(ikv.Key, []byte(kind+" boot=00000000-0000-0000-0000-000000000000")))
		}
	}
	if err := st.Txn(ctx, nil, ops); err != nil {
		t.Fatal(err)
	}
}

// TestGCReconnectsSandboxes: with a network's bridge deleted by hand and one sandbox's host veth too,
// `podctl gc` re-creates the bridge, puts the first sandbox's host end back on it and makes the second
// sandbox's veth again; both reach their gateway, the report names what was restored, and a second
// gc finds nothing to do.
func TestGCReconnectsSandboxes(t *testing.T) {
	h := newHost(t)
	h.must(t, "network", "create", "cut", "--driver", "bridge", "--subnet", "10.48.0.0/24")
	h.must(t, "sandbox", "create", "a1", "--network", "cut")
	h.must(t, "sandbox", "create", "a2", "--network", "cut")
	var a2 []struct {
		Attachments []struct {
			HostInterface string `json:"host_interface"`
		} `json:"attachments"`
	}
	if err := json.Unmarshal([]byte(h.must(t, "-o", "json", "sandbox", "ls")), &a2); err != nil || len(a2) != 2 {
		t.Fatalf("sandbox ls: %v", err)
	}
	hd, err := h.ns.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer hd.Close()
	for _, name := range []string{"nm-cut", a2[1].Attachments[0].HostInterface} {
		l, err := hd.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := hd.LinkDel(l); err != nil {
			t.Fatal(err)
		}
	}
	var rep netmgr.Report
	if err := json.Unmarshal([]byte(h.must(t, "-o", "json", "gc")), &rep); err != nil {
		t.Fatal(err)
	}
	sort.Strings(rep.Endpoints)
	if !slices.Equal(rep.Restored, []string{"cut"}) || !slices.Equal(rep.Endpoints, []string{"a1/cut", "a2/cut"}) {
		t.Errorf("gc report: restored %v, endpoints %v; want [cut], [a1/cut a2/cut]", rep.Restored, rep.Endpoints)
	}
	for _, s := range []string{"a1", "a2"} {
		ns, err := sandbox.Open(filepath.Join(h.runDir, "netns", s))
		if err != nil {
			t.Fatal(err)
		}
		err = testutil.Ping(ns, "10.48.0.1")
		ns.Close()
		if err != nil {
			t.Errorf("sandbox %s cut off after gc: %v", s, err)
		}
	}
	if out := strings.TrimSpace(h.must(t, "-o", "json", "gc")); out != "{}" {
		t.Errorf("second gc: %s, want {}", out)
	}
	h.must(t, "sandbox", "rm", "a1")
	h.must(t, "sandbox", "rm", "a2")
	h.must(t, "network", "rm", "cut")
	h.assertClean(t)
}
