package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"golang.org/x/sys/unix"

	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/store"
)

func conf(extra string) []byte {
	return []byte(`{"cniVersion": "1.1.0", "name": "pods", "type": "netmgr-cni"` + extra + `}`)
}

func TestCNIConfigParse(t *testing.T) {
	c, err := parseConfig(conf(`, "driver": "bridge", "subnets": ["10.250.0.0/24", "fd00:250::/64"], "gateways": ["10.250.0.254"],
		"options": {"masquerade": "false"}, "mtu": 1400, "stateDir": "/tmp/s", "runtimeConfig": {"ips": ["10.250.0.7/24"], "mac": "02:00:00:00:00:07"}`),
		"IgnoreUnknown=1;K8S_POD_NAME=x")
	if err != nil {
		t.Fatal(err)
	}
	if c.stateDir != "/tmp/s" || c.runDir != DefaultRunDir {
		t.Errorf("dirs %q %q", c.stateDir, c.runDir)
	}
	if len(c.spec.Subnets) != 2 || c.spec.Gateways[0] != netip.MustParseAddr("10.250.0.254") || c.spec.MTU != 1400 || c.spec.Options["masquerade"] != "false" {
		t.Errorf("spec %+v", c.spec)
	}
	if len(c.ips) != 1 || c.ips[0] != netip.MustParseAddr("10.250.0.7") || c.mac != "02:00:00:00:00:07" {
		t.Errorf("ips %v mac %q", c.ips, c.mac)
	}
	// CNI_ARGS and args.cni are the other ways runtimes ask for an address.
	c, err = parseConfig(conf(`, "driver": "bridge", "subnets": ["10.250.0.0/24"], "args": {"cni": {"ips": ["10.250.0.8"]}}`), "IP=10.250.0.9;MAC=02:00:00:00:00:09")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.ips) != 2 || c.mac != "02:00:00:00:00:09" {
		t.Errorf("ips %v mac %q", c.ips, c.mac)
	}
	// portMappings become published ports.
	c, err = parseConfig(conf(`, "driver": "bridge", "subnets": ["10.250.0.0/24"], "runtimeConfig": {"portMappings": [
		{"hostPort": 8080, "containerPort": 80, "protocol": "TCP"}, {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"}]}`), "")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.publish) != 2 || c.publish[0].String() != "8080:80/tcp" || c.publish[1].String() != "127.0.0.1:5353:53/udp" {
		t.Errorf("publish %v", c.publish)
	}
	// ipRanges stand in for subnets.
	c, err = parseConfig(conf(`, "driver": "bridge", "runtimeConfig": {"ipRanges": [[{"subnet": "10.99.0.0/24", "gateway": "10.99.0.1"}]]}`), "")
	if err != nil {
		t.Fatal(err)
	}
	if c.spec.Subnets[0] != netip.MustParsePrefix("10.99.0.0/24") || c.spec.Gateways[0] != netip.MustParseAddr("10.99.0.1") {
		t.Errorf("from ipRanges: %+v", c.spec)
	}
}

func TestCNIConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name, extra string
		code        uint
		want        string
	}{
		{"missing driver", `, "subnets": ["10.250.0.0/24"]`, types.ErrInvalidNetworkConfig, `"driver" is missing`},
		{"unknown driver", `, "driver": "nosuch", "subnets": ["10.250.0.0/24"]`, types.ErrInvalidNetworkConfig, "unknown driver"},
		{"host driver", `, "driver": "host", "subnets": ["10.250.0.0/24"]`, types.ErrInvalidNetworkConfig, "cannot be used"},
		{"missing subnets", `, "driver": "bridge"`, types.ErrInvalidNetworkConfig, `"subnets" is missing`},
		{"bad CIDR", `, "driver": "bridge", "subnets": ["10.250.0.0/33"]`, types.ErrInvalidNetworkConfig, "not a CIDR"},
		{"host bits", `, "driver": "bridge", "subnets": ["10.250.0.1/24"]`, types.ErrInvalidNetworkConfig, "10.250.0.0/24"},
		{"two IPv4", `, "driver": "bridge", "subnets": ["10.250.0.0/24", "10.251.0.0/24"]`, types.ErrInvalidNetworkConfig, "at most one"},
		{"bad gateway", `, "driver": "bridge", "subnets": ["10.250.0.0/24"], "gateways": ["x"]`, types.ErrInvalidNetworkConfig, "gateway"},
		{"relative stateDir", `, "driver": "bridge", "subnets": ["10.250.0.0/24"], "stateDir": "state"`, types.ErrInvalidNetworkConfig, "absolute"},
		{"negative mtu", `, "driver": "bridge", "subnets": ["10.250.0.0/24"], "mtu": -1`, types.ErrInvalidNetworkConfig, "mtu"},
		{"ip outside", `, "driver": "bridge", "subnets": ["10.250.0.0/24"], "runtimeConfig": {"ips": ["10.9.0.1"]}`, types.ErrInvalidNetworkConfig, "not in any subnet"},
		{"bad ip", `, "driver": "bridge", "subnets": ["10.250.0.0/24"], "runtimeConfig": {"ips": ["ten"]}`, types.ErrInvalidNetworkConfig, "not an IP"},
		{"bad mac", `, "driver": "bridge", "subnets": ["10.250.0.0/24"], "runtimeConfig": {"mac": "zz"}`, types.ErrInvalidNetworkConfig, "mac"},
		{"sctp port", `, "driver": "bridge", "subnets": ["10.250.0.0/24"], "runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 80, "protocol": "sctp"}]}`,
			types.ErrUnsupportedField, "tcp and udp"},
		{"port 0", `, "driver": "bridge", "subnets": ["10.250.0.0/24"], "runtimeConfig": {"portMappings": [{"hostPort": 0, "containerPort": 80}]}`,
			types.ErrInvalidNetworkConfig, "1-65535"},
		{"bad hostIP", `, "driver": "bridge", "subnets": ["10.250.0.0/24"], "runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 80, "hostIP": "x"}]}`,
			types.ErrInvalidNetworkConfig, "hostIP"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseConfig(conf(tc.extra), "")
			var te *types.Error
			if !errors.As(err, &te) || te.Code != tc.code || !strings.Contains(te.Msg, tc.want) {
				t.Fatalf("got %v, want code %d saying %q", err, tc.code, tc.want)
			}
		})
	}
	if _, err := parseDirs([]byte(`{"name": "` + strings.Repeat("n", 64) + `"}`)); err == nil {
		t.Error("a 64-character network name was accepted")
	}
}

func TestCNISandboxName(t *testing.T) {
	a := sandboxName("pods", "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "eth0")
	if a != sandboxName("pods", "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "eth0") {
		t.Error("not deterministic")
	}
	if !regexp.MustCompile(`^cni-[0-9a-f]{32}$`).MatchString(a) {
		t.Errorf("name %q", a)
	}
	seen := map[string]bool{a: true}
	for _, n := range []string{sandboxName("pods", "x", "eth0"), sandboxName("pods", "x", "eth1"), sandboxName("other", "x", "eth0"), sandboxName("pods\x00x", "", "eth0")} {
		if seen[n] {
			t.Errorf("collision: %s", n)
		}
		seen[n] = true
	}
}

func TestCNIValidAttachments(t *testing.T) {
	keep, given, err := validAttachments([]byte(`{"name": "pods", "cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]}`))
	if err != nil || !given || !keep[types.GCAttachment{ContainerID: "a", IfName: "eth0"}] || len(keep) != 1 {
		t.Errorf("keep %v given %v err %v", keep, given, err)
	}
	// null is a list with nothing valid (libcni sends it for an empty slice), absence is no list.
	if keep, given, _ := validAttachments([]byte(`{"name": "pods", "cni.dev/valid-attachments": null}`)); !given || len(keep) != 0 {
		t.Errorf("null: keep %v given %v", keep, given)
	}
	if _, given, _ := validAttachments([]byte(`{"name": "pods"}`)); given {
		t.Error("absent list taken as given")
	}
}

func TestCNIMismatch(t *testing.T) {
	c, err := parseConfig(conf(`, "driver": "bridge", "subnets": ["10.250.0.0/24"], "options": {"masquerade": "false"}`), "")
	if err != nil {
		t.Fatal(err)
	}
	n := &netmgr.Network{Name: "pods", Driver: "bridge", Subnets: []netip.Prefix{netip.MustParsePrefix("10.250.0.0/24")},
		Options: map[string]string{"masquerade": "false", "bridge": "nm-pods"}}
	if err := mismatch(n, c); err != nil {
		t.Fatalf("matching network: %v", err)
	}
	n.Subnets = []netip.Prefix{netip.MustParsePrefix("10.251.0.0/24")}
	n.Options["masquerade"] = "true"
	err = mismatch(n, c)
	var te *types.Error
	if !errors.As(err, &te) || te.Code != types.ErrInvalidNetworkConfig ||
		!strings.Contains(te.Msg, "subnets [10.251.0.0/24] (configuration: [10.250.0.0/24])") ||
		!strings.Contains(te.Msg, `option masquerade="true" (configuration: "false")`) || !strings.Contains(te.Msg, "network rm pods") {
		t.Fatalf("mismatch: %v", err)
	}
}

func TestCNIErrorCodes(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code uint
	}{
		{fmt.Errorf("x: %w", netmgr.ErrBusy), types.ErrTryAgainLater},
		{fmt.Errorf("x: %w", netmgr.ErrInvalid), types.ErrInvalidNetworkConfig},
		{fmt.Errorf("x: %w", netmgr.ErrFull), ErrNetworkFull},
		{fmt.Errorf("x: %w", netmgr.ErrExists), ErrExists},
		// Only the container's netns is error 8; a missing macvlan parent is the configuration's.
		{fmt.Errorf("create network: %w: parent interface eth9 is not in the host namespace", netmgr.ErrNotFound), types.ErrInvalidNetworkConfig},
		{checkNetNS("/proc/self/no-such-netns"), types.ErrInvalidNetNS},
		{checkNetNS("/proc/self/status"), types.ErrInvalidNetNS}, // a file, but no netns
		{fmt.Errorf("open store: %w", store.ErrCorrupt), types.ErrInternal},
		// A corrupt file wins over what else the error says (a corrupt record is no "not found").
		{fmt.Errorf("%w: %w", netmgr.ErrNotFound, store.ErrCorrupt), types.ErrInternal},
		{errors.New("disk on fire"), types.ErrInternal},
		{types.NewError(42, "as is", ""), 42},
	} {
		var te *types.Error
		if !errors.As(cniError(tc.err), &te) || te.Code != tc.code {
			t.Errorf("%v: got %v, want code %d", tc.err, cniError(tc.err), tc.code)
		}
	}
}

// A panic in a command (bbolt asserting on a corrupt page) or a memory fault becomes a CNI error with a
// one-line message: 999, and 50 for STATUS.
func TestCNIGuard(t *testing.T) {
	boom := func(*skel.CmdArgs) error {
		panic("assertion failed: Page expected to be: 4,\nbut self identifies as 17")
	}
	for _, code := range []uint{types.ErrInternal, types.ErrPluginNotAvailable} {
		err := guard(code, boom)(&skel.CmdArgs{})
		var te *types.Error
		if !errors.As(err, &te) || te.Code != code || strings.Contains(te.Msg, "\n") || !strings.Contains(te.Msg, "but self identifies as 17") {
			t.Errorf("guarded panic: %#v, want code %d with the panic's message on one line", err, code)
		}
	}
	// A real fault, as bbolt meets on a truncated state file: a read of a mapped page the file no
	// longer has (SIGBUS). Without SetPanicOnFault it kills the process, test binary included.
	fault := func(*skel.CmdArgs) error {
		f, err := os.CreateTemp(t.TempDir(), "mapped")
		if err != nil {
			return err
		}
		defer f.Close()
		if err := f.Truncate(4096); err != nil {
			return err
		}
		m, err := unix.Mmap(int(f.Fd()), 0, 4096, unix.PROT_READ, unix.MAP_SHARED)
		if err != nil {
			return err
		}
		defer unix.Munmap(m) //nolint:errcheck
		if err := f.Truncate(0); err != nil {
			return err
		}
		return fmt.Errorf("read %d past the end of the file", m[0])
	}
	if err := guard(types.ErrInternal, fault)(&skel.CmdArgs{}); cniCodeOf(err) != types.ErrInternal || !strings.Contains(err.Error(), "memory fault at") {
		t.Errorf("guarded fault: %v, want code %d naming a memory fault", err, types.ErrInternal)
	}
	if err := guard(types.ErrInternal, func(*skel.CmdArgs) error { return nil })(&skel.CmdArgs{}); err != nil {
		t.Errorf("guarded success: %v", err)
	}
}

func cniCodeOf(err error) uint {
	var te *types.Error
	if errors.As(err, &te) {
		return te.Code
	}
	return 0
}

func TestCNIResult(t *testing.T) {
	c, err := parseConfig(conf(`, "driver": "bridge", "subnets": ["10.250.0.0/24"], "dns": {"nameservers": ["10.250.0.1"]}`), "")
	if err != nil {
		t.Fatal(err)
	}
	n := &netmgr.Network{Name: "pods", Subnets: []netip.Prefix{netip.MustParsePrefix("10.250.0.0/24")}, Gateways: []netip.Addr{netip.MustParseAddr("10.250.0.1")}}
	sb := &netmgr.Sandbox{Name: "cni-x", Attachments: []netmgr.Attachment{{
		Network: "pods", Interface: "eth0", HostInterface: "nmv-does-not-exist", MAC: "02:00:00:00:00:01",
		Addrs: []netip.Prefix{netip.MustParsePrefix("10.250.0.5/24")}, Gateways: []netip.Addr{netip.MustParseAddr("10.250.0.1")},
	}}}
	r, err := buildResult(c, n, sb, &skel.CmdArgs{Netns: "/run/netns/x", IfName: "eth0"})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Interfaces) != 2 || r.Interfaces[1].Sandbox != "/run/netns/x" || r.Interfaces[0].Sandbox != "" {
		t.Fatalf("interfaces %v", r.Interfaces)
	}
	if len(r.IPs) != 1 || *r.IPs[0].Interface != 1 || r.IPs[0].Address.String() != "10.250.0.5/24" || r.IPs[0].Gateway.String() != "10.250.0.1" {
		t.Errorf("ips %v", r.IPs)
	}
	if len(r.Routes) != 1 || r.Routes[0].Dst.String() != "0.0.0.0/0" || len(r.DNS.Nameservers) != 1 {
		t.Errorf("routes %v dns %v", r.Routes, r.DNS)
	}
	// Without dns in the configuration the result names the network's DNS server, the gateway; not
	// with --opt dns=false, nor on macvlan.
	c2, err := parseConfig(conf(`, "driver": "bridge", "subnets": ["10.250.0.0/24"]`), "")
	if err != nil {
		t.Fatal(err)
	}
	n.Driver = "bridge"
	if r2, err := buildResult(c2, n, sb, &skel.CmdArgs{Netns: "/run/netns/x", IfName: "eth0"}); err != nil || fmt.Sprint(r2.DNS.Nameservers) != "[10.250.0.1]" {
		t.Errorf("dns field %v, %v; want the gateway", r2.DNS, err)
	}
	for _, mod := range []func(){func() { n.Options = map[string]string{"dns": "false"} }, func() { n.Options, n.Driver = nil, "macvlan" }} {
		mod()
		if r2, err := buildResult(c2, n, sb, &skel.CmdArgs{Netns: "/run/netns/x", IfName: "eth0"}); err != nil || len(r2.DNS.Nameservers) != 0 {
			t.Errorf("dns field %v, %v; want none (%s, %v)", r2.DNS, err, n.Driver, n.Options)
		}
	}
	// Converted down for an older configuration, indexes survive.
	old, err := r.GetAsVersion("0.4.0")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(fmt.Sprint(old), "10.250.0.5") {
		t.Errorf("0.4.0 result %v", old)
	}
}
