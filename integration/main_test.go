package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/sandbox"
)

var podctlBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "netmgr-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	podctlBin = filepath.Join(dir, "podctl")
	// netmgr_testhooks: killAt stops podctl at a named step through NETMGR_TEST_PAUSE_AT, which only
	// such a build reads.
	out, err := exec.Command("go", "build", "-tags", "netmgr_testhooks", "-o", podctlBin, "github.com/netmgr/netmgr/examples/podctl").CombinedOutput()
	if err == nil {
		// podctl hands `pod ...` to podctl-pod, found next to it.
		var more []byte
		more, err = exec.Command("go", "build", "-tags", "podctl_pod,netmgr_testhooks", "-o", filepath.Join(dir, "podctl-pod"), "github.com/netmgr/netmgr/examples/podctl").CombinedOutput()
		out = append(out, more...)
	}
	if err == nil {
		// podctl finds the pause binary next to itself.
		var more []byte
		more, err = exec.Command("go", "build", "-o", filepath.Join(dir, "pause"), "github.com/netmgr/netmgr/examples/pause").CombinedOutput()
		out = append(out, more...)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "build podctl: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// host is one test host: a namespace and podctl's state and run dirs for it.
type host struct {
	ns       *sandbox.NetNS
	stateDir string
	runDir   string
}

func newHost(t *testing.T) *host {
	t.Helper()
	testutil.RequireRoot(t)
	if _, err := exec.LookPath("nsenter"); err != nil {
		t.Skip("needs nsenter (util-linux)")
	}
	h := &host{ns: testutil.NewNS(t, "host"), stateDir: t.TempDir(), runDir: t.TempDir()}
	t.Cleanup(func() {
		// Remove whatever the test left, then unmount stray pins so the temp dir can go.
		if out, err := h.podctl(context.Background(), "-o", "json", "sandbox", "ls"); err == nil {
			var sbs []struct {
				Name string `json:"name"`
				Join string `json:"join"`
			}
			_ = json.Unmarshal([]byte(out), &sbs)
			for pass := 0; pass < 2; pass++ {
				for _, s := range sbs {
					if (pass == 0) == (s.Join != "") {
						_, _ = h.podctl(context.Background(), "sandbox", "rm", s.Name)
					}
				}
			}
		}
		pins, _ := filepath.Glob(filepath.Join(h.runDir, "netns", "*"))
		for _, p := range pins {
			_ = sandbox.Remove(p)
		}
	})
	return h
}

func (h *host) cmd(ctx context.Context, args ...string) *exec.Cmd {
	full := append([]string{"--net=" + h.ns.Path(), podctlBin, "--state-dir", h.stateDir, "--run-dir", h.runDir}, args...)
	return exec.CommandContext(ctx, "nsenter", full...)
}

// podctl runs one podctl command on the host and returns stdout, or an error carrying stderr.
func (h *host) podctl(ctx context.Context, args ...string) (string, error) {
	c := h.cmd(ctx, args...)
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		return stdout.String(), fmt.Errorf("podctl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

func (h *host) must(t *testing.T, args ...string) string {
	t.Helper()
	out, err := h.podctl(context.Background(), args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

type attachment struct {
	Network   string `json:"network"`
	Interface string `json:"interface"`
	IPv4      string `json:"ipv4"`
	IPv6      string `json:"ipv6"`
	MAC       string `json:"mac"`
}

type sandboxJSON struct {
	Name        string       `json:"name"`
	NetNS       string       `json:"netns"`
	Attachments []attachment `json:"attachments"`
}

func (h *host) sandboxes(t *testing.T) []sandboxJSON {
	t.Helper()
	var out []sandboxJSON
	if err := json.Unmarshal([]byte(h.must(t, "-o", "json", "sandbox", "ls")), &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// killAt starts podctl with the test pause hook at step, waits until it reports it stopped there, and
// SIGKILLs it.
func (h *host) killAt(t *testing.T, step string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := h.cmd(ctx, args...)
	c.Env = append(os.Environ(), "NETMGR_TEST_PAUSE_AT="+step)
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr, err := c.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stderr)
	paused := false
	var lines []string
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if strings.Contains(sc.Text(), "paused at "+step) {
			paused = true
			break
		}
	}
	// nsenter execs podctl in place, so the process we started is podctl; kill its group to be sure.
	_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
	_ = c.Wait()
	if !paused {
		t.Fatalf("podctl %v never paused at %s; stderr: %v", args, step, lines)
	}
}
