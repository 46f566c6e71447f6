package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// nriAnnotation is the Multus annotation netmgr-nri reads.
const nriAnnotation = "k8s.v1.cni.cncf.io/networks"

// buildNRIPlugin builds netmgr-nri into the test's temporary directory (from the build cache after
// the first time).
func buildNRIPlugin(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "netmgr-nri")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/netmgr/netmgr/examples/netmgr-nri").CombinedOutput(); err != nil {
		t.Fatalf("build netmgr-nri: %v\n%s", err, out)
	}
	return bin
}

// nriDirs are where the daemon's NRI keeps its socket and pre-registered plugins (under the
// daemon's directory, so Stop removes them).
func nriSocket(dir string) string     { return filepath.Join(dir, "nri.sock") }
func nriPluginDir(dir string) string  { return filepath.Join(dir, "nri-plugins") }
func nriPluginConf(dir string) string { return filepath.Join(dir, "nri-conf") }

// withNRI turns containerd's NRI on (the CRI tests' configuration disables it): the socket and the
// plugin directories under the daemon's directory, NRI's default 2 s request timeout. prepare, if
// not nil, fills the plugin directories before the daemon starts.
func withNRI(prepare func(h *host, dir string)) func(h *host, dir, config string) string {
	return func(h *host, dir, config string) string {
		config = strings.Replace(config, `  "io.containerd.nri.v1.nri",`+"\n", "", 1)
		for _, d := range []string{nriPluginDir(dir), nriPluginConf(dir)} {
			_ = os.MkdirAll(d, 0o755)
		}
		if prepare != nil {
			prepare(h, dir)
		}
		return config + fmt.Sprintf(`
[plugins.'io.containerd.nri.v1.nri']
  disable = false
  socket_path = %q
  plugin_path = %q
  plugin_config_path = %q
  plugin_registration_timeout = "5s"
  plugin_request_timeout = "2s"
`, nriSocket(dir), nriPluginDir(dir), nriPluginConf(dir))
	}
}

// nriPlugin is a netmgr-nri process connected to the test host's containerd, in the host namespace.
type nriPlugin struct {
	t      *testing.T
	c      *criHost
	bin    string
	log    string
	cmd    *exec.Cmd
	exited chan struct{}
	// args are more flags for the next start (default: no sweep, so that Synchronize alone is tested).
	args []string
}

// startNRIPlugin starts netmgr-nri on the host's state and waits until it has synchronized with
// containerd. It is killed at cleanup, after the pods were removed through CRI (so that its hooks
// run for them).
func (c *criHost) startNRIPlugin() *nriPlugin {
	c.t.Helper()
	p := &nriPlugin{t: c.t, c: c, bin: buildNRIPlugin(c.t), log: filepath.Join(c.t.TempDir(), "netmgr-nri.log")}
	p.start()
	c.t.Cleanup(func() {
		c.removeAllPods()
		p.kill()
		if c.t.Failed() {
			b, _ := os.ReadFile(p.log)
			c.t.Logf("netmgr-nri log:\n%s", lastLines(string(b), 40))
		}
	})
	return p
}

func (p *nriPlugin) start() {
	p.t.Helper()
	before := len(p.entries("synchronize"))
	args := append([]string{"--net=" + p.c.ns.Path(), p.bin,
		"--nri-socket", nriSocket(p.c.ctd.Dir), "--state-dir", p.c.stateDir, "--run-dir", p.c.runDir,
		"--log-file", p.log, "--reconnect", "100ms", "--sweep", "0"}, p.args...)
	p.cmd = exec.Command("nsenter", args...)
	stderr, err := os.OpenFile(p.log+".stderr", os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		p.t.Fatal(err)
	}
	defer stderr.Close()
	p.cmd.Stdout, p.cmd.Stderr = stderr, stderr
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	p.exited = make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(p.exited) }()
	for deadline := time.Now().Add(30 * time.Second); len(p.entries("synchronize")) == before; {
		select {
		case <-p.exited:
			b, _ := os.ReadFile(p.log + ".stderr")
			p.t.Fatalf("netmgr-nri exited at start: %s", b)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("netmgr-nri did not synchronize with containerd within 30s")
		}
	}
}

// kill SIGKILLs the plugin, as a crash would.
func (p *nriPlugin) kill() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// nriLogEntry is one JSON line of the plugin's log.
type nriLogEntry struct {
	Msg    string  `json:"msg"`
	Level  string  `json:"level"`
	Hook   string  `json:"hook"`
	Pod    string  `json:"pod"`
	Ms     float64 `json:"ms"`
	Error  string  `json:"error"`
	Done   int     `json:"completed"`
	Remove int     `json:"removed"`
	Failed int     `json:"failed"`
}

// entries returns the log entries with message msg.
func (p *nriPlugin) entries(msg string) []nriLogEntry {
	f, err := os.Open(p.log)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []nriLogEntry
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var e nriLogEntry
		if json.Unmarshal(sc.Bytes(), &e) == nil && e.Msg == msg {
			out = append(out, e)
		}
	}
	return out
}

// hookTimes returns the durations the plugin logged for hook, sorted.
func (p *nriPlugin) hookTimes(hook string) []float64 {
	var ms []float64
	for _, e := range p.entries("hook") {
		if e.Hook == hook {
			ms = append(ms, e.Ms)
		}
	}
	sort.Float64s(ms)
	return ms
}

// percentile of sorted values (nearest rank).
func percentile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// runPodAnnotated is runPod with pod annotations (nil: none); a RunPodSandbox failure is returned,
// not fatal.
func (c *criHost) runPodAnnotated(name string, annotations map[string]string) (*criPod, error) {
	c.t.Helper()
	ctx, cancel := c.ctx()
	defer cancel()
	p := &criPod{name: name, config: c.sandboxConfig(name)}
	p.config.Annotations = annotations
	run, err := c.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: p.config})
	if err != nil {
		return nil, err
	}
	p.id = run.PodSandboxId
	c.ids = append(c.ids, p.id)
	st, err := c.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: p.id})
	if err != nil {
		c.t.Fatalf("PodSandboxStatus %s: %v", name, err)
	}
	if st.GetStatus().GetState() != runtimeapi.PodSandboxState_SANDBOX_READY {
		c.t.Fatalf("pod %s: state %v, want ready", name, st.GetStatus().GetState())
	}
	p.ip = st.GetStatus().GetNetwork().GetIp()
	cr, err := c.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: p.id,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "busybox"},
			Image:    &runtimeapi.ImageSpec{Image: c.busyboxRef},
			Command:  []string{"sleep", "3600"},
			LogPath:  "busybox.log",
			Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
				NamespaceOptions: p.config.Linux.SecurityContext.NamespaceOptions,
			}},
		},
		SandboxConfig: p.config,
	})
	if err != nil {
		c.t.Fatalf("CreateContainer in %s: %v", name, err)
	}
	p.container = cr.ContainerId
	c.ids = append(c.ids, p.container)
	if _, err := c.rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: p.container}); err != nil {
		c.t.Fatalf("StartContainer in %s: %v", name, err)
	}
	return p, nil
}

// nriSandbox is a netmgr sandbox as podctl prints it, with the fields the NRI tests read.
type nriSandbox = cniSandbox

// nriSandboxes returns netmgr-nri's sandbox records (named nri-...), by pod ID.
func (c *criHost) nriSandboxes() map[string]nriSandbox {
	c.t.Helper()
	out := map[string]nriSandbox{}
	for _, s := range c.cniSandboxes() {
		if strings.HasPrefix(s.Name, "nri-") {
			out[s.Labels["nri.netmgr.io/pod-id"]] = s
		}
	}
	return out
}

// networkSandboxes returns the sandboxes netmgr lists on network.
func (c *criHost) networkSandboxes(network string) []string {
	c.t.Helper()
	var n struct {
		Sandboxes []string `json:"sandboxes"`
	}
	if err := json.Unmarshal([]byte(c.must(c.t, "-o", "json", "network", "inspect", network)), &n); err != nil {
		c.t.Fatal(err)
	}
	slices.Sort(n.Sandboxes)
	return n.Sandboxes
}

// ifAddr returns the pod's IPv4 address (CIDR) on ifname, as the container sees it, or "".
func (c *criHost) ifAddr(p *criPod, ifname string) string {
	c.t.Helper()
	out, err := c.exec(p, "ip", "-4", "-o", "addr", "show", "dev", ifname)
	if err != nil {
		return ""
	}
	f := strings.Fields(out)
	for i := range f {
		if f[i] == "inet" && i+1 < len(f) {
			return f[i+1]
		}
	}
	return ""
}

// waitHostLinks polls until the test host has exactly want links whose names start with prefix
// (interfaces of destroyed namespaces go asynchronously), and fails the test after 30 s.
func (c *criHost) waitHostLinks(prefix string, want int) {
	c.t.Helper()
	h, err := c.ns.NewHandle()
	if err != nil {
		c.t.Fatal(err)
	}
	defer h.Close()
	var have []string
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		have = have[:0]
		links, err := h.LinkList()
		if err != nil {
			c.t.Fatal(err)
		}
		for _, l := range links {
			if strings.HasPrefix(l.Attrs().Name, prefix) {
				have = append(have, l.Attrs().Name)
			}
		}
		if len(have) == want || time.Now().After(deadline) {
			break
		}
	}
	if len(have) != want {
		c.t.Errorf("host interfaces %s*: %v, want %d", prefix, have, want)
	}
}

// restartContainerd stops the daemon (SIGTERM, as systemctl restart does: shims and pods keep
// running) and starts it again on the same directory and configuration, then waits for CRI.
func (c *criHost) restartContainerd() {
	c.t.Helper()
	d := c.ctd
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(20 * time.Second):
		c.t.Fatal("containerd did not stop within 20s of SIGTERM")
	}
	daemon, shim, err := ContainerdBinaries()
	if err != nil {
		c.t.Fatal(err)
	}
	cmd := exec.Command("nsenter", "--net="+c.ns.Path(), daemon, "--config", filepath.Join(d.Dir, "config.toml"))
	cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(shim)+":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	logf, err := os.OpenFile(filepath.Join(d.Dir, "containerd.log"), os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		c.t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	d.cmd, d.exited = cmd, exited
	c.waitCRI()
}
