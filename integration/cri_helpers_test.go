package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/shim"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// criNamespace is the containerd namespace CRI keeps everything in.
const criNamespace = "k8s.io"

// criCall bounds every CRI request.
const criCall = 30 * time.Second

// criHost is a test host running a private containerd with its CRI plugin: the daemon runs inside the
// host's network namespace (`nsenter --net`), so the CNI plugins it calls — netmgr-cni, configured
// from a conf dir of the test's own — create their bridge and rules there. Pods are created through
// the CRI gRPC API, as a kubelet would.
type criHost struct {
	*host        // the test host namespace, and netmgr-cni's state and run dirs (podctl reads them)
	t            *testing.T
	ctd          *Containerd
	rt           runtimeapi.RuntimeServiceClient
	images       runtimeapi.ImageServiceClient
	ctr          *client.Client // containerd's own API, for what CRI does not show
	network      string         // the CNI network name (and netmgr network)
	cgroupParent string         // the pods' cgroup parent: removed at cleanup if runc left it
	logDir       string
	pauseRef     string
	busyboxRef   string
	ids          []string // every pod sandbox and container CRI created
}

// criPod is one pod sandbox with one busybox container.
type criPod struct {
	name      string
	id        string // the pod sandbox ID (CNI's container ID)
	ip        string
	container string
	config    *runtimeapi.PodSandboxConfig
}

// requireContainerd skips without a built containerd, except in CI, where that fails the test.
func requireContainerd(t *testing.T) {
	t.Helper()
	if _, _, err := ContainerdBinaries(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI must run the containerd tests: %v", err)
		}
		t.Skipf("skipping containerd tests: %v", err)
	}
}

// newCRIHost starts containerd with CRI and netmgr-cni in a new test host namespace and imports the
// sandbox (pause) and busybox images into CRI's namespace. Everything is torn down at cleanup, also
// when the test fails: pods through CRI, then the daemon, its shims, mounts and directories, then
// cgroups and CNI cache directories the run created.
// editConfig, if given, changes the daemon's configuration (the NRI tests enable NRI with it).
func newCRIHost(t *testing.T, network, subnet string, editConfig ...func(h *host, dir, config string) string) *criHost {
	t.Helper()
	h := newHost(t) // skips without root or nsenter
	requireContainerd(t)
	bin := buildCNIPlugin(t) // skips without Debian's CNI plugins (loopback is needed by CRI)
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	tag := hex.EncodeToString(rnd[:])
	c := &criHost{
		host: h, t: t, network: network,
		cgroupParent: "nmtest-cri-" + tag,
		logDir:       t.TempDir(),
		pauseRef:     "localhost/netmgr-test/pause:" + tag,
		busyboxRef:   "localhost/netmgr-test/busybox:" + tag,
	}
	pause := pauseImage(t, c.pauseRef)
	busybox, err := busyboxImage(t, c.busyboxRef, "hello from netmgr\n")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal(err)
		}
		t.Skip(err)
	}

	confDir := t.TempDir()
	conf := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": %q, "plugins": [
  {"type": "netmgr-cni", "driver": "bridge", "subnets": [%q], "stateDir": %q, "runDir": %q}
]}`, network, subnet, h.stateDir, h.runDir)
	if err := os.WriteFile(filepath.Join(confDir, "10-"+network+".conflist"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}

	// What CRI and the CNI library may create outside the daemon's directory: CNI's result cache
	// (go-cni has no option for it) and, without netns_mounts_under_state_dir, /var/run/netns.
	outside := map[string]bool{}
	for _, p := range []string{"/var/lib/cni", "/var/lib/cni/results", "/var/run/netns"} {
		_, err := os.Stat(p)
		outside[p] = err == nil
	}
	ctd, err := StartContainerdWith(context.Background(), ContainerdOptions{
		NetNS: h.ns.Path(),
		Config: func(dir string) string {
			cfg := criContainerdConfig(dir, []string{bin, debianCNI}, confDir, c.pauseRef)
			for _, edit := range editConfig {
				cfg = edit(h, dir, cfg)
			}
			return cfg
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	c.ctd = ctd
	// runc's state of CRI's namespace, and the pods' cgroup parent, go with the daemon.
	ctd.UseNamespace(criNamespace)
	ctd.UseNamespace(c.cgroupParent)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("containerd log:\n%s", lastLines(ctd.Log(), 60))
		}
		if err := ctd.Stop(); err != nil {
			t.Errorf("stop containerd: %v", err)
			// The daemon did not tear its containers down (it died, or its shims outlived it):
			// remove what runc and the killed shims left of ours, then let Stop tidy up again.
			c.removeRuncLeftovers()
			_ = ctd.Stop()
		}
		// Pod cgroups runc did not get to remove (a killed shim): leaves first, then the parent
		// (Stop removes the parent when empty; this catches what it could not).
		removeCgroupTree(t, c.cgroupParent)
		// libcni's result cache: CNI DEL removes each pod's entries; remove (and report) what a
		// failed teardown left, then the directories if this run created them.
		for _, id := range c.ids {
			left, _ := filepath.Glob("/var/lib/cni/results/*-" + id + "-*")
			for _, f := range left {
				t.Errorf("CNI result cache entry left: %s (removed)", f)
				_ = os.Remove(f)
			}
		}
		for _, p := range []string{"/var/lib/cni/results", "/var/lib/cni"} {
			if !outside[p] {
				_ = os.Remove(p) // only if empty
			}
		}
		if _, err := os.Stat("/var/run/netns"); err == nil && !outside["/var/run/netns"] {
			t.Errorf("/var/run/netns was created: pod namespaces were pinned outside the daemon's state dir")
		}
	})

	// The CNI plugins run in the daemon's network namespace: make sure it is the test host's before
	// any pod exists, so that no bridge or rule can land in the machine's namespace.
	want, err := h.ns.Inode()
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", ctd.cmd.Process.Pid), &st); err != nil || st.Ino != want {
		t.Fatalf("containerd is not in the test host namespace (inode %d, want %d): %v", st.Ino, want, err)
	}

	conn, err := grpc.NewClient("unix://"+ctd.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	c.rt, c.images = runtimeapi.NewRuntimeServiceClient(conn), runtimeapi.NewImageServiceClient(conn)
	ctr, err := client.New(ctd.Address, client.WithDefaultNamespace(criNamespace))
	if err != nil {
		conn.Close()
		t.Fatal(err)
	}
	c.ctr = ctr
	t.Cleanup(func() {
		ctr.Close()
		conn.Close()
	})
	// Registered last, so it runs first, while the daemon still answers.
	t.Cleanup(c.removeAllPods)

	c.waitCRI()
	c.importImage(pause)
	c.importImage(busybox)
	return c
}

// criContainerdConfig is a containerd 2.x configuration with the CRI plugin on: CNI from binDirs and
// confDir, the given sandbox image, pod namespaces pinned under the daemon's state dir, and nothing
// else the tests do not use (NRI, CDI, other snapshotters, tracing).
func criContainerdConfig(dir string, binDirs []string, confDir, sandboxImage string) string {
	quoted := make([]string, len(binDirs))
	for i, d := range binDirs {
		quoted[i] = fmt.Sprintf("%q", d)
	}
	return fmt.Sprintf(`version = 3
root = %[1]q
state = %[2]q
disabled_plugins = [
  "io.containerd.nri.v1.nri",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.blockfile", "io.containerd.snapshotter.v1.erofs",
  "io.containerd.differ.v1.erofs", "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing", "io.containerd.internal.v1.opt",
]
[grpc]
  address = %[3]q
[ttrpc]
  address = %[4]q
[debug]
  level = "info"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = %[5]q

[plugins.'io.containerd.cri.v1.runtime']
  enable_cdi = false
  netns_mounts_under_state_dir = true
  # CRI gives sandboxes oom_score_adj -998, which takes CAP_SYS_RESOURCE; where the caller lacks it
  # (as on the project's machines), keep the caller's value instead of failing in runc.
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = [%[6]s]
    conf_dir = %[7]q
    max_conf_num = 1

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), filepath.Join(dir, "containerd.sock"),
		filepath.Join(dir, "containerd.sock.ttrpc"), sandboxImage, strings.Join(quoted, ", "), confDir)
}

// ctx is a context for one CRI or containerd call, in CRI's containerd namespace.
func (c *criHost) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(namespaces.WithNamespace(context.Background(), criNamespace), criCall)
}

// waitCRI waits until the CRI service answers and reports its network ready (it has loaded the conf
// dir with netmgr-cni).
func (c *criHost) waitCRI() {
	c.t.Helper()
	var last string
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		ctx, cancel := c.ctx()
		st, err := c.rt.Status(ctx, &runtimeapi.StatusRequest{})
		cancel()
		if err != nil {
			last = err.Error()
			continue
		}
		ready := map[string]bool{}
		for _, cond := range st.GetStatus().GetConditions() {
			ready[cond.Type] = cond.Status
			if !cond.Status {
				last = cond.Type + ": " + cond.Reason + " " + cond.Message
			}
		}
		if ready[runtimeapi.RuntimeReady] && ready[runtimeapi.NetworkReady] {
			return
		}
	}
	c.t.Fatalf("CRI not ready within 20s: %s", last)
}

// importImage imports img into CRI's namespace through the containerd client, unpacks it for the
// snapshotter CRI uses, and waits until CRI's image service knows it (it learns of images from
// containerd's events).
func (c *criHost) importImage(img ociImage) {
	c.t.Helper()
	tarball, err := img.layoutTar()
	if err != nil {
		c.t.Fatal(err)
	}
	ctx, cancel := c.ctx()
	defer cancel()
	imgs, err := c.ctr.Import(ctx, bytes.NewReader(tarball))
	if err != nil {
		c.t.Fatalf("import %s: %v", img.ref, err)
	}
	if len(imgs) != 1 || imgs[0].Name != img.ref {
		c.t.Fatalf("import %s: got %+v", img.ref, imgs)
	}
	if err := client.NewImage(c.ctr, imgs[0]).Unpack(ctx, "overlayfs"); err != nil {
		c.t.Fatalf("unpack %s: %v", img.ref, err)
	}
	for ctx.Err() == nil {
		st, err := c.images.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: img.ref}})
		if err == nil && st.GetImage() != nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.t.Fatalf("CRI does not list image %s", img.ref)
}

// sandboxConfig is what a kubelet would send for a plain pod: pod network namespace, the test's
// cgroup parent, logs under the test's directory.
func (c *criHost) sandboxConfig(name string) *runtimeapi.PodSandboxConfig {
	ns := &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_POD, Pid: runtimeapi.NamespaceMode_CONTAINER, Ipc: runtimeapi.NamespaceMode_POD}
	return &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "default", Uid: "uid-" + name + "-" + c.cgroupParent},
		Hostname:     name,
		LogDirectory: filepath.Join(c.logDir, name),
		Labels:       map[string]string{"app": name},
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent:    "/" + c.cgroupParent,
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: ns},
		},
	}
}

// runPod runs a pod sandbox and, in it, a busybox container sleeping, as a kubelet would: the image is
// present, so nothing is pulled.
func (c *criHost) runPod(name string) *criPod {
	c.t.Helper()
	p, err := c.runPodAnnotated(name, nil)
	if err != nil {
		c.t.Fatalf("RunPodSandbox %s: %v", name, err)
	}
	return p
}

func (c *criHost) exec(p *criPod, cmd ...string) (string, error) {
	ctx, cancel := c.ctx()
	defer cancel()
	r, err := c.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: p.container, Cmd: cmd, Timeout: 10})
	if err != nil {
		return "", fmt.Errorf("ExecSync %v in %s: %w", cmd, p.name, err)
	}
	out := string(r.Stdout) + string(r.Stderr)
	if r.ExitCode != 0 {
		return out, fmt.Errorf("%v in %s: exit status %d: %s", cmd, p.name, r.ExitCode, strings.TrimSpace(out))
	}
	return out, nil
}

// ping pings ip from the pod, up to three times: the first echo may be lost to neighbour resolution
// on a loaded machine.
func (c *criHost) ping(p *criPod, ip string) error {
	var err error
	for try := 0; try < 3; try++ {
		if _, err = c.exec(p, "ping", "-c", "1", "-W", "2", ip); err == nil {
			return nil
		}
	}
	return err
}

// removePod tears the pod down as a kubelet does: stop and remove the container, stop and remove
// the sandbox (CNI DEL runs at the sandbox stop).
func (c *criHost) removePod(p *criPod) error {
	ctx, cancel := c.ctx()
	defer cancel()
	if _, err := c.rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: p.container, Timeout: 1}); err != nil {
		return fmt.Errorf("StopContainer in %s: %w", p.name, err)
	}
	if _, err := c.rt.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: p.container}); err != nil {
		return fmt.Errorf("RemoveContainer in %s: %w", p.name, err)
	}
	if _, err := c.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.id}); err != nil {
		return fmt.Errorf("StopPodSandbox %s: %w", p.name, err)
	}
	if _, err := c.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.id}); err != nil {
		return fmt.Errorf("RemovePodSandbox %s: %w", p.name, err)
	}
	return nil
}

// removeAllPods removes every container and pod CRI still has (a failed test's), so that CNI DEL
// runs and runc removes the cgroups, before the daemon stops.
func (c *criHost) removeAllPods() {
	ctx, cancel := c.ctx()
	defer cancel()
	if cs, err := c.rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{}); err == nil {
		for _, ct := range cs.Containers {
			if _, err := c.rt.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: ct.Id}); err != nil {
				c.t.Errorf("cleanup: RemoveContainer %s: %v", ct.Id, err)
			}
		}
	}
	if ps, err := c.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{}); err == nil {
		for _, p := range ps.Items {
			if _, err := c.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.Id}); err != nil {
				c.t.Errorf("cleanup: StopPodSandbox %s: %v", p.Id, err)
			}
			if _, err := c.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.Id}); err != nil {
				c.t.Errorf("cleanup: RemovePodSandbox %s: %v", p.Id, err)
			}
		}
	}
}

// cniSandbox is a sandbox netmgr-cni recorded, as `podctl sandbox ls -o json` prints it.
type cniSandbox struct {
	Name        string            `json:"name"`
	NetNS       string            `json:"netns"`
	Labels      map[string]string `json:"labels"`
	Attachments []attachment      `json:"attachments"`
}

// cniSandboxes lists what netmgr-cni recorded, through podctl on the test host with the plugin's
// state and run dirs.
func (c *criHost) cniSandboxes() []cniSandbox {
	c.t.Helper()
	var out []cniSandbox
	if err := json.Unmarshal([]byte(c.must(c.t, "-o", "json", "sandbox", "ls")), &out); err != nil {
		c.t.Fatal(err)
	}
	return out
}

// netnsDir is where CRI pins pod network namespaces (netns_mounts_under_state_dir).
func (c *criHost) netnsDir() string {
	return filepath.Join(c.ctd.Dir, "state", "io.containerd.grpc.v1.cri", "netns")
}

// assertNothingLeft checks, after every pod was removed through CRI, that neither CRI, containerd,
// netmgr nor the kernel holds anything of them: no pod or container in CRI; no container, task,
// sandbox or container snapshot in containerd, no shim; no netmgr sandbox, and netmgr's full repair
// finds nothing to free (addresses, pins, links, ports); no host interface; no pinned namespace.
func (c *criHost) assertNothingLeft() {
	c.t.Helper()
	t := c.t
	ctx, cancel := c.ctx()
	defer cancel()
	if ps, err := c.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{}); err != nil || len(ps.Items) != 0 {
		t.Errorf("CRI pods left: %v (%v)", ps.GetItems(), err)
	}
	if cs, err := c.rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{}); err != nil || len(cs.Containers) != 0 {
		t.Errorf("CRI containers left: %v (%v)", cs.GetContainers(), err)
	}
	if cs, err := c.ctr.Containers(ctx); err != nil || len(cs) != 0 {
		t.Errorf("containerd containers left: %d (%v)", len(cs), err)
	}
	if ts, err := c.ctr.TaskService().List(ctx, nil); err != nil || len(ts.Tasks) != 0 {
		t.Errorf("containerd tasks left: %v (%v)", ts, err)
	}
	if sbs, err := c.ctr.SandboxStore().List(ctx); err != nil || len(sbs) != 0 {
		t.Errorf("containerd sandboxes left: %d (%v)", len(sbs), err)
	}
	var active []string
	err := c.ctr.SnapshotService("overlayfs").Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		if info.Kind != snapshots.KindCommitted { // committed ones are the images' layers
			active = append(active, info.Name)
		}
		return nil
	})
	if err != nil || len(active) != 0 {
		t.Errorf("container snapshots left: %v (%v)", active, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(c.ctd.Shims()) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if s := c.ctd.Shims(); len(s) > 0 {
		t.Errorf("shims still running: %v", s)
	}

	if sbs := c.cniSandboxes(); len(sbs) != 0 {
		t.Errorf("netmgr sandboxes left: %+v", sbs)
	}
	var n struct {
		Sandboxes []string `json:"sandboxes"`
	}
	if err := json.Unmarshal([]byte(c.must(t, "-o", "json", "network", "inspect", c.network)), &n); err != nil || len(n.Sandboxes) != 0 {
		t.Errorf("network %s: sandboxes %v (%v)", c.network, n.Sandboxes, err)
	}

	if ents, err := os.ReadDir(c.netnsDir()); err == nil && len(ents) != 0 {
		t.Errorf("pod namespace pins left in %s: %d", c.netnsDir(), len(ents))
	}
	if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(b), c.ctd.Dir+"/") {
		var mnts []string
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, c.ctd.Dir+"/") {
				mnts = append(mnts, l)
			}
		}
		t.Errorf("mounts left under the daemon's directory: %v", mnts)
	}
}

// gcReport runs netmgr's full repair (`podctl gc`) on the plugin's state and returns what it did.
func (c *criHost) gcReport() map[string][]string {
	c.t.Helper()
	rep := map[string][]string{}
	if err := json.Unmarshal([]byte(c.must(c.t, "-o", "json", "gc")), &rep); err != nil {
		c.t.Fatal(err)
	}
	return rep
}

// removeRuncLeftovers removes, for every pod and container of the test, the runc state (with
// `runc delete --force`, which also removes the cgroups) and the shim's sockets that a daemon which
// died with them running leaves in /run/containerd. Only the test's own IDs are touched.
func (c *criHost) removeRuncLeftovers() {
	root := filepath.Join("/run/containerd/runc", criNamespace)
	ctx := namespaces.WithNamespace(context.Background(), criNamespace)
	for _, id := range c.ids {
		if _, err := os.Stat(filepath.Join(root, id)); err == nil {
			if out, err := exec.Command("runc", "--root", root, "delete", "--force", id).CombinedOutput(); err != nil {
				c.t.Errorf("runc delete %s: %v: %s", id, err, out)
			}
		}
		for _, debug := range []bool{false, true} {
			if addr, err := shim.SocketAddress(ctx, c.ctd.Address, id, debug); err == nil {
				_ = shim.RemoveSocket(addr)
			}
		}
	}
}

// removeCgroupTree removes the cgroup directory name under every hierarchy (v1 controllers, or the
// v2 root), deepest first. rmdir fails on a cgroup that still has processes, which is then reported.
func removeCgroupTree(t *testing.T, name string) {
	t.Helper()
	roots, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/*", name))
	roots = append(roots, filepath.Join("/sys/fs/cgroup", name))
	for _, root := range roots {
		var dirs []string
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := os.Remove(dirs[i]); err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Errorf("remove cgroup %s: %v", dirs[i], err)
			}
		}
	}
}
