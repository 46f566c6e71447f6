package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/sandbox"
)

// buildBinaries builds podctl and pause into one temporary directory.
func buildBinaries(t *testing.T) (podctl, pause string) {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("go", "build", "-o", dir+string(os.PathSeparator), ".", "../pause").CombinedOutput()
	if err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return filepath.Join(dir, "podctl"), filepath.Join(dir, "pause")
}

// cli runs a built podctl on a test host (a namespace entered with nsenter) with its own state.
type cli struct {
	t       *testing.T
	bin     string
	host    string
	globals []string
}

func newCLI(t *testing.T, bin string, host *sandbox.NetNS, extra ...string) *cli {
	dir := t.TempDir()
	g := append([]string{"--state-dir", filepath.Join(dir, "state"), "--run-dir", filepath.Join(dir, "run")}, extra...)
	return &cli{t: t, bin: bin, host: host.Path(), globals: g}
}

func (c *cli) runIn(stdin string, args ...string) (stdout, stderr string, status int) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	argv := append([]string{"--net=" + c.host, c.bin}, c.globals...)
	cmd := exec.CommandContext(ctx, "nsenter", append(argv, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = strings.NewReader(stdin), &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		status = ee.ExitCode()
	default:
		c.t.Fatalf("podctl %s: %v", strings.Join(args, " "), err)
	}
	return out.String(), errb.String(), status
}

// ok runs podctl and fails the test unless it succeeds with nothing on stderr.
// waitNoLinks waits, up to a generous deadline, until namespace ns has no link named with prefix.
func waitNoLinks(t *testing.T, ns, prefix string) {
	t.Helper()
	var out []byte
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		var err error
		if out, err = exec.Command("nsenter", "--net="+ns, "ip", "-o", "link", "show").Output(); err != nil {
			t.Fatalf("ip link show in %s: %v", ns, err)
		}
		if !strings.Contains(string(out), ": "+prefix) {
			return
		}
	}
	t.Fatalf("links %s* still in %s after 30s:\n%s", prefix, ns, out)
}

func (c *cli) ok(args ...string) string {
	c.t.Helper()
	out, errs, st := c.runIn("", args...)
	if st != 0 || errs != "" {
		c.t.Fatalf("podctl %s: exit status %d, stderr %q", strings.Join(args, " "), st, errs)
	}
	return out
}

// fails runs podctl and fails the test unless it exits 1 with one "podctl: " line on stderr
// containing want.
func (c *cli) fails(want string, args ...string) {
	c.t.Helper()
	out, errs, st := c.runIn("", args...)
	if st != 1 || strings.Count(errs, "\n") != 1 || !strings.HasPrefix(errs, "podctl: ") || !strings.Contains(errs, want) {
		c.t.Fatalf("podctl %s: exit status %d, stderr %q, stdout %q; want status 1 and one line containing %q",
			strings.Join(args, " "), st, errs, out, want)
	}
}

// sandboxView is what the CLI contract promises `sandbox inspect -o json` prints.
type sandboxView struct {
	Name        string `json:"name"`
	NetNS       string `json:"netns"`
	PausePID    int    `json:"pause_pid"`
	Attachments []struct {
		Network   string  `json:"network"`
		Interface string  `json:"interface"`
		IPv4      *string `json:"ipv4"`
		IPv6      *string `json:"ipv6"`
		MAC       *string `json:"mac"`
	} `json:"attachments"`
}

func (c *cli) inspect(name string) sandboxView {
	c.t.Helper()
	var v sandboxView
	out := c.ok("sandbox", "inspect", name, "-o", "json")
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		c.t.Fatalf("sandbox inspect %s: %v\n%s", name, err, out)
	}
	return v
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

func TestPodctl(t *testing.T) {
	testutil.RequireRoot(t)
	bin, _ := buildBinaries(t)
	host := testutil.NewNS(t, "host")
	c := newCLI(t, bin, host)
	t.Cleanup(func() {
		c.runIn("", "sandbox", "rm", "a", "b")
		c.runIn("", "network", "rm", "n1")
	})

	if out := c.ok("network", "create", "n1", "--subnet", "10.77.0.0/24"); !strings.HasPrefix(out, "n1 ") {
		t.Fatalf("network create printed %q, want a line starting with the name", out)
	}
	c.fails(`invalid subnet "10.77.0.0/33"`, "network", "create", "bad", "--subnet", "10.77.0.0/33")
	c.fails("overlaps", "network", "create", "n2", "--subnet", "10.77.0.128/25")
	c.ok("sandbox", "create", "a", "--network", "n1")
	c.ok("sandbox", "create", "b", "--network", "n1,ip=10.77.0.50")
	c.fails("exists", "sandbox", "create", "a", "--network", "n1")

	a, b := c.inspect("a"), c.inspect("b")
	if a.Name != "a" || a.NetNS == "" || len(a.Attachments) != 1 {
		t.Fatalf("sandbox a = %+v, want name, netns and one attachment", a)
	}
	at := a.Attachments[0]
	if at.Network != "n1" || at.Interface != "eth0" || at.IPv4 == nil || at.IPv6 == nil || at.MAC == nil {
		t.Fatalf("attachment of a = %+v, want network, interface, ipv4, ipv6 and mac", at)
	}
	if p, err := netip.ParsePrefix(*at.IPv4); err != nil || !netip.MustParsePrefix("10.77.0.0/24").Contains(p.Addr()) || p.Bits() != 24 {
		t.Errorf("ipv4 of a = %q, want an address/24 in 10.77.0.0/24", *at.IPv4)
	}
	if *at.IPv6 != "" {
		t.Errorf("ipv6 of a = %q on an IPv4-only network, want \"\"", *at.IPv6)
	}
	if _, err := net.ParseMAC(*at.MAC); err != nil {
		t.Errorf("mac of a: %v", err)
	}
	if got := *b.Attachments[0].IPv4; got != "10.77.0.50/24" {
		t.Errorf("ipv4 of b = %q, want the static 10.77.0.50/24", got)
	}

	// exec runs in the sandbox's namespace, passes stdio through and returns the command's status.
	out := c.ok("sandbox", "exec", "a", "--", "readlink", "/proc/self/ns/net")
	if want := fmt.Sprintf("net:[%d]", inode(t, a.NetNS)); strings.TrimSpace(out) != want {
		t.Errorf("exec readlink /proc/self/ns/net = %q, want %q", strings.TrimSpace(out), want)
	}
	if out, _, st := c.runIn("hello\n", "sandbox", "exec", "a", "--", "cat"); st != 0 || out != "hello\n" {
		t.Errorf("exec cat: status %d, stdout %q; want 0 and stdin echoed", st, out)
	}
	if _, errs, st := c.runIn("", "sandbox", "exec", "a", "--", "sh", "-c", "echo oops >&2; exit 3"); st != 3 || errs != "oops\n" {
		t.Errorf("exec exit 3: status %d, stderr %q; want 3 and the command's stderr only", st, errs)
	}
	if _, err := exec.LookPath("busybox"); err == nil {
		c.ok("sandbox", "exec", "a", "--", "busybox", "ping", "-c1", "-W2", "10.77.0.50")
	} else {
		t.Log("busybox not found; skipping ping between sandboxes")
	}

	var nets []struct {
		Name      string   `json:"name"`
		Driver    string   `json:"driver"`
		Subnets   []string `json:"subnets"`
		Gateways  []string `json:"gateways"`
		Sandboxes []string `json:"sandboxes"`
	}
	if err := json.Unmarshal([]byte(c.ok("network", "ls", "-o", "json")), &nets); err != nil {
		t.Fatal(err)
	}
	if len(nets) != 1 || nets[0].Driver != "bridge" || fmt.Sprint(nets[0].Subnets) != "[10.77.0.0/24]" ||
		fmt.Sprint(nets[0].Sandboxes) != "[a b]" || len(nets[0].Gateways) != 1 {
		t.Errorf("network ls = %+v, want n1 (bridge, 10.77.0.0/24, one gateway) with sandboxes a and b", nets)
	}
	lines := strings.Split(strings.TrimSpace(c.ok("sandbox", "ls")), "\n")
	if len(lines) != 3 || strings.Fields(lines[0])[0] != "NAME" || strings.Fields(lines[1])[0] != "a" {
		t.Errorf("sandbox ls = %q, want a header and rows a, b", lines)
	}

	c.fails("in use", "network", "rm", "n1")
	c.ok("sandbox", "rm", "a", "b")
	c.ok("sandbox", "rm", "a") // idempotent
	if _, err := os.Stat(a.NetNS); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("netns pin of a after rm: %v, want it gone", err)
	}
	c.ok("network", "rm", "n1")
	c.fails("not found", "network", "rm", "n1")
	// rm leaves a veth whose peer is in the namespace it unpins to die with that namespace, which the
	// kernel destroys in the background: under load gc came first and rightly took them for leaks.
	waitNoLinks(t, c.host, "nmv")
	c.ok("gc")
	if out := strings.TrimSpace(c.ok("sandbox", "ls", "-o", "json")); out != "[]" {
		t.Errorf("sandbox ls after rm = %s, want []", out)
	}
	if out := strings.TrimSpace(c.ok("network", "ls", "-o", "json")); out != "[]" {
		t.Errorf("network ls after rm = %s, want []", out)
	}
}

func TestPodctlPause(t *testing.T) {
	testutil.RequireRoot(t)
	bin, pause := buildBinaries(t)
	host := testutil.NewNS(t, "host")
	// A copy of podctl alone in a directory, so that only --pause-binary can find the pause binary.
	lone := filepath.Join(t.TempDir(), "podctl")
	if err := exec.Command("cp", bin, lone).Run(); err != nil {
		t.Fatal(err)
	}
	c := newCLI(t, lone, host, "--pause-binary", pause)
	pid := 0
	t.Cleanup(func() {
		c.runIn("", "sandbox", "rm", "p")
		// If the test failed with the pause process still up, stop it, but only if it is ours.
		if exe, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe"); pid > 0 && err == nil && exe == pause {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	c.ok("sandbox", "create", "p", "--pause")
	v := c.inspect("p")
	if pid = v.PausePID; pid <= 0 {
		t.Fatalf("sandbox p has pause_pid %d, want a process", pid)
	}
	proc := "/proc/" + strconv.Itoa(pid)
	if exe, err := os.Readlink(proc + "/exe"); err != nil || exe != pause {
		t.Fatalf("pause process %d runs %q (%v), want %s", pid, exe, err, pause)
	}
	if got, want := inode(t, proc+"/ns/net"), inode(t, v.NetNS); got != want {
		t.Errorf("pause process is in netns %d, want the sandbox's %d", got, want)
	}

	c.ok("sandbox", "rm", "p")
	for deadline := time.Now().Add(10 * time.Second); alive(pid); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("pause process %d still running after sandbox rm", pid)
		}
	}

	// Without --pause-binary and no pause next to podctl, --pause is refused before anything is made.
	bare := &cli{t: t, bin: lone, host: c.host, globals: c.globals[:4]}
	bare.fails("no pause binary", "sandbox", "create", "q", "--pause")
}

// alive reports whether pid is a process that has not exited (a zombie has).
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || !strings.HasPrefix(s[i+1:], " Z")
}

// runAt runs podctl on host from directory dir and returns its stdout, stderr and exit status.
func runAt(t *testing.T, dir, bin string, host *sandbox.NetNS, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + host.Path(), bin}, args...)...)
	cmd.Dir = dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("podctl %s: %v", strings.Join(args, " "), err)
	}
	return out.String(), errb.String(), cmd.ProcessState.ExitCode()
}

// TestPodctlRelativeDirs: relative --state-dir and --run-dir used to be recorded as relative netns
// paths, so that exec failed and gc destroyed the live sandbox when run from another directory
// (FAULTS.md §10).
func TestPodctlRelativeDirs(t *testing.T) {
	testutil.RequireRoot(t)
	bin, _ := buildBinaries(t)
	host := testutil.NewNS(t, "host")
	top := t.TempDir()
	a, b := filepath.Join(top, "a"), filepath.Join(top, "b")
	for _, d := range []string{a, b} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	rel := []string{"--state-dir", "st", "--run-dir", "rn"}
	abs := []string{"--state-dir", filepath.Join(a, "st"), "--run-dir", filepath.Join(a, "rn")}
	must := func(dir string, args ...string) string {
		t.Helper()
		out, errs, st := runAt(t, dir, bin, host, args...)
		if st != 0 || errs != "" {
			t.Fatalf("podctl %s (in %s): status %d, stderr %q", strings.Join(args, " "), dir, st, errs)
		}
		return out
	}
	t.Cleanup(func() {
		// From a as well: without the fix the record holds the relative pin path.
		runAt(t, a, bin, host, append(rel, "sandbox", "rm", "s1")...)
		runAt(t, b, bin, host, append(abs, "sandbox", "rm", "s1")...)
		runAt(t, b, bin, host, append(abs, "network", "rm", "n1")...)
	})
	must(a, append(rel, "network", "create", "n1", "--subnet", "10.79.0.0/24")...)
	must(a, append(rel, "sandbox", "create", "s1", "--network", "n1")...)
	var v sandboxView
	if err := json.Unmarshal([]byte(must(a, append(rel, "sandbox", "inspect", "s1", "-o", "json")...)), &v); err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(a, "rn", "netns", "s1"); v.NetNS != want {
		t.Errorf("netns of s1 recorded as %q, want %q", v.NetNS, want)
	}
	must(b, append(abs, "sandbox", "exec", "s1", "--", "true")...)
	var rep struct {
		Stale []string `json:"stale"`
	}
	if err := json.Unmarshal([]byte(must(b, append(abs, "gc", "-o", "json")...)), &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Stale) != 0 {
		t.Errorf("gc from another directory removed %v as stale", rep.Stale)
	}
	must(b, append(abs, "sandbox", "exec", "s1", "--", "true")...)
}

// TestPodctlCorruptState: a damaged state file used to crash podctl with a bbolt panic or SIGBUS
// (exit 2, a trace), or, emptied, to be taken for a new store (FAULTS.md §6). Every command must now
// print one line naming the file, exit 1, and leave the file as it was.
func TestPodctlCorruptState(t *testing.T) {
	testutil.RequireRoot(t)
	bin, _ := buildBinaries(t)
	host := testutil.NewNS(t, "host")
	c := newCLI(t, bin, host)
	t.Cleanup(func() { c.runIn("", "network", "rm", "n1") })
	c.ok("network", "create", "n1", "--subnet", "10.80.0.0/24")
	stateDB, runtimeDB := filepath.Join(c.globals[1], "netmgr.db"), filepath.Join(c.globals[3], "runtime.db")

	every := [][]string{{"network", "ls"}, {"network", "ls", "-o", "json"}, {"network", "inspect", "n1"},
		{"network", "rm", "n9"}, {"network", "create", "n2", "--subnet", "10.81.0.0/24"},
		{"sandbox", "ls"}, {"sandbox", "inspect", "s1"}, {"sandbox", "rm", "s1"},
		{"sandbox", "create", "s1", "--network", "n1"}, {"sandbox", "exec", "s1", "--", "true"},
		{"sandbox", "attach", "s1", "--network", "n1"}, {"sandbox", "detach", "s1", "--network", "n1"}, {"gc"}}
	// Overwritten pages are found only when read: the commands that read networks.
	readers := [][]string{{"network", "ls"}, {"network", "inspect", "n1"}, {"gc"}}
	for _, tt := range []struct {
		name   string
		file   string
		damage func(path string) error
		cmds   [][]string
	}{
		{"netmgr.db emptied", stateDB, func(p string) error { return os.Truncate(p, 0) }, every},
		{"netmgr.db truncated", stateDB, func(p string) error { return os.Truncate(p, 10000) }, every},
		{"netmgr.db pages 2-5 overwritten", stateDB, func(p string) error { return scribble(p, 2*4096, 4*4096) }, readers},
		{"runtime.db truncated to 100 bytes", runtimeDB, func(p string) error { return os.Truncate(p, 100) }, every},
	} {
		t.Run(tt.name, func(t *testing.T) {
			good, err := os.ReadFile(tt.file)
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				if err := os.WriteFile(tt.file, good, 0o600); err != nil {
					t.Fatal(err)
				}
			}()
			if err := tt.damage(tt.file); err != nil {
				t.Fatal(err)
			}
			bad, _ := os.ReadFile(tt.file)
			sub := *c
			sub.t = t
			for _, args := range tt.cmds {
				sub.fails("state file "+tt.file+" is corrupt", args...)
			}
			if now, _ := os.ReadFile(tt.file); !bytes.Equal(now, bad) {
				t.Errorf("%s changed by the failed commands", tt.file)
			}
		})
	}
	// Put back, everything works again.
	if out := c.ok("network", "ls", "-o", "json"); !strings.Contains(out, `"n1"`) {
		t.Errorf("network ls after restoring the file: %s", out)
	}
}

// scribble overwrites n bytes of path at off with random bytes.
func scribble(path string, off int64, n int) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, n)
	if _, err := rand.Read(buf); err != nil {
		return err
	}
	_, err = f.WriteAt(buf, off)
	return err
}

// TestPodctlSIGTERMWhileWaiting: a podctl waiting for the store's lock, held by a stuck process, used
// to ignore SIGTERM until the lock was freed (FAULTS.md §13). It must exit at once, status 1, with one
// line saying what it waited for.
func TestPodctlSIGTERMWhileWaiting(t *testing.T) {
	testutil.RequireRoot(t)
	bin, _ := buildBinaries(t)
	host := testutil.NewNS(t, "host")
	c := newCLI(t, bin, host)
	c.ok("network", "ls")
	lockPath := filepath.Join(c.globals[1], "netmgr.db.lock")
	lf, err := os.OpenFile(lockPath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("nsenter", append(append([]string{"--net=" + c.host, bin}, c.globals...), "network", "ls")...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	defer func() {
		_ = cmd.Process.Kill()
		<-done
	}()
	// nsenter execs podctl in place: its pid is podctl's. Wait until it is queued for the lock.
	for deadline := time.Now().Add(time.Minute); !waitingForLock(cmd.Process.Pid); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("podctl not waiting for %s after a minute; stderr %q", lockPath, errb.String())
		}
	}
	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatalf("podctl still running 20s after SIGTERM, waiting for the lock")
	}
	t.Logf("exited %v after SIGTERM: %q", time.Since(start).Round(time.Millisecond), errb.String())
	if st := cmd.ProcessState.ExitCode(); st != 1 || strings.Count(errb.String(), "\n") != 1 ||
		!strings.HasPrefix(errb.String(), "podctl: ") || !strings.Contains(errb.String(), "context canceled") {
		t.Errorf("status %d, stderr %q; want 1 and one line ending in context canceled", st, errb.String())
	}
}

// waitingForLock reports whether process pid is queued for a flock (a "->" line of /proc/locks).
func waitingForLock(pid int) bool {
	b, err := os.ReadFile("/proc/locks")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) >= 6 && f[1] == "->" && f[2] == "FLOCK" && f[5] == strconv.Itoa(pid) {
			return true
		}
	}
	return false
}
