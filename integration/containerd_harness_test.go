package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/netmgr/netmgr/netmgr/pod/containerd"
)

// podHost is a test host with a private containerd: pods run through podctl under nsenter in the
// host's namespace, containerd runs in the root namespace (it needs the real cgroup mounts), and each
// test uses a containerd namespace of its own.
type podHost struct {
	*host
	ctd    *Containerd
	ctdNS  string
	rootfs string
}

// newPodHost starts a containerd for the test and builds a busybox root filesystem. It skips without
// root, and without a built containerd unless running in CI, where that is a failure.
func newPodHost(t *testing.T) *podHost {
	t.Helper()
	h := newHost(t)
	if _, _, err := ContainerdBinaries(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI must run the containerd tests: %v", err)
		}
		t.Skipf("skipping containerd tests: %v", err)
	}
	rootfs := filepath.Join(t.TempDir(), "rootfs")
	if err := BusyboxRootFS(rootfs); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	ctd, err := StartContainerd(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	ph := &podHost{host: h, ctd: ctd, ctdNS: "nmtest-" + hex.EncodeToString(b[:]), rootfs: rootfs}
	ctd.UseNamespace(ph.ctdNS)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("containerd log:\n%s", lastLines(ctd.Log(), 40))
		}
		if err := ctd.Stop(); err != nil {
			t.Errorf("stop containerd: %v", err)
		}
	})
	// Registered after containerd's, so it runs before containerd stops.
	t.Cleanup(func() {
		for _, p := range ph.pods(t) {
			if _, err := ph.pod(context.Background(), "rm", p.Name); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
	})
	return ph
}

// pod runs `podctl pod ARGS...` against the test's containerd.
func (ph *podHost) pod(ctx context.Context, args ...string) (string, error) {
	full := append([]string{"--containerd", ph.ctd.Address, "pod", "--containerd-namespace", ph.ctdNS}, args...)
	return ph.podctl(ctx, full...)
}

func (ph *podHost) mustPod(t *testing.T, args ...string) string {
	t.Helper()
	out, err := ph.pod(context.Background(), args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

type containerJSON struct {
	Name     string `json:"name"`
	ID       string `json:"id"`
	State    string `json:"state"`
	PID      int    `json:"pid"`
	ExitCode int    `json:"exit_code"`
}

type podJSON struct {
	sandboxJSON
	PausePID   int               `json:"pause_pid"`
	Labels     map[string]string `json:"labels"`
	IPs        []string          `json:"ips"`
	Containers []containerJSON   `json:"containers"`
}

func (ph *podHost) pods(t *testing.T) []podJSON {
	t.Helper()
	out, err := ph.pod(context.Background(), "-o", "json", "ls")
	if err != nil {
		t.Errorf("pod ls: %v", err)
		return nil
	}
	var ps []podJSON
	if err := json.Unmarshal([]byte(out), &ps); err != nil {
		t.Fatalf("pod ls: %v: %s", err, out)
	}
	return ps
}

func (ph *podHost) inspect(t *testing.T, name string) podJSON {
	t.Helper()
	var p podJSON
	out := ph.mustPod(t, "-o", "json", "inspect", name)
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		t.Fatalf("pod inspect: %v: %s", err, out)
	}
	return p
}

// manifest writes a Pod manifest to a file and returns its path.
func (ph *podHost) manifest(t *testing.T, name, yaml string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name+".yaml")
	if err := os.WriteFile(p, []byte(strings.ReplaceAll(yaml, "ROOTFS", ph.rootfs)), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// assertPodsClean checks that containerd holds no container, task or snapshot of the test's
// namespace, no shim serves it, and no per-container directory, mount, sandbox, address or host
// interface is left.
func (ph *podHost) assertPodsClean(t *testing.T, networks ...string) {
	t.Helper()
	if ps := ph.pods(t); len(ps) != 0 {
		t.Errorf("pods left: %+v", ps)
	}
	ctx := namespaces.WithNamespace(context.Background(), ph.ctdNS)
	rt, err := containerd.New(ctx, ph.ctd.Address, containerd.WithNamespace(ph.ctdNS))
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	c := rt.Client()
	if cs, err := c.Containers(ctx); err != nil || len(cs) != 0 {
		t.Errorf("containerd containers left: %d (%v)", len(cs), err)
	}
	if ts, err := c.TaskService().List(ctx, nil); err != nil || len(ts.Tasks) != 0 {
		t.Errorf("containerd tasks left: %v (%v)", ts, err)
	}
	for _, sn := range []string{"overlayfs", "native"} {
		n := 0
		err := c.SnapshotService(sn).Walk(ctx, func(context.Context, snapshots.Info) error { n++; return nil })
		if err != nil || n != 0 {
			t.Errorf("%s snapshots left: %d (%v)", sn, n, err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(ph.ctd.Shims()) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if s := ph.ctd.Shims(); len(s) > 0 {
		t.Errorf("shims still running: %v", s)
	}
	if left, _ := filepath.Glob(filepath.Join(ph.stateDir, "pods", ph.ctdNS, "*")); len(left) > 0 {
		t.Errorf("container directories left: %v", left)
	}
	if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(b), ph.ctd.Dir+"/") || strings.Contains(string(b), ph.stateDir) {
		t.Errorf("mounts left under %s or %s", ph.ctd.Dir, ph.stateDir)
	}
	ph.assertClean(t, networks...)
}
