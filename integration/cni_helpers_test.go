package integration

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	gocni "github.com/containerd/go-cni"
	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/sandbox"
)

// debianCNI is where Debian's reference plugins live (apt-get install containernetworking-plugins).
const debianCNI = "/usr/lib/cni"

// buildCNIPlugin builds netmgr-cni into a fresh plugin directory, as an operator would install it
// next to the reference plugins.
func buildCNIPlugin(t *testing.T) string {
	t.Helper()
	testutil.RequireRoot(t)
	for _, p := range []string{"loopback", "tuning", "portmap"} {
		if _, err := os.Stat(filepath.Join(debianCNI, p)); err != nil {
			t.Skipf("needs Debian's CNI plugins in %s (apt-get install containernetworking-plugins)", debianCNI)
		}
	}
	dir := t.TempDir()
	out, err := exec.Command("go", "build", "-o", filepath.Join(dir, "netmgr-cni"), "github.com/netmgr/netmgr/examples/netmgr-cni").CombinedOutput()
	if err != nil {
		t.Fatalf("build netmgr-cni: %v\n%s", err, out)
	}
	return dir
}

// cniHost is one test host for CNI: a namespace the plugins run in (standing for the node's root
// namespace), a configuration directory, and netmgr-cni's state and run directories.
type cniHost struct {
	t       *testing.T
	ns      *sandbox.NetNS
	binDir  string
	confDir string
	state   string
	run     string
}

func newCNIHost(t *testing.T, binDir string) *cniHost {
	t.Helper()
	h := &cniHost{t: t, ns: testutil.NewNS(t, "cnihost"), confDir: t.TempDir(), state: t.TempDir(), run: t.TempDir()}
	// Every plugin runs inside the test host namespace, whichever thread forks it (nsPluginDir).
	h.binDir = nsPluginDir(t, h.ns, binDir, debianCNI)
	// libcni keeps each attachment's result in its cache dir; go-cni has no option for it, so point
	// the package default at the test's own directory rather than the machine's /var/lib/cni.
	old := libcni.CacheDir
	libcni.CacheDir = t.TempDir()
	t.Cleanup(func() { libcni.CacheDir = old })
	return h
}

// do runs fn on a thread inside the test host namespace. Every plugin process started by fn (go-cni
// and libcni fork from the calling thread) therefore lives there, with its bridges and firewall rules,
// never in the machine's root namespace. It refuses to run fn on a thread anywhere else.
func (h *cniHost) do(fn func() error) error {
	want, err := h.ns.Inode()
	if err != nil {
		return err
	}
	return h.ns.Do(func() error {
		var st unix.Stat_t
		if err := unix.Stat(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()), &st); err != nil {
			return err
		}
		if st.Ino != want {
			return errors.New("refusing to run CNI plugins outside the test host namespace")
		}
		return fn()
	})
}

// conflist is a configuration list with netmgr-cni first, then the chained plugins given as JSON.
func (h *cniHost) conflist(version, name, netmgrExtra string, chained ...string) string {
	plugins := []string{fmt.Sprintf(`{"type": "netmgr-cni", "driver": "bridge", "stateDir": %q, "runDir": %q%s}`, h.state, h.run, netmgrExtra)}
	plugins = append(plugins, chained...)
	return fmt.Sprintf(`{"cniVersion": %q, "name": %q, "plugins": [%s]}`, version, name, strings.Join(plugins, ", "))
}

// writeConf installs a configuration list in the conf dir, as an operator would in /etc/cni/net.d.
func (h *cniHost) writeConf(file, body string) {
	h.t.Helper()
	if err := os.WriteFile(filepath.Join(h.confDir, file), []byte(body), 0o644); err != nil {
		h.t.Fatal(err)
	}
}

// goCNI loads the conf dir exactly as containerd's CRI plugin does: loopback first, then the first
// configuration in the directory as eth0.
func (h *cniHost) goCNI() gocni.CNI {
	h.t.Helper()
	c, err := gocni.New(gocni.WithPluginDir([]string{h.binDir}), gocni.WithPluginConfDir(h.confDir), gocni.WithMinNetworkCount(2))
	if err != nil {
		h.t.Fatal(err)
	}
	if err := c.Load(gocni.WithLoNetwork, gocni.WithDefaultConf); err != nil {
		h.t.Fatal(err)
	}
	return c
}

// criLabels are the CNI_ARGS containerd's CRI plugin passes with every call.
func criLabels(pod string) gocni.NamespaceOpts {
	return gocni.WithLabels(map[string]string{
		"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": pod, "K8S_POD_INFRA_CONTAINER_ID": pod,
	})
}

// setup attaches pod through go-cni, from inside the host namespace. It uses SetupSerially: Setup runs
// each network on a new goroutine, whose thread would not be in the test host namespace; the plugins
// see exactly the same calls either way.
func (h *cniHost) setup(c gocni.CNI, id string, pod *sandbox.NetNS, opts ...gocni.NamespaceOpts) (*gocni.Result, error) {
	var res *gocni.Result
	err := h.do(func() (err error) {
		res, err = c.SetupSerially(context.Background(), id, pod.Path(), append([]gocni.NamespaceOpts{criLabels(id)}, opts...)...)
		return err
	})
	return res, err
}

func (h *cniHost) remove(c gocni.CNI, id, path string) error {
	return h.do(func() error { return c.Remove(context.Background(), id, path, criLabels(id)) })
}

// check runs CHECK through go-cni. The loopback network containerd adds is CNI 0.3.1, which has no
// CHECK, so this client loads the configuration directory alone.
func (h *cniHost) check(id string, pod *sandbox.NetNS) error {
	c, err := gocni.New(gocni.WithPluginDir([]string{h.binDir}), gocni.WithPluginConfDir(h.confDir))
	if err == nil {
		err = c.Load(gocni.WithDefaultConf)
	}
	if err != nil {
		return err
	}
	return h.do(func() error { return c.Check(context.Background(), id, pod.Path(), criLabels(id)) })
}

// libCNI returns a libcni client for the plugin dirs, with cache dir cache.
func (h *cniHost) libCNI(cache string) *libcni.CNIConfig {
	return libcni.NewCNIConfigWithCacheDir([]string{h.binDir}, cache, nil)
}

func (h *cniHost) add(c *libcni.CNIConfig, list *libcni.NetworkConfigList, id string, pod *sandbox.NetNS) (types.Result, error) {
	var res types.Result
	err := h.do(func() (err error) {
		res, err = c.AddNetworkList(context.Background(), list, &libcni.RuntimeConf{ContainerID: id, NetNS: pod.Path(), IfName: "eth0"})
		return err
	})
	return res, err
}

func (h *cniHost) del(c *libcni.CNIConfig, list *libcni.NetworkConfigList, id, path string) error {
	return h.do(func() error {
		return c.DelNetworkList(context.Background(), list, &libcni.RuntimeConf{ContainerID: id, NetNS: path, IfName: "eth0"})
	})
}

// manager opens netmgr-cni's state from the test, to look at what the plugin recorded.
func (h *cniHost) manager() *netmgr.Manager {
	h.t.Helper()
	m, err := netmgr.New(context.Background(), netmgr.WithHostNetNS(h.ns.Path()), netmgr.WithStateDir(h.state), netmgr.WithRunDir(h.run))
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { m.Close() })
	return m
}

// attached returns the sandboxes netmgr-cni recorded on network name.
func (h *cniHost) attached(name string) []string {
	h.t.Helper()
	n, err := h.manager().Network(context.Background(), name)
	if errors.Is(err, netmgr.ErrNotFound) {
		return nil
	}
	if err != nil {
		h.t.Fatal(err)
	}
	return n.Sandboxes
}

// links lists the host namespace's links.
func linkNames(t *testing.T, ns *sandbox.NetNS) []string {
	t.Helper()
	h, err := ns.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range links {
		out = append(out, l.Attrs().Name)
	}
	return out
}

// cniCode returns the CNI error code of err, or -1.
func cniCode(err error) int {
	var te *types.Error
	if errors.As(err, &te) {
		return int(te.Code)
	}
	return -1
}

// sandboxNameFor repeats netmgr-cni's naming of the sandbox of one attachment.
func sandboxNameFor(network, containerID, ifname string) string {
	sum := sha256.Sum256([]byte(network + "\x00" + containerID + "\x00" + ifname))
	return "cni-" + hex.EncodeToString(sum[:16])
}

// rtConf is the runtime configuration of one attachment: container id, namespace, interface and
// capability arguments.
func rtConf(id, netns, ifname string, caps map[string]any) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: id, NetNS: netns, IfName: ifname, CapabilityArgs: caps}
}

// addIf is ADD of interface ifname through libcni, with the result converted to the current version.
func (h *cniHost) addIf(c *libcni.CNIConfig, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) (*types100.Result, error) {
	var res types.Result
	if err := h.do(func() (err error) {
		res, err = c.AddNetworkList(context.Background(), list, rt)
		return err
	}); err != nil {
		return nil, err
	}
	return types100.NewResultFromResult(res)
}

func (h *cniHost) delIf(c *libcni.CNIConfig, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error {
	return h.do(func() error { return c.DelNetworkList(context.Background(), list, rt) })
}

func (h *cniHost) checkIf(c *libcni.CNIConfig, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error {
	return h.do(func() error { return c.CheckNetworkList(context.Background(), list, rt) })
}

// defaultRoutes lists the main table's default routes of family (netlink.FAMILY_V4 or V6) in ns, as
// "via GW dev IF".
func defaultRoutes(t *testing.T, ns *sandbox.NetNS, family int) []string {
	t.Helper()
	h, err := ns.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	routes, err := h.RouteList(nil, family)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range routes {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
		}
		dev := fmt.Sprint(r.LinkIndex)
		if l, err := h.LinkByIndex(r.LinkIndex); err == nil {
			dev = l.Attrs().Name
		}
		out = append(out, fmt.Sprintf("via %s dev %s", r.Gw, dev))
	}
	return out
}

// addrsOf lists the global addresses of interface ifname in ns.
func addrsOf(t *testing.T, ns *sandbox.NetNS, ifname string) []netip.Prefix {
	t.Helper()
	h, err := ns.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(ifname)
	if err != nil {
		t.Fatalf("%s: %v", ifname, err)
	}
	addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	var out []netip.Prefix
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.IP)
		if ip = ip.Unmap(); ip.IsLinkLocalUnicast() {
			continue
		}
		ones, _ := a.Mask.Size()
		out = append(out, netip.PrefixFrom(ip, ones))
	}
	return out
}

// pluginRun is what one netmgr-cni process printed and how it exited.
type pluginRun struct {
	stdout, stderr []byte
	rc             int
}

// runPlugin runs netmgr-cni once, the way a runtime execs it (CNI_* environment, the plugin's
// configuration on stdin), in the test host namespace.
func (h *cniHost) runPlugin(command, id, netns, ifname, conf string) pluginRun {
	h.t.Helper()
	var r pluginRun
	err := h.do(func() error {
		cmd := exec.Command(filepath.Join(h.binDir, "netmgr-cni"))
		cmd.Env = []string{"CNI_COMMAND=" + command, "CNI_CONTAINERID=" + id, "CNI_NETNS=" + netns,
			"CNI_IFNAME=" + ifname, "CNI_PATH=" + h.binDir, "PATH=" + os.Getenv("PATH")}
		cmd.Stdin = strings.NewReader(conf)
		var out, errb strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		r.stdout, r.stderr = []byte(out.String()), []byte(errb.String())
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			r.rc, err = ee.ExitCode(), nil
		}
		return err
	})
	if err != nil {
		h.t.Fatal(err)
	}
	return r
}

// cniErrorOf parses a plugin's stdout as the CNI error the spec requires on failure.
func cniErrorOf(t *testing.T, what string, r pluginRun) *types.Error {
	t.Helper()
	if r.rc == 0 {
		t.Fatalf("%s: exit 0, want a failure; stdout %s", what, r.stdout)
	}
	var e types.Error
	if err := json.Unmarshal(r.stdout, &e); err != nil || e.Code == 0 || e.Msg == "" {
		t.Fatalf("%s: exit %d, stdout %q is not a CNI error (%v); stderr %q", what, r.rc, r.stdout, err, r.stderr)
	}
	if strings.Contains(e.Msg, "\n") {
		t.Errorf("%s: message of several lines: %q", what, e.Msg)
	}
	return &e
}
