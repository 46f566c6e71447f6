package firewall

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/netmgr/netmgr/internal/testutil"
)

// A probe that must pass polls until testutil.ProbeDeadline; one that must be blocked watches for
// testutil.BlockedWindow. Each blocked probe here is paired with one that must pass.
const (
	passWait  = testutil.ProbeDeadline
	blockWait = testutil.BlockedWindow
)

// inHost runs a command in ns through nsenter, or skips the test if the command is not installed.
func inHost(t *testing.T, ns netns.NsHandle, args ...string) (string, error) {
	t.Helper()
	if _, err := exec.LookPath(args[0]); err != nil {
		t.Skipf("%s not installed", args[0])
	}
	path := fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(ns))
	out, err := exec.Command("nsenter", append([]string{"--net=" + path}, args...)...).CombinedOutput()
	return string(out), err
}

func mustInHost(t *testing.T, ns netns.NsHandle, args ...string) string {
	t.Helper()
	out, err := inHost(t, ns, args...)
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func webNet() *testNet {
	return &testNet{
		Network: Network{Name: "web", Ifaces: []string{"br-web"}, Masquerade: true,
			Subnets: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/24")}},
		gateway: netip.MustParsePrefix("10.2.0.1/24"), addr: netip.MustParsePrefix("10.2.0.2/24"),
	}
}

var (
	hostUplink   = netip.MustParseAddr("192.0.2.1")
	outsideAddr  = netip.MustParseAddr("192.0.2.2")
	echoPublish7 = func(pod netip.Addr) Port {
		return Port{Protocol: "udp", HostPort: 7, Target: netip.AddrPortFrom(pod, 7), Owner: "web"}
	}
)

// TestDirectAccessDropped (REVIEW §1.5): a neighbour that routes the pod subnet via the host reaches
// no pod port unless it is published, or unless the network is routed.
func TestDirectAccessDropped(t *testing.T) {
	web := webNet()
	host, outside := topology(t, []*testNet{web})
	pod := web.addr.Addr()
	echoServer(t, web.ns, pod)
	echoServer(t, outside, outsideAddr)
	fw := newFirewall(t, host)
	if err := fw.Apply(t.Context(), []Network{web.Network}); err != nil {
		t.Fatal(err)
	}
	if seen, ok := probe(t, outside, pod, blockWait); ok {
		t.Errorf("outside reached an unpublished pod port directly (pod saw %s)", seen)
	}
	if _, ok := probe(t, web.ns, outsideAddr, passWait); !ok {
		t.Error("pod egress (and its replies) blocked")
	}
	if err := fw.AddPorts(t.Context(), []Port{echoPublish7(pod)}); err != nil {
		t.Fatal(err)
	}
	if seen, ok := probe(t, outside, hostUplink, passWait); !ok || seen != outsideAddr.String() {
		t.Errorf("published port from outside: ok=%v seen %q, want %s", ok, seen, outsideAddr)
	}
	// A frame back out of the bridge port it came in by needs hairpin mode (netmgr's default).
	mustInHost(t, host, "ip", "link", "set", "veth0", "type", "bridge_slave", "hairpin", "on")
	if seen, ok := probe(t, web.ns, hostUplink, passWait); !ok {
		t.Errorf("published port from the pod itself (hairpin): blocked")
	} else {
		t.Logf("hairpin seen as %s", seen)
	}

	routed := web.Network
	routed.Routed = true
	if err := fw.Apply(t.Context(), []Network{routed}); err != nil {
		t.Fatal(err)
	}
	if seen, ok := probe(t, outside, pod, passWait); !ok || seen != outsideAddr.String() {
		t.Errorf("routed network: outside reached the pod: ok=%v seen %q", ok, seen)
	}
	out := nftList(t, host)
	if strings.Contains(out, "ct status") && strings.Contains(out, `oifname "br-web" iifname != "br-web"`) {
		t.Errorf("routed network still has the protection rule:\n%s", out)
	}
}

// TestDirectAccessRuleNft pins the protection rule as nft prints it; it has no family match, so it
// holds for IPv4 and IPv6 alike.
func TestDirectAccessRuleNft(t *testing.T) {
	ns := newNetNS(t)
	fw := newFirewall(t, ns)
	if err := fw.Apply(t.Context(), []Network{netWeb, netIsolated}); err != nil {
		t.Fatal(err)
	}
	out := nftList(t, ns)
	want := `oifname "br-web" iifname != "br-web" ct status ! dnat ct state ! established,related drop comment "network=web"`
	if !strings.Contains(out, want) {
		t.Errorf("nft output lacks %q:\n%s", want, out)
	}
	if strings.Count(out, "ct status ! dnat") != 1 || !strings.Contains(out, `oifname "br-web" iifname != "br-web" ct state invalid,untracked drop`) {
		t.Errorf("want the protection rule for the non-internal network only:\n%s", out)
	}
}

// TestInternalNoHostInput (FAULTS §16): a sandbox on an internal network reaches no address of the
// host, neither its gateway nor another one it routes to by hand; the host can still reach it.
func TestInternalNoHostInput(t *testing.T) {
	iso := &testNet{
		Network: Network{Name: "iso", Ifaces: []string{"br-iso"}, Internal: true,
			Subnets: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24"), netip.MustParsePrefix("fd00:1::/64")}},
		gateway: netip.MustParsePrefix("10.1.0.1/24"), addr: netip.MustParsePrefix("10.1.0.2/24"),
	}
	host, _ := topology(t, []*testNet{iso})
	echoServer(t, host, hostUplink)
	echoServer(t, host, iso.gateway.Addr())
	echoServer(t, iso.ns, iso.addr.Addr())
	if _, ok := probe(t, iso.ns, hostUplink, passWait); !ok {
		t.Fatal("without rules the host does not answer: the test proves nothing")
	}
	fw := newFirewall(t, host)
	if err := fw.Apply(t.Context(), []Network{iso.Network}); err != nil {
		t.Fatal(err)
	}
	if seen, ok := probe(t, iso.ns, hostUplink, blockWait); ok {
		t.Errorf("internal sandbox reached the host's %s (seen as %s)", hostUplink, seen)
	}
	if seen, ok := probe(t, iso.ns, iso.gateway.Addr(), blockWait); ok {
		t.Errorf("internal sandbox reached the host's gateway address (seen as %s)", seen)
	}
	if _, ok := probe(t, host, iso.addr.Addr(), passWait); !ok {
		t.Error("the host no longer reaches the internal sandbox (replies dropped)")
	}
	out := nftList(t, host)
	for _, want := range []string{
		`type filter hook input priority filter; policy accept;`,
		`iifname "br-iso" icmpv6 type nd-neighbor-solicit accept comment "network=iso"`,
		`iifname "br-iso" icmpv6 type nd-neighbor-advert accept comment "network=iso"`,
		`iifname "br-iso" ct state ! established,related drop comment "network=iso"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("nft output lacks %q:\n%s", want, out)
		}
	}
}

// TestForeignForwardDrop (REVIEW §1.4): with iptables-nft's FORWARD policy DROP in the host (Docker,
// ufw), pods still have egress and published ports answer; the foreign chain gets one jump to a
// netmgr chain, and after the last network is gone it holds exactly what it held before.
func TestForeignForwardDrop(t *testing.T) {
	web := webNet()
	host, outside := topology(t, []*testNet{web})
	pod := web.addr.Addr()
	echoServer(t, outside, outsideAddr)
	echoServer(t, web.ns, pod)
	for _, ipt := range []string{"iptables-nft", "ip6tables-nft"} {
		mustInHost(t, host, ipt, "-P", "FORWARD", "DROP")
	}
	mustInHost(t, host, "iptables-nft", "-A", "FORWARD", "-s", "198.51.100.0/24", "-j", "ACCEPT")
	before4 := mustInHost(t, host, "nft", "list", "table", "ip", "filter")
	before6 := mustInHost(t, host, "nft", "list", "table", "ip6", "filter")
	if _, ok := probe(t, web.ns, outsideAddr, blockWait); ok {
		t.Fatal("egress works under FORWARD policy DROP without netmgr: the test proves nothing")
	}

	fw := newFirewall(t, host)
	for range 2 { // the second Apply must not add a second jump
		if err := fw.Apply(t.Context(), []Network{web.Network}); err != nil {
			t.Fatal(err)
		}
	}
	if err := fw.AddPorts(t.Context(), []Port{echoPublish7(pod)}); err != nil {
		t.Fatal(err)
	}
	if _, ok := probe(t, web.ns, outsideAddr, passWait); !ok {
		t.Error("with FORWARD policy DROP, pods have no egress")
	}
	if seen, ok := probe(t, outside, hostUplink, passWait); !ok || seen != outsideAddr.String() {
		t.Errorf("with FORWARD policy DROP, a published port from outside: ok=%v seen %q", ok, seen)
	}
	if seen, ok := probe(t, outside, pod, blockWait); ok {
		t.Errorf("the foreign accept let direct access through (pod saw %s)", seen)
	}
	for _, ipt := range []string{"iptables-nft", "ip6tables-nft"} {
		out := mustInHost(t, host, ipt, "-S") // iptables must still read the table
		if n := strings.Count(out, "-A FORWARD -j "+foreignChain); n != 1 {
			t.Errorf("%s -S: %d jumps to %s, want 1:\n%s", ipt, n, foreignChain, out)
		}
		if !strings.Contains(out, "-A "+foreignChain+" -o br-web") || !strings.Contains(out, "-A "+foreignChain+" -i br-web") {
			t.Errorf("%s -S lacks the accept rules for br-web:\n%s", ipt, out)
		}
		t.Logf("%s -S:\n%s", ipt, out)
	}

	if err := fw.RemovePortsTable(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := fw.Apply(t.Context(), nil); err != nil {
		t.Fatal(err)
	}
	if after := mustInHost(t, host, "nft", "list", "table", "ip", "filter"); after != before4 {
		t.Errorf("table ip filter after the last network:\n%s\nwant as before:\n%s", after, before4)
	}
	if after := mustInHost(t, host, "nft", "list", "table", "ip6", "filter"); after != before6 {
		t.Errorf("table ip6 filter after the last network:\n%s\nwant as before:\n%s", after, before6)
	}
}

// TestForeignLegacyWarning: iptables-legacy's chains are invisible to nftables and netmgr cannot add
// accepts there without shelling out; with legacy tables in the host namespace, Apply says so.
func TestForeignLegacyWarning(t *testing.T) {
	web := webNet()
	host, _ := topology(t, []*testNet{web})
	if out, err := inHost(t, host, "iptables-legacy", "-P", "FORWARD", "DROP"); err != nil {
		t.Skipf("iptables-legacy: %v %s", err, out)
	}
	var logs testutil.SyncBuffer
	fw, err := New(int(host), slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer fw.Close()
	if err := fw.Apply(t.Context(), []Network{web.Network}); err != nil {
		t.Fatal(err)
	}
	if out := logs.String(); !strings.Contains(out, "level=WARN") || !strings.Contains(out, "iptables-legacy") || !strings.Contains(out, "filter") {
		t.Errorf("no warning about the iptables-legacy filter table; log:\n%s", out)
	}
}

// TestForeignNoFilterTable: where iptables has no FORWARD chain yet, Apply makes the one iptables-nft
// would, with the jump, and removes it again with the last network.
func TestForeignNoFilterTable(t *testing.T) {
	ns := newNetNS(t)
	fw := newFirewall(t, ns)
	if err := fw.Apply(t.Context(), []Network{netWeb}); err != nil {
		t.Fatal(err)
	}
	for _, fam := range []string{"ip", "ip6"} {
		out := mustInHost(t, ns, "nft", "list", "chain", fam, "filter", "FORWARD")
		if !strings.Contains(out, "type filter hook forward priority filter; policy accept;") || !strings.Contains(out, "jump "+foreignChain) {
			t.Errorf("%s filter FORWARD:\n%s", fam, out)
		}
	}
	if err := fw.Apply(t.Context(), nil); err != nil {
		t.Fatal(err)
	}
	if out := mustInHost(t, ns, "nft", "list", "tables"); strings.Contains(out, "filter") {
		t.Errorf("filter tables left after the last network:\n%s", out)
	}
}

// TestForeignForwardDropLater: a firewall that sets FORWARD's policy to DROP after netmgr's networks
// exist (Docker started after them) finds the jump in place; after the last network the table is
// what the same iptables command makes in a namespace netmgr never touched.
func TestForeignForwardDropLater(t *testing.T) {
	web := webNet()
	host, outside := topology(t, []*testNet{web})
	echoServer(t, outside, outsideAddr)
	fw := newFirewall(t, host)
	if err := fw.Apply(t.Context(), []Network{web.Network}); err != nil {
		t.Fatal(err)
	}
	mustInHost(t, host, "iptables-nft", "-P", "FORWARD", "DROP")
	if _, ok := probe(t, web.ns, outsideAddr, passWait); !ok {
		t.Error("FORWARD policy DROP set after Apply: pods have no egress")
	}
	if err := fw.Apply(t.Context(), nil); err != nil {
		t.Fatal(err)
	}
	fresh := newNetNS(t)
	mustInHost(t, fresh, "iptables-nft", "-P", "FORWARD", "DROP")
	if got, want := mustInHost(t, host, "nft", "list", "table", "ip", "filter"), mustInHost(t, fresh, "nft", "list", "table", "ip", "filter"); got != want {
		t.Errorf("table ip filter after the last network:\n%s\nwant what iptables alone makes:\n%s", got, want)
	}
	if out := mustInHost(t, host, "nft", "list", "tables"); strings.Contains(out, "ip6 filter") {
		t.Errorf("table ip6 filter (made by netmgr, untouched since) left behind:\n%s", out)
	}
}
