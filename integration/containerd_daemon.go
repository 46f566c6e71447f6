package integration

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Containerd is a private containerd daemon for tests and benchmarks: its own socket, root and state
// under a temporary directory, a minimal configuration (no CRI, no unused snapshotters), and Debian's
// runc. It runs in the caller's network namespace (containers join their sandboxes' namespaces by
// path), or in ContainerdOptions.NetNS, and must see the real cgroup mounts, so start it from the
// root mount namespace, never under `ip netns exec`.
type Containerd struct {
	Dir        string // everything of this daemon lives here
	Address    string // the gRPC socket
	cmd        *exec.Cmd
	exited     chan struct{}
	namespaces []string
	// hadRunDir tells whether /run/containerd existed before: containerd and its shims create it (for
	// the shims' sockets) whatever the configured state dir is.
	hadRunDir bool
}

// ContainerdBinaries returns the paths of containerd and its runc shim in the repository's bin
// directory (built by `make containerd`), and an error saying how to build them if they are missing.
func ContainerdBinaries() (daemon, shim string, err error) {
	bin := filepath.Join(RepoRoot(), "bin")
	daemon, shim = filepath.Join(bin, "containerd"), filepath.Join(bin, "containerd-shim-runc-v2")
	for _, p := range []string{daemon, shim} {
		if _, err := os.Stat(p); err != nil {
			return daemon, shim, fmt.Errorf("%s not built: run `make containerd` (builds containerd %s from go.mod into bin/)", filepath.Base(p), "v2")
		}
	}
	if _, err := exec.LookPath("runc"); err != nil {
		if _, err2 := os.Stat("/usr/sbin/runc"); err2 != nil {
			return daemon, shim, errors.New("runc not installed (apt-get install runc)")
		}
	}
	return daemon, shim, nil
}

// RepoRoot is the directory of the netmgr module (where go.mod is).
func RepoRoot() string {
	_, file, _, ok := runtime.Caller(0)
	if ok {
		return filepath.Dir(filepath.Dir(file))
	}
	wd, _ := os.Getwd()
	return filepath.Dir(wd)
}

// ContainerdConfig is the configuration the tests, the benchmark and the demo give containerd: only
// what running containers from local root filesystems (and pulling images, for users) needs.
func ContainerdConfig(dir string) string {
	return fmt.Sprintf(`version = 3
root = %[1]q
state = %[2]q
disabled_plugins = [
  "io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime",
  "io.containerd.podsandbox.controller.v1.podsandbox", "io.containerd.nri.v1.nri",
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
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), filepath.Join(dir, "containerd.sock"), filepath.Join(dir, "containerd.sock.ttrpc"))
}

// ContainerdOptions changes how StartContainerdWith starts the daemon; the zero value is StartContainerd.
type ContainerdOptions struct {
	// NetNS is the path of a network namespace to run the daemon in, entered with `nsenter --net`
	// (only the network namespace: the daemon and runc keep the root mount namespace and its cgroup
	// mounts). Empty: the caller's. Shims and whatever the daemon runs (CNI plugins) inherit it.
	NetNS string
	// Config returns the configuration given the daemon's directory. Nil: ContainerdConfig. Keep
	// root, state, sockets and anything else the daemon writes under that directory, so Stop removes it.
	Config func(dir string) string
}

// StartContainerd starts a private containerd under a new temporary directory and waits until it
// answers. Stop it with Stop, also on failure paths.
func StartContainerd(ctx context.Context) (*Containerd, error) {
	return StartContainerdWith(ctx, ContainerdOptions{})
}

// StartContainerdWith is StartContainerd with options.
func StartContainerdWith(ctx context.Context, opts ContainerdOptions) (*Containerd, error) {
	daemon, shim, err := ContainerdBinaries()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "netmgr-containerd-")
	if err != nil {
		return nil, err
	}
	d := &Containerd{Dir: dir, Address: filepath.Join(dir, "containerd.sock"), exited: make(chan struct{})}
	_, err = os.Stat("/run/containerd")
	d.hadRunDir = err == nil
	cfg := filepath.Join(dir, "config.toml")
	config := ContainerdConfig
	if opts.Config != nil {
		config = opts.Config
	}
	if err := os.WriteFile(cfg, []byte(config(dir)), 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	d.cmd = exec.Command(daemon, "--config", cfg)
	if opts.NetNS != "" {
		// nsenter execs the daemon in place, so the process Stop signals is containerd itself.
		d.cmd = exec.Command("nsenter", "--net="+opts.NetNS, daemon, "--config", cfg)
	}
	// The daemon finds the shim, and the shim runc, on PATH.
	d.cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(shim)+":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	logf, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	defer logf.Close()
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start containerd: %w", err)
	}
	go func() { _ = d.cmd.Wait(); close(d.exited) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("unix", d.Address, time.Second)
		if err == nil {
			c.Close()
			return d, nil
		}
		select {
		case <-d.exited:
			err := fmt.Errorf("containerd exited at start: %s", lastLines(d.Log(), 5))
			return nil, errors.Join(err, d.Stop())
		case <-ctx.Done():
			return nil, errors.Join(ctx.Err(), d.Stop())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, errors.Join(errors.New("containerd did not answer within 20s"), d.Stop())
		}
	}
}

// Log returns what the daemon printed so far.
func (d *Containerd) Log() string {
	b, _ := os.ReadFile(filepath.Join(d.Dir, "containerd.log"))
	return string(b)
}

// Shims returns the pids of the runc shims serving this daemon (their command line names its socket).
func (d *Containerd) Shims() []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) == 0 || filepath.Base(args[0]) != "containerd-shim-runc-v2" {
			continue
		}
		for _, a := range args {
			if a == d.Address || a == "unix://"+d.Address {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// Stop stops the daemon, kills shims it left (with their containers), unmounts what is still mounted
// under its directory, removes the directory and /run/containerd if it created it. It is safe to call
// twice.
func (d *Containerd) Stop() error {
	var errs []error
	if d.cmd != nil && d.cmd.Process != nil {
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.exited:
		case <-time.After(10 * time.Second):
			_ = d.cmd.Process.Kill()
			<-d.exited
		}
	}
	for _, pid := range d.Shims() {
		// A shim outliving the daemon still holds a container: kill the shim's process group (the
		// container's init is in its own) and the containers by their shim's children.
		for _, child := range children(pid) {
			_ = syscall.Kill(child, syscall.SIGKILL)
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
		errs = append(errs, fmt.Errorf("containerd shim %d was still running (killed)", pid))
	}
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		var mnts []string
		for _, l := range strings.Split(string(b), "\n") {
			f := strings.Fields(l)
			if len(f) > 4 && strings.HasPrefix(f[4], d.Dir+"/") {
				mnts = append(mnts, f[4])
			}
		}
		for i := len(mnts) - 1; i >= 0; i-- {
			if err := syscall.Unmount(mnts[i], syscall.MNT_DETACH); err != nil {
				errs = append(errs, fmt.Errorf("unmount %s: %w", mnts[i], err))
			}
		}
	}
	if err := os.RemoveAll(d.Dir); err != nil {
		errs = append(errs, err)
	}
	d.removeNamespaceLeftovers()
	if !d.hadRunDir {
		// Only empty directories go: a containerd started meanwhile by someone else keeps its own.
		for _, dir := range []string{"/run/containerd/s", "/run/containerd/runc", "/run/containerd"} {
			_ = os.Remove(dir)
		}
	}
	return errors.Join(errs...)
}

// children returns the pids whose parent is pid.
func children(pid int) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, p)
		}
	}
	return out
}

// UseNamespace tells Stop that containers were run in containerd namespace ns, so that it removes
// what runc leaves per namespace: the empty cgroup directories containerd's default spec names
// (/sys/fs/cgroup/*/NS; runc removes each container's own, not their parent) and runc's state
// directory /run/containerd/runc/NS. Use a namespace of the test's own.
func (d *Containerd) UseNamespace(ns string) { d.namespaces = append(d.namespaces, ns) }

// removeNamespaceLeftovers removes, for each namespace used, the directories described at
// UseNamespace. Only empty directories are removed.
func (d *Containerd) removeNamespaceLeftovers() {
	for _, ns := range d.namespaces {
		dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/*", ns))
		dirs = append(dirs, filepath.Join("/sys/fs/cgroup", ns), filepath.Join("/run/containerd/runc", ns))
		for _, dir := range dirs {
			_ = os.Remove(dir)
		}
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// BusyboxRootFS builds a minimal root filesystem from the static busybox binary: bin/busybox with a
// link per applet, /etc/passwd and /etc/group, and the mount points a container needs. It is what
// the tests, the benchmark and the demo use as an image.
func BusyboxRootFS(dir string) error {
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return errors.New("busybox not installed (apt-get install busybox-static)")
	}
	for _, d := range []string{"bin", "etc", "proc", "sys", "dev", "tmp", "run", "www"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "busybox"), data, 0o755); err != nil {
		return err
	}
	out, err := exec.Command(bb, "--list").Output()
	if err != nil {
		return fmt.Errorf("busybox --list: %w", err)
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet == "busybox" {
			continue
		}
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", applet)); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
	}
	files := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
		"etc/group":  "root:x:0:\nnogroup:x:65534:\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return os.Chmod(filepath.Join(dir, "tmp"), 0o1777)
}
