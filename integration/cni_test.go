package integration

import (
	"context"
	"crypto/rand"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	gocni "github.com/containerd/go-cni"
	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/sandbox"
)

// TestCNIPlugin drives netmgr-cni the way runtimes do: go-cni (containerd's CRI plugin) for ADD,
// CHECK and DEL, libcni for GC and STATUS, inside a test host namespace.
func TestCNIPlugin(t *testing.T) {
	bin := buildCNIPlugin(t)
	t.Run("AddCheckDel", func(t *testing.T) { testCNIAddCheckDel(t, bin) })
	t.Run("DelAfterNetnsGone", func(t *testing.T) { testCNIDelAfterNetnsGone(t, bin) })
	t.Run("ReAddAfterDel", func(t *testing.T) { testCNIReAddAfterDel(t, bin) })
	t.Run("GC", func(t *testing.T) { testCNIGC(t, bin) })
	t.Run("Status", func(t *testing.T) { testCNIStatus(t, bin) })
	t.Run("BadConfig", func(t *testing.T) { testCNIBadConfig(t, bin) })
	t.Run("NetworkMismatch", func(t *testing.T) { testCNIMismatch(t, bin) })
	t.Run("ConcurrentFirstAdd", func(t *testing.T) { testCNIConcurrentFirstAdd(t, bin) })
	t.Run("StaticIPAndMAC", func(t *testing.T) { testCNIStaticIPAndMAC(t, bin) })
	t.Run("DualStack", func(t *testing.T) { testCNIDualStack(t, bin) })
	t.Run("Macvlan", func(t *testing.T) { testCNIMacvlan(t, bin) })
	t.Run("PortMappings", func(t *testing.T) { testCNIPortMappings(t, bin) })
	t.Run("ChainPortmap", func(t *testing.T) { testCNIChainPortmap(t, bin) })
	t.Run("MultiNetwork", func(t *testing.T) { testCNIMultiNetwork(t, bin) })
	t.Run("CorruptState", func(t *testing.T) { testCNICorruptState(t, bin) })
	t.Run("FailedDelKeepsInterfaces", func(t *testing.T) { testCNIFailedDelKeepsInterfaces(t, bin) })
	t.Run("CheckTampering", func(t *testing.T) { testCNICheckTampering(t, bin) })
	t.Run("NotFoundCodes", func(t *testing.T) { testCNINotFoundCodes(t, bin) })
	t.Run("RepeatedAdd", func(t *testing.T) { testCNIRepeatedAdd(t, bin) })
	t.Run("ConcurrentInterfaces", func(t *testing.T) { testCNIConcurrentInterfaces(t, bin) })
}

func eth0IP(t *testing.T, res *gocni.Result) netip.Addr {
	t.Helper()
	cfg, ok := res.Interfaces["eth0"]
	if !ok || len(cfg.IPConfigs) == 0 {
		t.Fatalf("result has no address on eth0: %+v", res.Interfaces)
	}
	a, _ := netip.AddrFromSlice(cfg.IPConfigs[0].IP)
	return a.Unmap()
}

func testCNIAddCheckDel(t *testing.T, bin string) {
	h := newCNIHost(t, bin)
	subnet := netip.MustParsePrefix("10.251.0.0/24")
	h.writeConf("10-pods.conflist", h.conflist("1.0.0", "pods",
		`, "subnets": ["10.251.0.0/24"], "dns": {"nameservers": ["10.251.0.1"], "search": ["svc.local"]}`,
		`{"type": "tuning", "sysctl": {"net.core.somaxconn": "512"}}`))
	c := h.goCNI()
	pod1, pod2 := testutil.NewNS(t, "pod1"), testutil.NewNS(t, "pod2")

	res1, err := h.setup(c, "pod1", pod1)
	if err != nil {
		t.Fatal(err)
	}
	res2, err := h.setup(c, "pod2", pod2)
	if err != nil {
		t.Fatal(err)
	}
	ip1, ip2 := eth0IP(t, res1), eth0IP(t, res2)
	if !subnet.Contains(ip1) || !subnet.Contains(ip2) || ip1 == ip2 {
		t.Fatalf("addresses %s and %s: want two distinct ones from %s", ip1, ip2, subnet)
	}
	if res1.Interfaces["eth0"].Sandbox != pod1.Path() {
		t.Errorf("eth0 sandbox %q, want %q", res1.Interfaces["eth0"].Sandbox, pod1.Path())
	}
	raw := res1.Raw()[1] // [0] is the loopback network
	if len(raw.Routes) != 1 || raw.Routes[0].GW.String() != "10.251.0.1" || len(raw.DNS.Nameservers) != 1 {
		t.Errorf("result routes %v dns %+v: want the default route via 10.251.0.1 and the configured DNS", raw.Routes, raw.DNS)
	}
	for _, ipc := range raw.IPs {
		if ipc.Interface == nil || raw.Interfaces[*ipc.Interface].Sandbox != pod1.Path() || ipc.Gateway.String() != "10.251.0.1" {
			t.Errorf("ip %v does not point at the sandbox interface with the gateway", ipc)
		}
	}

	addr := testutil.Listen(t, pod2, ip2.String()+":8080")
	if seen, err := testutil.Dial(pod1, addr); err != nil || seen != ip1.String() {
		t.Fatalf("pod1 -> pod2: saw %q, %v; want pod1's address %s", seen, err, ip1)
	}
	var somaxconn []byte
	if err := pod1.Do(func() (err error) {
		somaxconn, err = os.ReadFile("/proc/sys/net/core/somaxconn")
		return err
	}); err != nil || strings.TrimSpace(string(somaxconn)) != "512" {
		t.Errorf("the chained tuning plugin did not run: somaxconn %q, %v", somaxconn, err)
	}

	if err := h.check("pod1", pod1); err != nil {
		t.Fatalf("CHECK of an intact attachment: %v", err)
	}
	// Tamper: take pod1's address away.
	ph, err := pod1.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer ph.Close()
	eth0, err := ph.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if err := ph.AddrDel(eth0, &netlink.Addr{IPNet: &net.IPNet{IP: ip1.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
		t.Fatal(err)
	}
	err = h.check("pod1", pod1)
	if err == nil || !strings.Contains(err.Error(), "lacks its address") {
		t.Fatalf("CHECK after the address was deleted: %v, want a failure naming the address", err)
	}
	if err := ph.LinkDel(eth0); err != nil {
		t.Fatal(err)
	}
	if err := h.check("pod1", pod1); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("CHECK after the interface was deleted: %v", err)
	}

	for i := 0; i < 2; i++ { // DEL twice
		if err := h.remove(c, "pod1", pod1.Path()); err != nil {
			t.Fatalf("DEL #%d: %v", i+1, err)
		}
	}
	if got := h.attached("pods"); !slices.Equal(got, []string{sandboxOf("pods", "pod2")}) {
		t.Errorf("after DEL of pod1 the network holds %v, want pod2's sandbox only", got)
	}
	if err := h.remove(c, "pod2", pod2.Path()); err != nil {
		t.Fatal(err)
	}
	// The interfaces go at once by name, and for good a moment later (see the plugin's reap.go).
	testutil.WaitNoLinks(t, pod2, "eth0")
	testutil.WaitNoLinks(t, pod2, "nmgone")
	testutil.WaitNoLinks(t, pod1, "nmgone")
	testutil.WaitNoLinks(t, h.ns, "nmv")
	if got := h.attached("pods"); len(got) != 0 {
		t.Errorf("after DEL the network holds %v", got)
	}
}

// sandboxOf repeats netmgr-cni's naming: "cni-" and 32 hex digits of sha256(network, id, ifname).
func sandboxOf(network, id string) string {
	return sandboxNameFor(network, id, "eth0")
}

func testCNIDelAfterNetnsGone(t *testing.T, bin string) {
	h := newCNIHost(t, bin)
	h.writeConf("10-pods.conflist", h.conflist("1.0.0", "pods", `, "subnets": ["10.252.0.0/24"]`))
	c := h.goCNI()
	pod := testutil.NewNS(t, "gone")
	path := pod.Path()
	if _, err := h.setup(c, "gone", pod); err != nil {
		t.Fatal(err)
	}
	hostLinks := linkNames(t, h.ns)
	// The runtime removes the namespace before DEL (a crashed or restarted runtime does).
	pod.Close()
	if err := sandbox.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := h.remove(c, "gone", path); err != nil {
		t.Fatalf("DEL after the netns is gone: %v", err)
	}
	if err := h.remove(c, "gone", ""); err != nil {
		t.Fatalf("DEL with no netns at all: %v", err)
	}
	testutil.WaitNoLinks(t, h.ns, "nmv")
	if got := h.attached("pods"); len(got) != 0 {
		t.Errorf("address still held by %v", got)
	}
	if !slices.ContainsFunc(hostLinks, func(s string) bool { return strings.HasPrefix(s, "nmv") }) {
		t.Errorf("host side never existed: %v", hostLinks)
	}
	// The freed address is handed out again.
	again := testutil.NewNS(t, "again")
	res, err := h.setup(c, "again", again)
	if err != nil {
		t.Fatal(err)
	}
	if ip := eth0IP(t, res); ip != netip.MustParseAddr("10.252.0.2") {
		t.Errorf("next ADD got %s, want the freed 10.252.0.2", ip)
	}
	if err := h.remove(c, "again", again.Path()); err != nil {
		t.Fatal(err)
	}
}

// A runtime may ADD the same container and interface again right after DEL, into the same namespace.
func testCNIReAddAfterDel(t *testing.T, bin string) {
	h := newCNIHost(t, bin)
	h.writeConf("10-pods.conflist", h.conflist("1.0.0", "again", `, "subnets": ["10.244.0.0/24"]`))
	c := h.goCNI()
	pod := testutil.NewNS(t, "pod")
	for i := 0; i < 3; i++ {
		if _, err := h.setup(c, "same", pod); err != nil {
			t.Fatalf("ADD #%d: %v", i+1, err)
		}
		if err := h.remove(c, "same", pod.Path()); err != nil {
			t.Fatalf("DEL #%d: %v", i+1, err)
		}
	}
	testutil.WaitNoLinks(t, pod, "nmgone")
	testutil.WaitNoLinks(t, pod, "eth0")
	testutil.WaitNoLinks(t, h.ns, "nmv")
}

func loadList(t *testing.T, body string) *libcni.NetworkConfigList {
	t.Helper()
	list, err := libcni.NetworkConfFromBytes([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	return list
}

func testCNIGC(t *testing.T, bin string) {
	h := newCNIHost(t, bin)
	list := loadList(t, h.conflist("1.1.0", "gcnet", `, "subnets": ["10.253.0.0/24"]`))
	c := h.libCNI(t.TempDir())
	pods := map[string]*sandbox.NetNS{}
	ips := map[string]string{}
	for _, id := range []string{"keep1", "drop", "keep2"} {
		pods[id] = testutil.NewNS(t, id)
		res, err := h.add(c, list, id, pods[id])
		if err != nil {
			t.Fatal(err)
		}
		r, err := types100.NewResultFromResult(res)
		if err != nil {
			t.Fatal(err)
		}
		ips[id] = r.IPs[0].Address.IP.String()
	}
	// GC through a client whose cache knows no attachments, so that only the plugin's GC can remove.
	gc := h.libCNI(t.TempDir())
	err := h.do(func() error {
		return gc.GCNetworkList(context.Background(), list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{
			{ContainerID: "keep1", IfName: "eth0"}, {ContainerID: "keep2", IfName: "eth0"},
		}})
	})
	if err != nil {
		t.Fatal(err)
	}
	got := h.attached("gcnet")
	want := []string{sandboxNameFor("gcnet", "keep1", "eth0"), sandboxNameFor("gcnet", "keep2", "eth0")}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("after GC the network holds %v, want %v", got, want)
	}
	testutil.WaitNoLinks(t, pods["drop"], "eth0")
	if err := testutil.Ping(pods["keep1"], ips["keep2"]); err != nil {
		t.Errorf("kept attachments lost connectivity: %v", err)
	}
	// GC without the list of valid attachments refuses rather than guessing.
	err = h.do(func() error { return gc.GCNetworkList(context.Background(), list, nil) })
	if cniCode(err) != int(types.ErrInvalidNetworkConfig) {
		t.Errorf("GC without valid attachments: %v, want error code 7", err)
	}
	// And an empty list removes everything.
	err = h.do(func() error {
		return gc.GCNetworkList(context.Background(), list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{}})
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := h.attached("gcnet"); len(got) != 0 {
		t.Errorf("after GC with no valid attachments: %v", got)
	}
	testutil.WaitNoLinks(t, h.ns, "nmv")
}

func testCNIStatus(t *testing.T, bin string) {
	h := newCNIHost(t, bin)
	c := h.libCNI(t.TempDir())
	good := loadList(t, h.conflist("1.1.0", "stat", `, "subnets": ["10.254.0.0/24"]`))
	if err := h.do(func() error { return c.GetStatusNetworkList(context.Background(), good) }); err != nil {
		t.Fatalf("STATUS: %v", err)
	}
	file := filepath.Join(t.TempDir(), "not-a-dir")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	bad := loadList(t, fmt.Sprintf(`{"cniVersion": "1.1.0", "name": "stat", "plugins": [{"type": "netmgr-cni", "driver": "bridge",
		"subnets": ["10.254.0.0/24"], "stateDir": %q, "runDir": %q}]}`, filepath.Join(file, "state"), h.run))
	err := h.do(func() error { return c.GetStatusNetworkList(context.Background(), bad) })
	if cniCode(err) != int(types.ErrPluginNotAvailable) || !strings.Contains(err.Error(), "stateDir") {
		t.Fatalf("STATUS with an unwritable state dir: %v, want code 50 naming stateDir", err)
	}
}

func testCNIBadConfig(t *testing.T, bin string) {
	h := newCNIHost(t, bin)
	c := h.libCNI(t.TempDir())
	pod := testutil.NewNS(t, "pod")
	for _, tc := range []struct {
		name, version, extra string
		caps                 map[string]any
		code                 uint
		want                 string
	}{
		{"bad CIDR", "1.1.0", `, "subnets": ["10.250.0.0/33"]`, nil, types.ErrInvalidNetworkConfig, "not a CIDR"},
		{"host bits", "1.1.0", `, "subnets": ["10.250.0.1/24"]`, nil, types.ErrInvalidNetworkConfig, "did you mean 10.250.0.0/24"},
		{"unknown driver", "1.1.0", `, "subnets": ["10.250.0.0/24"], "driver": "nosuch"`, nil, types.ErrInvalidNetworkConfig, "unknown driver"},
		{"missing subnets", "1.1.0", ``, nil, types.ErrInvalidNetworkConfig, `"subnets" is missing`},
		{"bad option", "1.1.0", `, "subnets": ["10.250.0.0/24"], "options": {"colour": "red"}`, nil, types.ErrInvalidNetworkConfig, "unknown bridge option"},
		{"old cniVersion", "0.2.0", `, "subnets": ["10.250.0.0/24"]`, nil, types.ErrIncompatibleCNIVersion, "incompatible"},
		{"future cniVersion", "9.9.9", `, "subnets": ["10.250.0.0/24"]`, nil, types.ErrIncompatibleCNIVersion, "incompatible"},
		{"sctp port", "1.1.0", `, "subnets": ["10.250.0.0/24"], "capabilities": {"portMappings": true}`,
			map[string]any{"portMappings": []map[string]any{{"hostPort": 8080, "containerPort": 80, "protocol": "sctp"}}},
			types.ErrUnsupportedField, "tcp and udp"},
		{"bad static ip", "1.1.0", `, "subnets": ["10.250.0.0/24"], "capabilities": {"ips": true}`,
			map[string]any{"ips": []string{"10.9.9.9/24"}}, types.ErrInvalidNetworkConfig, "not in any subnet"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			list := loadList(t, h.conflist(tc.version, "bad", tc.extra))
			err := h.do(func() error {
				_, err := c.AddNetworkList(context.Background(), list, &libcni.RuntimeConf{ContainerID: "bad", NetNS: pod.Path(), IfName: "eth0", CapabilityArgs: tc.caps})
				return err
			})
			if cniCode(err) != int(tc.code) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v (code %d), want code %d saying %q", err, cniCode(err), tc.code, tc.want)
			}
			if got := linkNames(t, pod); !slices.Equal(got, []string{"lo"}) {
				t.Errorf("pod namespace changed: %v", got)
			}
			for _, l := range linkNames(t, h.ns) {
				if strings.HasPrefix(l, "nmv") {
					t.Errorf("host namespace has %s", l)
				}
			}
			if got := h.attached("bad"); len(got) != 0 {
				t.Errorf("attachments recorded: %v", got)
			}
		})
	}
	t.Run("missing driver", func(t *testing.T) {
		list := loadList(t, fmt.Sprintf(`{"cniVersion": "1.1.0", "name": "bad", "plugins": [{"type": "netmgr-cni", "subnets": ["10.250.0.0/24"], "stateDir": %q}]}`, h.state))
		err := h.do(func() error {
			_, err := c.AddNetworkList(context.Background(), list, &libcni.RuntimeConf{ContainerID: "bad", NetNS: pod.Path(), IfName: "eth0"})
			return err
		})
		if cniCode(err) != int(types.ErrInvalidNetworkConfig) || !strings.Contains(err.Error(), `"driver" is missing`) {
			t.Fatalf("got %v", err)
		}
	})
	// Nothing was created by any of them: not even the network.
	if nets, err := h.manager().Networks(context.Background()); err != nil || len(nets) != 0 {
		t.Errorf("networks recorded after bad configurations: %v, %v", nets, err)
	}
}

func testCNIMismatch(t *testing.T, bin string) {
	h := newCNIHost(t, bin)
	c := h.libCNI(t.TempDir())
	pod1, pod2 := testutil.NewNS(t, "pod1"), testutil.NewNS(t, "pod2")
	first := loadList(t, h.conflist("1.1.0", "mm", `, "subnets": ["10.249.0.0/24"]`))
	if _, err := h.add(c, first, "pod1", pod1); err != nil {
		t.Fatal(err)
	}
	changed := loadList(t, h.conflist("1.1.0", "mm", `, "subnets": ["10.248.0.0/24"]`))
	_, err := h.add(c, changed, "pod2", pod2)
	if cniCode(err) != int(types.ErrInvalidNetworkConfig) || !strings.Contains(err.Error(), "subnets [10.249.0.0/24] (configuration: [10.248.0.0/24])") {
		t.Fatalf("ADD with changed subnets: %v, want code 7 naming both", err)
	}
	if got := linkNames(t, pod2); !slices.Equal(got, []string{"lo"}) {
		t.Errorf("pod2 changed: %v", got)
	}
	if got := h.attached("mm"); len(got) != 1 {
		t.Errorf("network holds %v, want pod1 only", got)
	}
	if err := h.del(c, first, "pod1", pod1.Path()); err != nil {
		t.Fatal(err)
	}
}

func testCNIConcurrentFirstAdd(t *testing.T, bin string) {
	h := newCNIHost(t, bin)
	h.writeConf("10-pods.conflist", h.conflist("1.0.0", "race", `, "subnets": ["10.247.0.0/24"]`))
	c := h.goCNI()
	const n = 6
	pods := make([]*sandbox.NetNS, n)
	for i := range pods {
		pods[i] = testutil.NewNS(t, fmt.Sprint("p", i))
	}
	ips := make([]netip.Addr, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := h.setup(c, fmt.Sprint("p", i), pods[i])
			if err == nil {
				if cfg := res.Interfaces["eth0"]; cfg != nil && len(cfg.IPConfigs) > 0 {
					a, _ := netip.AddrFromSlice(cfg.IPConfigs[0].IP)
					ips[i] = a.Unmap()
				}
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	seen := map[netip.Addr]bool{}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("concurrent first ADD #%d: %v", i, err)
		}
		if !ips[i].IsValid() || seen[ips[i]] {
			t.Fatalf("ADD #%d got address %v; all: %v", i, ips[i], ips)
		}
		seen[ips[i]] = true
	}
	for i := range pods {
		if err := h.remove(c, fmt.Sprint("p", i), pods[i].Path()); err != nil {
			t.Fatal(err)
		}
	}
}

func testCNIStaticIPAndMAC(t *testing.T, bin string) {
	h := newCNIHost(t, bin)
	h.writeConf("10-pods.conflist", h.conflist("1.0.0", "static", `, "subnets": ["10.246.0.0/24"], "capabilities": {"ips": true, "mac": true}`))
	c := h.goCNI()
	pod := testutil.NewNS(t, "pod")
	res, err := h.setup(c, "pod", pod, gocni.WithCapability("ips", []string{"10.246.0.42/24"}), gocni.WithCapability("mac", "02:42:0a:f6:00:2a"))
	if err != nil {
		t.Fatal(err)
	}
	if ip := eth0IP(t, res); ip != netip.MustParseAddr("10.246.0.42") {
		t.Errorf("address %s, want the requested 10.246.0.42", ip)
	}
	if mac := res.Interfaces["eth0"].Mac; mac != "02:42:0a:f6:00:2a" {
		t.Errorf("mac %s, want the requested one", mac)
	}
	// The same address for a second pod is refused with netmgr-cni's own code.
	pod2 := testutil.NewNS(t, "pod2")
	_, err = h.setup(c, "pod2", pod2, gocni.WithCapability("ips", []string{"10.246.0.42"}))
	if cniCode(err) != 101 {
		t.Errorf("second ADD with a taken address: %v, want code 101", err)
	}
	if err := h.remove(c, "pod", pod.Path()); err != nil {
		t.Fatal(err)
	}
	if err := h.remove(c, "pod2", pod2.Path()); err != nil {
		t.Fatal(err)
	}
}

func testCNIChainPortmap(t *testing.T, bin string) {
	if _, err := exec.LookPath("iptables"); err != nil {
		t.Skip("the portmap plugin needs iptables (apt-get install iptables)")
	}
	h := newCNIHost(t, bin)
	h.writeConf("10-pods.conflist", h.conflist("1.0.0", "pm", `, "subnets": ["10.245.0.0/24"]`,
		`{"type": "portmap", "capabilities": {"portMappings": true}}`))
	c := h.goCNI()
	out := testutil.NewOutside(t, h.ns)
	pod := testutil.NewNS(t, "web")
	res, err := h.setup(c, "web", pod, gocni.WithCapabilityPortMap([]gocni.PortMapping{{HostPort: 18080, ContainerPort: 80, Protocol: "tcp"}}))
	if err != nil {
		t.Fatal(err)
	}
	testutil.Listen(t, pod, eth0IP(t, res).String()+":80")
	target := net.JoinHostPort(out.HostIP.String(), "18080")
	if _, err := testutil.Dial(out.NS, target); err != nil {
		t.Fatalf("published port %s unreachable from outside: %v", target, err)
	}
	if err := h.remove(c, "web", pod.Path()); err != nil {
		t.Fatal(err)
	}
	if err := testutil.DialBlocked(out.NS, target); err != nil {
		t.Errorf("port %s after DEL: %v", target, err)
	}
}

// netmgr-cni serves the portMappings capability itself, with netmgr's published ports.
func testCNIPortMappings(t *testing.T, bin string) {
	h := newCNIHost(t, bin)
	h.writeConf("10-pods.conflist", h.conflist("1.0.0", "pub", `, "subnets": ["10.243.0.0/24"], "capabilities": {"portMappings": true}`))
	c := h.goCNI()
	out := testutil.NewOutside(t, h.ns)
	web := testutil.NewNS(t, "web")
	ports := gocni.WithCapabilityPortMap([]gocni.PortMapping{{HostPort: 18081, ContainerPort: 80, Protocol: "tcp"}})
	res, err := h.setup(c, "web", web, ports)
	if err != nil {
		t.Fatal(err)
	}
	testutil.Listen(t, web, eth0IP(t, res).String()+":80")
	target := net.JoinHostPort(out.HostIP.String(), "18081")
	if _, err := testutil.Dial(out.NS, target); err != nil {
		t.Fatalf("published port %s unreachable from outside: %v", target, err)
	}
	// The port is taken: a second pod asking for it gets netmgr-cni's code 101 and nothing else.
	other := testutil.NewNS(t, "other")
	if _, err := h.setup(c, "other", other, ports); cniCode(err) != 101 {
		t.Fatalf("second pod on the same host port: %v, want code 101", err)
	}
	if got := linkNames(t, other); !slices.Equal(got, []string{"lo"}) {
		t.Errorf("refused pod's namespace changed: %v", got)
	}
	if err := h.remove(c, "web", web.Path()); err != nil {
		t.Fatal(err)
	}
	if err := testutil.DialBlocked(out.NS, target); err != nil {
		t.Errorf("port %s after DEL: %v", target, err)
	}
	// Freed by DEL: the other pod gets it now.
	if _, err := h.setup(c, "other", other, ports); err != nil {
		t.Fatalf("port not freed by DEL: %v", err)
	}
	if err := h.remove(c, "other", other.Path()); err != nil {
		t.Fatal(err)
	}
}

// netmgr-cni with netmgr's macvlan driver, on a veth standing for the node's uplink.
func testCNIMacvlan(t *testing.T, bin string) {
	h := newCNIHost(t, bin)
	hh, err := h.ns.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer hh.Close()
	if err := hh.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "uplink"}, PeerName: "uplink-peer"}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"uplink", "uplink-peer"} {
		l, err := hh.LinkByName(n)
		if err == nil {
			err = hh.LinkSetUp(l)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	h.writeConf("10-mv.conflist", strings.Replace(h.conflist("1.0.0", "mv", `, "subnets": ["10.242.0.0/24"], "options": {"parent": "uplink"}`),
		`"driver": "bridge"`, `"driver": "macvlan"`, 1))
	c := h.goCNI()
	a, b := testutil.NewNS(t, "a"), testutil.NewNS(t, "b")
	if _, err := h.setup(c, "a", a); err != nil {
		t.Fatal(err)
	}
	res, err := h.setup(c, "b", b)
	if err != nil {
		t.Fatal(err)
	}
	if err := testutil.Ping(a, eth0IP(t, res).String()); err != nil {
		t.Fatalf("macvlan pods cannot reach each other: %v", err)
	}
	if err := h.check("a", a); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	for id, ns := range map[string]*sandbox.NetNS{"a": a, "b": b} {
		if err := h.remove(c, id, ns.Path()); err != nil {
			t.Fatal(err)
		}
		testutil.WaitNoLinks(t, ns, "eth0")
		testutil.WaitNoLinks(t, ns, "nmgone")
	}
	if got := h.attached("mv"); len(got) != 0 {
		t.Errorf("after DEL the network holds %v", got)
	}
}

func testCNIDualStack(t *testing.T, bin string) {
	h := newCNIHost(t, bin)
	h.writeConf("10-pods.conflist", h.conflist("1.0.0", "ds", `, "subnets": ["10.241.0.0/24", "fd00:241::/64"]`))
	c := h.goCNI()
	a, b := testutil.NewNS(t, "a"), testutil.NewNS(t, "b")
	var v6 [2]netip.Addr
	for i, ns := range []*sandbox.NetNS{a, b} {
		res, err := h.setup(c, fmt.Sprint("ds", i), ns)
		if err != nil {
			t.Fatal(err)
		}
		raw := res.Raw()[1]
		var fams []string
		for _, ipc := range raw.IPs {
			ip, _ := netip.AddrFromSlice(ipc.Address.IP)
			if ip.Unmap().Is6() {
				v6[i] = ip
				fams = append(fams, "6")
			} else {
				fams = append(fams, "4")
			}
		}
		var dsts []string
		for _, r := range raw.Routes {
			dsts = append(dsts, r.Dst.String())
		}
		slices.Sort(dsts)
		if strings.Join(fams, "") != "46" || strings.Join(dsts, " ") != "0.0.0.0/0 ::/0" {
			t.Fatalf("result ips %v routes %v: want one address and one default route per family", raw.IPs, raw.Routes)
		}
	}
	addr := testutil.Listen(t, b, net.JoinHostPort(v6[1].String(), "8080"))
	if seen, err := testutil.Dial(a, addr); err != nil || seen != v6[0].String() {
		t.Fatalf("a -> b over IPv6: saw %q, %v", seen, err)
	}
	for i, ns := range []*sandbox.NetNS{a, b} {
		if err := h.remove(c, fmt.Sprint("ds", i), ns.Path()); err != nil {
			t.Fatal(err)
		}
	}
}

// A multi-network pod (Multus, nerdctl with two networks): one container gets eth0 and eth1 on network
// A and eth2 on dual-stack network B, each its own ADD into the same namespace. Only the first
// attachment of each family installs a default route, and each result says which one it has.
func testCNIMultiNetwork(t *testing.T, bin string) {
	h := newCNIHost(t, bin)
	c := h.libCNI(t.TempDir())
	netA := loadList(t, h.conflist("1.1.0", "mna", `, "subnets": ["10.240.0.0/24"]`))
	netB := loadList(t, h.conflist("1.1.0", "mnb", `, "subnets": ["10.239.0.0/24", "fd00:239::/64"]`))
	pod := testutil.NewNS(t, "multi")
	type att struct {
		list   *libcni.NetworkConfigList
		ifname string
		routes string // the default routes the result must report
	}
	atts := []att{
		{netA, "eth0", "0.0.0.0/0 via 10.240.0.1"},
		{netA, "eth1", ""},                     // the same network again: a second address, no second route
		{netB, "eth2", "::/0 via fd00:239::1"}, // IPv4 has its default route already, IPv6 not yet
	}
	for _, a := range atts {
		res, err := h.addIf(c, a.list, rtConf("multi", pod.Path(), a.ifname, nil))
		if err != nil {
			t.Fatalf("ADD %s on %s: %v", a.ifname, a.list.Name, err)
		}
		var routes []string
		for _, r := range res.Routes {
			routes = append(routes, fmt.Sprintf("%s via %s", r.Dst.String(), r.GW))
		}
		if got := strings.Join(routes, ", "); got != a.routes {
			t.Errorf("ADD %s: result routes %q, want %q", a.ifname, got, a.routes)
		}
		if len(res.IPs) == 0 {
			t.Fatalf("ADD %s: no address in the result", a.ifname)
		}
		for _, ipc := range res.IPs {
			if ipc.Interface == nil || res.Interfaces[*ipc.Interface].Name != a.ifname {
				t.Errorf("ADD %s: address %v is not on %s", a.ifname, ipc, a.ifname)
			}
			// A gateway is reported only where the interface has its default route.
			fam := "0.0.0.0/0"
			if ipc.Address.IP.To4() == nil {
				fam = "::/0"
			}
			if want := strings.Contains(a.routes, fam); (ipc.Gateway != nil) != want {
				t.Errorf("ADD %s: address %s has gateway %v; want one: %v", a.ifname, ipc.Address.String(), ipc.Gateway, want)
			}
		}
		if got := addrsOf(t, pod, a.ifname); len(got) != len(res.IPs) {
			t.Errorf("%s has addresses %v, result %v", a.ifname, got, res.IPs)
		}
	}
	if got := defaultRoutes(t, pod, netlink.FAMILY_V4); !slices.Equal(got, []string{"via 10.240.0.1 dev eth0"}) {
		t.Errorf("IPv4 default routes %v, want the one via eth0", got)
	}
	if got := defaultRoutes(t, pod, netlink.FAMILY_V6); !slices.Equal(got, []string{"via fd00:239::1 dev eth2"}) {
		t.Errorf("IPv6 default routes %v, want the one via eth2", got)
	}
	for _, a := range atts {
		if err := h.checkIf(c, a.list, rtConf("multi", pod.Path(), a.ifname, nil)); err != nil {
			t.Errorf("CHECK %s: %v", a.ifname, err)
		}
	}
	if err := testutil.Ping(pod, "10.239.0.1"); err != nil {
		t.Errorf("network B's gateway unreachable over eth2: %v", err)
	}
	// A real conflict: eth1 on network B, while eth1 is network A's. Code 101 naming the interface,
	// and nothing changes.
	before := linkNames(t, pod)
	_, err := h.addIf(c, netB, rtConf("multi", pod.Path(), "eth1", nil))
	if cniCode(err) != 101 || !strings.Contains(err.Error(), "eth1") {
		t.Errorf("ADD eth1 on a second network: %v (code %d), want code 101 naming eth1", err, cniCode(err))
	}
	if got := linkNames(t, pod); !slices.Equal(got, before) {
		t.Errorf("refused ADD changed the pod: %v, was %v", got, before)
	}
	if got := h.attached("mnb"); len(got) != 1 {
		t.Errorf("network B holds %v after the refused ADD, want eth2's attachment only", got)
	}
	// DEL of the first attachment takes its default route along; the runtime owns routes from then
	// on (netmgr-cni does not move it to eth1). Then the rest.
	for _, a := range atts {
		if err := h.delIf(c, a.list, rtConf("multi", pod.Path(), a.ifname, nil)); err != nil {
			t.Fatalf("DEL %s: %v", a.ifname, err)
		}
		testutil.WaitNoLinks(t, pod, a.ifname)
	}
	testutil.WaitNoLinks(t, pod, "nmgone")
	testutil.WaitNoLinks(t, h.ns, "nmv")
	if got := linkNames(t, pod); !slices.Equal(got, []string{"lo"}) {
		t.Errorf("pod after every DEL: %v", got)
	}
	for _, n := range []string{"mna", "mnb"} {
		if got := h.attached(n); len(got) != 0 {
			t.Errorf("network %s still holds %v", n, got)
		}
	}
}

// A corrupt runtime.db (every page but bbolt's two meta pages overwritten with random bytes): every
// command still answers with CNI error JSON on stdout and a non-zero exit, never a Go trace; STATUS
// says "plugin not available" (50). The container's interfaces survive the failed DEL.
func testCNICorruptState(t *testing.T, bin string) {
	h := newCNIHost(t, bin)
	c := h.libCNI(t.TempDir())
	body := fmt.Sprintf(`{"type": "netmgr-cni", "driver": "bridge", "subnets": ["10.238.0.0/24"], "stateDir": %q, "runDir": %q}`, h.state, h.run)
	list := loadList(t, fmt.Sprintf(`{"cniVersion": "1.1.0", "name": "corrupt", "plugins": [%s]}`, body))
	conf := fmt.Sprintf(`{"cniVersion": "1.1.0", "name": "corrupt", %s`, body[1:])
	pod := testutil.NewNS(t, "pod")
	if _, err := h.addIf(c, list, rtConf("pod", pod.Path(), "eth0", nil)); err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(h.run, "runtime.db")
	f, err := os.OpenFile(db, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	page := int64(os.Getpagesize())
	junk := make([]byte, max(st.Size()-2*page, 4*page)) // pages 2-5 at least, as dd seek=2 count=4 would
	if _, err := rand.Read(junk); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(junk, 2*page); err != nil {
		t.Fatal(err)
	}
	f.Close()
	pod2 := testutil.NewNS(t, "pod2")
	for _, tc := range []struct {
		cmd, id string
		ns      *sandbox.NetNS
		code    uint // 0: any
	}{
		{"ADD", "pod2", pod2, 0},
		{"DEL", "pod", pod, 0},
		{"CHECK", "pod", pod, 0},
		{"STATUS", "", nil, types.ErrPluginNotAvailable},
	} {
		path := ""
		if tc.ns != nil {
			path = tc.ns.Path()
		}
		e := cniErrorOf(t, tc.cmd, h.runPlugin(tc.cmd, tc.id, path, "eth0", conf))
		if tc.code != 0 && e.Code != tc.code {
			t.Errorf("%s: code %d (%s), want %d", tc.cmd, e.Code, e.Msg, tc.code)
		}
		t.Logf("%s: code %d: %s", tc.cmd, e.Code, e.Msg)
	}
	if got := addrsOf(t, pod, "eth0"); len(got) != 1 {
		t.Errorf("after the failed DEL the pod's eth0 has %v, want its address", got)
	}
	if got := linkNames(t, pod2); !slices.Equal(got, []string{"lo"}) {
		t.Errorf("the failed ADD left %v", got)
	}
	// A truncated netmgr.db faults on the memory bbolt maps it to (SIGBUS): the same answers.
	if err := os.Truncate(filepath.Join(h.state, "netmgr.db"), 10000); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"ADD", "STATUS"} {
		e := cniErrorOf(t, "truncated "+cmd, h.runPlugin(cmd, "pod2", pod2.Path(), "eth0", conf))
		if cmd == "STATUS" && e.Code != types.ErrPluginNotAvailable {
			t.Errorf("STATUS: code %d (%s), want 50", e.Code, e.Msg)
		}
		t.Logf("truncated %s: code %d: %s", cmd, e.Code, e.Msg)
	}
}

// A DEL that cannot update the record (here the sandbox's lock file cannot be opened) leaves the
// container's interfaces as the record describes them, so that CHECK still passes and a retried DEL
// finds them; before, the interfaces were renamed, set down and destroyed while the record stayed.
func testCNIFailedDelKeepsInterfaces(t *testing.T, bin string) {
	h := newCNIHost(t, bin)
	c := h.libCNI(t.TempDir())
	list := loadList(t, h.conflist("1.1.0", "faildel", `, "subnets": ["10.237.0.0/24"]`))
	pod := testutil.NewNS(t, "pod")
	rt := rtConf("pod", pod.Path(), "eth0", nil)
	if _, err := h.addIf(c, list, rt); err != nil {
		t.Fatal(err)
	}
	lock := filepath.Join(h.run, "locks", "sandbox-"+sandboxNameFor("faildel", "pod", "eth0")+".lock")
	if err := os.Remove(lock); err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	if err := os.MkdirAll(lock, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := h.delIf(c, list, rt); err == nil {
		t.Fatal("DEL succeeded though its lock file is a directory")
	}
	if got := addrsOf(t, pod, "eth0"); len(got) != 1 {
		t.Fatalf("after the failed DEL eth0 has %v", got)
	}
	if err := h.checkIf(c, list, rt); err != nil {
		t.Errorf("CHECK after the failed DEL: %v", err)
	}
	if got := defaultRoutes(t, pod, netlink.FAMILY_V4); len(got) != 1 {
		t.Errorf("default routes after the failed DEL: %v", got)
	}
	if err := os.Remove(lock); err != nil {
		t.Fatal(err)
	}
	if err := h.delIf(c, list, rt); err != nil {
		t.Fatalf("retried DEL: %v", err)
	}
	testutil.WaitNoLinks(t, pod, "eth0")
	testutil.WaitNoLinks(t, pod, "nmgone")
	testutil.WaitNoLinks(t, h.ns, "nmv")
	if got := h.attached("faildel"); len(got) != 0 {
		t.Errorf("network still holds %v", got)
	}
}

// CHECK notices a host end taken off its bridge (ip link set HOST nomaster) and a container MAC
// changed behind netmgr's back, with the code of every other tampering CHECK finds (103).
func testCNICheckTampering(t *testing.T, bin string) {
	h := newCNIHost(t, bin)
	c := h.libCNI(t.TempDir())
	list := loadList(t, h.conflist("1.1.0", "tamper", `, "subnets": ["10.236.0.0/24"]`))
	pod := testutil.NewNS(t, "pod")
	rt := rtConf("pod", pod.Path(), "eth0", nil)
	if _, err := h.addIf(c, list, rt); err != nil {
		t.Fatal(err)
	}
	if err := h.checkIf(c, list, rt); err != nil {
		t.Fatalf("CHECK of an intact attachment: %v", err)
	}
	m := h.manager()
	sb, err := m.Sandbox(context.Background(), sandboxNameFor("tamper", "pod", "eth0"))
	if err != nil {
		t.Fatal(err)
	}
	n, err := m.Network(context.Background(), "tamper")
	if err != nil {
		t.Fatal(err)
	}
	hh, err := h.ns.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer hh.Close()
	host, err := hh.LinkByName(sb.Attachments[0].HostInterface)
	if err != nil {
		t.Fatal(err)
	}
	br, err := hh.LinkByName(n.Options["bridge"])
	if err != nil {
		t.Fatal(err)
	}
	if err := hh.LinkSetNoMaster(host); err != nil {
		t.Fatal(err)
	}
	if err := h.checkIf(c, list, rt); cniCode(err) != 103 || !strings.Contains(err.Error(), "not a port of bridge "+n.Options["bridge"]) {
		t.Errorf("CHECK with the host end off its bridge: %v, want code 103 naming the bridge", err)
	}
	if err := hh.LinkSetMaster(host, br); err != nil {
		t.Fatal(err)
	}
	if err := h.checkIf(c, list, rt); err != nil {
		t.Fatalf("CHECK with the host end back on its bridge: %v", err)
	}
	ph, err := pod.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer ph.Close()
	eth0, err := ph.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if err := ph.LinkSetHardwareAddr(eth0, net.HardwareAddr{2, 0, 0, 0, 0, 1}); err != nil {
		t.Fatal(err)
	}
	if err := h.checkIf(c, list, rt); cniCode(err) != 103 || !strings.Contains(err.Error(), "MAC address 02:00:00:00:00:01") {
		t.Errorf("CHECK with a changed MAC: %v, want code 103 naming it", err)
	}
	if err := h.delIf(c, list, rt); err != nil {
		t.Fatal(err)
	}
	testutil.WaitNoLinks(t, h.ns, "nmv")
}

// Error 8 ("invalid netns") is for the container's namespace only: a macvlan parent that is not there
// is a configuration error (7) naming the parent.
func testCNINotFoundCodes(t *testing.T, bin string) {
	h := newCNIHost(t, bin)
	c := h.libCNI(t.TempDir())
	pod := testutil.NewNS(t, "pod")
	mv := loadList(t, strings.Replace(h.conflist("1.1.0", "mvgone", `, "subnets": ["10.235.0.0/24"], "options": {"parent": "nosuch0"}`),
		`"driver": "bridge"`, `"driver": "macvlan"`, 1))
	_, err := h.addIf(c, mv, rtConf("pod", pod.Path(), "eth0", nil))
	if cniCode(err) != int(types.ErrInvalidNetworkConfig) || !strings.Contains(err.Error(), "nosuch0") {
		t.Errorf("ADD on a macvlan network with a missing parent: %v (code %d), want code 7 naming the parent", err, cniCode(err))
	}
	notNS := filepath.Join(t.TempDir(), "netns")
	if err := os.WriteFile(notNS, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	br := loadList(t, h.conflist("1.1.0", "nsgone", `, "subnets": ["10.234.0.0/24"]`))
	for _, path := range []string{notNS, filepath.Join(t.TempDir(), "missing")} {
		_, err = h.addIf(c, br, rtConf("pod", path, "eth0", nil))
		if cniCode(err) != int(types.ErrInvalidNetNS) || !strings.Contains(err.Error(), path) {
			t.Errorf("ADD into %s: %v (code %d), want code 8 naming it", path, err, cniCode(err))
		}
	}
	if got := linkNames(t, pod); !slices.Equal(got, []string{"lo"}) {
		t.Errorf("pod changed: %v", got)
	}
}

// A repeated ADD (a runtime retrying) gets the same result; one that asks for other ports, another
// address or MAC than the attachment has is refused with 102 naming the difference, and changes
// nothing.
func testCNIRepeatedAdd(t *testing.T, bin string) {
	h := newCNIHost(t, bin)
	c := h.libCNI(t.TempDir())
	list := loadList(t, h.conflist("1.1.0", "again", `, "subnets": ["10.233.0.0/24"], "capabilities": {"ips": true, "mac": true, "portMappings": true}`))
	pod := testutil.NewNS(t, "pod")
	ports := func(host int) []map[string]any {
		return []map[string]any{{"hostPort": host, "containerPort": 80, "protocol": "tcp"}}
	}
	caps := map[string]any{"ips": []string{"10.233.0.10/24"}, "mac": "02:42:0a:e9:00:0a", "portMappings": ports(41001)}
	first, err := h.addIf(c, list, rtConf("pod", pod.Path(), "eth0", caps))
	if err != nil {
		t.Fatal(err)
	}
	again, err := h.addIf(c, list, rtConf("pod", pod.Path(), "eth0", caps))
	if err != nil {
		t.Fatalf("identical repeated ADD: %v", err)
	}
	if a, b := first.IPs[0].Address.String(), again.IPs[0].Address.String(); a != b {
		t.Errorf("repeated ADD: address %s, first %s", b, a)
	}
	name := sandboxNameFor("again", "pod", "eth0")
	for _, tc := range []struct {
		what, key string
		val       any
		want      string
	}{
		{"port mappings", "portMappings", ports(41009), "port mappings [41001:80/tcp] (requested: [41009:80/tcp])"},
		{"no port mappings", "portMappings", []map[string]any{}, "port mappings [41001:80/tcp] (requested: [])"},
		{"address", "ips", []string{"10.233.0.11/24"}, "addresses [10.233.0.10] (requested: [10.233.0.11])"},
		{"mac", "mac", "02:42:0a:e9:00:0b", "mac 02:42:0a:e9:00:0a (requested: 02:42:0a:e9:00:0b)"},
	} {
		changed := maps.Clone(caps)
		changed[tc.key] = tc.val
		_, err := h.addIf(c, list, rtConf("pod", pod.Path(), "eth0", changed))
		if cniCode(err) != 102 || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("repeated ADD with other %s: %v (code %d), want code 102 saying %q", tc.what, err, cniCode(err), tc.want)
		}
		sb, err := h.manager().Sandbox(context.Background(), name)
		if err != nil {
			t.Fatal(err)
		}
		if len(sb.Ports) != 1 || sb.Ports[0].HostPort != 41001 || sb.Attachments[0].IPv4.String() != "10.233.0.10/24" || sb.Attachments[0].MAC != "02:42:0a:e9:00:0a" {
			t.Errorf("after the refused ADD (%s) the attachment is %+v, ports %v", tc.what, sb.Attachments, sb.Ports)
		}
	}
	// Without static addresses or MAC, a repeat asks for nothing the attachment lacks.
	if _, err := h.addIf(c, list, rtConf("pod", pod.Path(), "eth0", map[string]any{"portMappings": ports(41001)})); err != nil {
		t.Errorf("repeated ADD without ips and mac: %v", err)
	}
	if err := h.delIf(c, list, rtConf("pod", pod.Path(), "eth0", caps)); err != nil {
		t.Fatal(err)
	}
	testutil.WaitNoLinks(t, h.ns, "nmv")
}

// Interfaces of one container added at the same time: both ADDs succeed, the namespace gets one
// default route, and exactly the result of the interface that carries it lists it.
func testCNIConcurrentInterfaces(t *testing.T, bin string) {
	h := newCNIHost(t, bin)
	c := h.libCNI(t.TempDir())
	list := loadList(t, h.conflist("1.1.0", "conc", `, "subnets": ["10.232.0.0/24"]`))
	ifs := []string{"eth0", "eth1", "eth2", "eth3"}
	for round := 0; round < 3; round++ {
		pod := testutil.NewNS(t, fmt.Sprint("pod", round))
		results := make([]*types100.Result, len(ifs))
		errs := make([]error, len(ifs))
		var wg sync.WaitGroup
		for i, ifname := range ifs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				results[i], errs[i] = h.addIf(c, list, rtConf(fmt.Sprint("c", round), pod.Path(), ifname, nil))
			}()
		}
		wg.Wait()
		var routed []string
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d: concurrent ADD %s: %v", round, ifs[i], err)
			}
			if len(results[i].Routes) > 0 {
				routed = append(routed, ifs[i])
			}
		}
		got := defaultRoutes(t, pod, netlink.FAMILY_V4)
		if len(got) != 1 || len(routed) != 1 || !strings.HasSuffix(got[0], " dev "+routed[0]) {
			t.Errorf("round %d: default routes %v, results list one for %v: want one route, on the interface whose result lists it", round, got, routed)
		}
		for _, ifname := range ifs {
			if err := h.delIf(c, list, rtConf(fmt.Sprint("c", round), pod.Path(), ifname, nil)); err != nil {
				t.Fatal(err)
			}
		}
	}
	testutil.WaitNoLinks(t, h.ns, "nmv")
	if got := h.attached("conc"); len(got) != 0 {
		t.Errorf("network still holds %v", got)
	}
}
