package main

import (
	"bytes"
	"context"
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
