package firewall

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netns"

	"github.com/netmgr/netmgr/internal/testutil"
)

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

var (
	portWeb     = Port{Protocol: "tcp", HostPort: 8080, Target: ap("10.2.0.2:80"), Owner: "web"}
	portWebUDP  = Port{Protocol: "udp", HostPort: 5353, Target: ap("10.2.0.2:53"), Owner: "web"}
	portOnAddr  = Port{Protocol: "tcp", HostIP: netip.MustParseAddr("192.0.2.1"), HostPort: 8443, Target: ap("10.2.0.2:443"), Owner: "web"}
	portWeb6    = Port{Protocol: "tcp", HostPort: 8080, Target: ap("[fd00:20::2]:80"), Owner: "web"}
	portOnAddr6 = Port{Protocol: "udp", HostIP: netip.MustParseAddr("2001:db8::1"), HostPort: 53, Target: ap("[fd00:20::2]:5353"), Owner: "web"}
)

func nftListTable(t *testing.T, ns netns.NsHandle, table string) string {
	t.Helper()
	nft, err := exec.LookPath("nft")
	if err != nil {
		t.Skip("nft not installed")
	}
	path := fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(ns))
	out, err := exec.Command("nsenter", "--net="+path, nft, "list", "table", "inet", table).CombinedOutput()
	if err != nil {
		return ""
	}
	return string(out)
}

func TestPortsNft(t *testing.T) {
	ns := newNetNS(t)
	fw := newFirewall(t, ns)
	if err := fw.AddPorts(t.Context(), []Port{portWeb, portWebUDP, portOnAddr, portWeb6, portOnAddr6}); err != nil {
		t.Fatalf("AddPorts: %v", err)
	}
	out := nftListTable(t, ns, PortsTableName)
	t.Logf("nft list table:\n%s", out)
	for _, want := range []string{
		`type inet_proto . inet_service : ipv4_addr . inet_service`,
		`type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service`,
		`type inet_proto . inet_service : ipv6_addr . inet_service`,
		`tcp . 8080 comment "owner=web" : 10.2.0.2 . 80`,
		`udp . 5353 comment "owner=web" : 10.2.0.2 . 53`,
		`192.0.2.1 . tcp . 8443 comment "owner=web" : 10.2.0.2 . 443`,
		`tcp . 8080 comment "owner=web" : fd00:20::2 . 80`,
		`2001:db8::1 . udp . 53 comment "owner=web" : fd00:20::2 . 5353`,
		`type nat hook prerouting priority dstnat; policy accept;`,
		`type nat hook output priority -100; policy accept;`,
		`dnat ip to ip daddr . meta l4proto . th dport map @addr4`,
		`fib daddr type local dnat ip to meta l4proto . th dport map @any4`,
		`dnat ip6 to ip6 daddr . meta l4proto . th dport map @addr6`,
		`fib daddr type local dnat ip6 to meta l4proto . th dport map @any6`,
		`ct status dnat ip saddr 127.0.0.0/8 masquerade`,
		`iifname != "lo" ip daddr 127.0.0.0/8`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("nft output lacks %q", want)
		}
	}
}

func TestPortsAddRemove(t *testing.T) {
	ns := newNetNS(t)
	fw := newFirewall(t, ns)
	ctx := t.Context()
	list := func() []Port {
		t.Helper()
		ps, err := fw.Ports(ctx)
		if err != nil {
			t.Fatalf("Ports: %v", err)
		}
		return ps
	}
	if ps := list(); len(ps) != 0 {
		t.Fatalf("Ports without a table = %v", ps)
	}
	if err := fw.RemovePorts(ctx, []Port{portWeb}); err != nil {
		t.Fatalf("RemovePorts without a table: %v", err)
	}
	all := []Port{portWeb, portWebUDP, portOnAddr, portWeb6, portOnAddr6}
	if err := fw.AddPorts(ctx, all); err != nil {
		t.Fatalf("AddPorts: %v", err)
	}
	want := slices.Clone(all)
	sortPorts(want)
	if got := list(); fmt.Sprint(got) != fmt.Sprint(want) || got[0].Owner != "web" {
		t.Fatalf("Ports = %v, want %v", got, want)
	}
	// The no-root TestPortsRecorded checks the same file against a fakeKernel.
	kc, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatal(err)
	}
	checkGolden(t, "ports.golden", portsString(t, kc))
	rules := nftListTable(t, ns, PortsTableName)
	// Adding again changes nothing, rules included.
	if err := fw.AddPorts(ctx, all); err != nil {
		t.Fatalf("AddPorts again: %v", err)
	}
	if again := nftListTable(t, ns, PortsTableName); again != rules {
		t.Errorf("second AddPorts changed the table:\n%s\nwas:\n%s", again, rules)
	}

	// The same host port to another target is refused, and nothing of the batch is applied.
	other := portWeb
	other.Target = ap("10.2.0.3:80")
	extra := Port{Protocol: "tcp", HostPort: 9999, Target: ap("10.2.0.3:99")}
	if err := fw.AddPorts(ctx, []Port{extra, other}); err == nil {
		t.Fatal("AddPorts of a published host port to another target succeeded")
	}
	if got := list(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("failed AddPorts changed the ports: %v", got)
	}

	bad := []Port{
		{Protocol: "sctp", HostPort: 1, Target: ap("10.0.0.1:1")},
		{Protocol: "tcp", HostPort: 0, Target: ap("10.0.0.1:1")},
		{Protocol: "tcp", HostPort: 1},
		{Protocol: "tcp", HostPort: 1, Target: ap("10.0.0.1:0")},
		{Protocol: "tcp", HostPort: 1, HostIP: netip.MustParseAddr("2001:db8::1"), Target: ap("10.0.0.1:1")},
		{Protocol: "tcp", HostPort: 1, Target: ap("[::ffff:10.0.0.1]:1")},
		{Protocol: "tcp", HostPort: 1, Target: ap("10.0.0.1:1"), Owner: strings.Repeat("x", 300)},
	}
	for _, p := range bad {
		if err := fw.AddPorts(ctx, []Port{p}); !errors.Is(err, ErrInvalid) {
			t.Errorf("AddPorts(%s) = %v, want ErrInvalid", p, err)
		}
	}

	// Remove two, twice: idempotent.
	for range 2 {
		if err := fw.RemovePorts(ctx, []Port{portWeb, portOnAddr6}); err != nil {
			t.Fatalf("RemovePorts: %v", err)
		}
	}
	want = []Port{portWebUDP, portOnAddr, portWeb6}
	sortPorts(want)
	if got := list(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after RemovePorts: %v, want %v", got, want)
	}

	// Sync adds what is missing and removes the rest.
	added, removed, err := fw.SyncPorts(ctx, []Port{portWeb, portWebUDP})
	if err != nil {
		t.Fatalf("SyncPorts: %v", err)
	}
	if fmt.Sprint(added) != fmt.Sprint([]Port{portWeb}) {
		t.Errorf("SyncPorts added %v, want [%v]", added, portWeb)
	}
	wantRemoved := []Port{portOnAddr, portWeb6}
	sortPorts(wantRemoved)
	if fmt.Sprint(removed) != fmt.Sprint(wantRemoved) {
		t.Errorf("SyncPorts removed %v, want %v", removed, wantRemoved)
	}
	want = []Port{portWeb, portWebUDP}
	sortPorts(want)
	if got := list(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after SyncPorts: %v, want %v", got, want)
	}

	// Apply with no networks removes the ports table too.
	if err := fw.Apply(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if out := nftListTable(t, ns, PortsTableName); out != "" {
		t.Errorf("ports table left after Apply(nil):\n%s", out)
	}
	if err := fw.RemovePortsTable(ctx); err != nil {
		t.Errorf("RemovePortsTable of an absent table: %v", err)
	}
}

// udpEcho answers datagrams to addr:port in ns with the source address it saw.
func udpEcho(t *testing.T, ns netns.NsHandle, addr netip.Addr, port uint16) {
	t.Helper()
	var conn net.PacketConn
	err := inNS(ns, func() (err error) {
		conn, err = net.ListenPacket("udp", netip.AddrPortFrom(addr, port).String())
		return err
	})
	if err != nil {
		t.Fatalf("listen in netns: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 64)
		for {
			_, from, err := conn.ReadFrom(buf)
			if err != nil {
				return
			}
			conn.WriteTo([]byte(from.(*net.UDPAddr).AddrPort().Addr().Unmap().String()), from)
		}
	}()
}

// tcpEcho accepts connections to addr:port in ns and writes the peer address it saw.
func tcpEcho(t *testing.T, ns netns.NsHandle, addr netip.Addr, port uint16) {
	t.Helper()
	var ln net.Listener
	err := inNS(ns, func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(addr, port).String())
		return err
	})
	if err != nil {
		t.Fatalf("listen in netns: %v", err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte(c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap().String()))
			c.Close()
		}
	}()
}

// reach connects (tcp) or sends (udp) from ns to dst and returns what the echo server saw, or "".
// It tries again until an answer comes or wait has passed: give testutil.ProbeDeadline to a probe
// that must pass and testutil.BlockedWindow to one that must be blocked.
func reach(t *testing.T, ns netns.NsHandle, proto string, dst netip.AddrPort, wait time.Duration) string {
	t.Helper()
	for deadline := time.Now().Add(wait); ; {
		if seen := reachOnce(ns, proto, dst); seen != "" || time.Now().After(deadline) {
			return seen
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func reachOnce(ns netns.NsHandle, proto string, dst netip.AddrPort) string {
	var conn net.Conn
	err := inNS(ns, func() (err error) {
		conn, err = net.DialTimeout(proto, dst.String(), 700*time.Millisecond)
		return err
	})
	if err != nil {
		return ""
	}
	defer conn.Close()
	buf := make([]byte, 64)
	for i := 0; i < 5; i++ {
		if proto == "udp" {
			conn.Write([]byte("ping"))
		}
		conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, err := conn.Read(buf)
		if n > 0 {
			return string(buf[:n])
		}
		if proto == "tcp" && err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			return ""
		}
	}
	return ""
}

// TestPortsTraffic publishes ports of a pod and reaches them from the outside, from the host (its own
// address and 127.0.0.1) and from the pod itself through the host (hairpin), over TCP and UDP.
func TestPortsTraffic(t *testing.T) {
	web := &testNet{
		Network: Network{Name: "web", Ifaces: []string{"br-web"}, Masquerade: true,
			Subnets: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/24")}},
		gateway: netip.MustParsePrefix("10.2.0.1/24"), addr: netip.MustParsePrefix("10.2.0.2/24"),
	}
	host, outside := topology(t, []*testNet{web})
	path := fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(host))
	// route_localnet lets the host's 127.0.0.1 reach the bridge (netmgr sets it when it publishes);
	// hairpin mode lets a bridged, translated frame leave by the port it came in, which it must when
	// br_netfilter passes bridged traffic through the IP hooks (netmgr's bridges have it by default).
	for _, cmd := range []string{
		"ip link set lo up",
		"echo 1 > /proc/sys/net/ipv4/conf/br-web/route_localnet",
		"ip link set veth0 type bridge_slave hairpin on",
	} {
		if out, err := exec.Command("nsenter", "--net="+path, "sh", "-c", cmd).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", cmd, err, out)
		}
	}
	pod := web.addr.Addr()
	tcpEcho(t, web.ns, pod, 80)
	udpEcho(t, web.ns, pod, 53)

	fw := newFirewall(t, host)
	if err := fw.Apply(t.Context(), []Network{web.Network}); err != nil {
		t.Fatal(err)
	}
	ports := []Port{
		{Protocol: "tcp", HostPort: 8080, Target: netip.AddrPortFrom(pod, 80)},
		{Protocol: "udp", HostPort: 5353, Target: netip.AddrPortFrom(pod, 53)},
		{Protocol: "tcp", HostIP: netip.MustParseAddr("192.0.2.1"), HostPort: 8081, Target: netip.AddrPortFrom(pod, 80)},
	}
	if err := fw.AddPorts(t.Context(), ports); err != nil {
		t.Fatal(err)
	}
	hostAddr := netip.MustParseAddr("192.0.2.1")
	lo := netip.MustParseAddr("127.0.0.1")
	cases := []struct {
		what  string
		from  netns.NsHandle
		proto string
		dst   netip.AddrPort
		seen  string
	}{
		{"outside tcp", outside, "tcp", netip.AddrPortFrom(hostAddr, 8080), "192.0.2.2"},
		{"outside udp", outside, "udp", netip.AddrPortFrom(hostAddr, 5353), "192.0.2.2"},
		{"outside tcp on host address", outside, "tcp", netip.AddrPortFrom(hostAddr, 8081), "192.0.2.2"},
		{"host tcp", host, "tcp", netip.AddrPortFrom(hostAddr, 8080), "192.0.2.1"},
		{"host udp", host, "udp", netip.AddrPortFrom(hostAddr, 5353), "192.0.2.1"},
		{"host gateway address", host, "tcp", netip.AddrPortFrom(web.gateway.Addr(), 8080), "10.2.0.1"},
		{"host 127.0.0.1 tcp", host, "tcp", netip.AddrPortFrom(lo, 8080), "10.2.0.1"},
		{"host 127.0.0.1 udp", host, "udp", netip.AddrPortFrom(lo, 5353), "10.2.0.1"},
		{"pod hairpin tcp", web.ns, "tcp", netip.AddrPortFrom(hostAddr, 8080), "10.2.0.1"},
		{"pod hairpin udp", web.ns, "udp", netip.AddrPortFrom(hostAddr, 5353), "10.2.0.1"},
		{"not published", outside, "tcp", netip.AddrPortFrom(hostAddr, 8082), ""},
		{"host-address port on 127.0.0.1", host, "tcp", netip.AddrPortFrom(lo, 8081), ""},
	}
	for _, c := range cases {
		wait := testutil.ProbeDeadline
		if c.seen == "" {
			wait = testutil.BlockedWindow
		}
		if got := reach(t, c.from, c.proto, c.dst, wait); got != c.seen {
			t.Errorf("%s (%s %s): seen as %q, want %q", c.what, c.proto, c.dst, got, c.seen)
		}
	}

	if err := fw.RemovePorts(t.Context(), ports); err != nil {
		t.Fatal(err)
	}
	for _, c := range cases[:3] {
		if got := reach(t, c.from, c.proto, c.dst, testutil.BlockedWindow); got != "" {
			t.Errorf("%s after RemovePorts: still answered, seen as %q", c.what, got)
		}
	}
}

// TestHairpinRules checks the per-network hairpin chain of the netmgr table: translated traffic from a
// network's pods back onto its bridge is masqueraded, for every network that is not internal.
func TestHairpinRules(t *testing.T) {
	ns := newNetNS(t)
	fw := newFirewall(t, ns)
	noMasq := netWeb
	noMasq.Masquerade = false
	if err := fw.Apply(t.Context(), []Network{netIsolated, noMasq}); err != nil {
		t.Fatal(err)
	}
	out := nftList(t, ns)
	for _, want := range []string{
		`chain hairpin {`,
		`ct status dnat ip saddr 10.20.0.0/16 oifname "br-web" masquerade comment "network=web"`,
		`ct status dnat ip6 saddr fd00:20::/64 oifname "br-web" masquerade comment "network=web"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("nft output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "10.10.0.0") {
		t.Errorf("internal network has hairpin rules:\n%s", out)
	}
}
