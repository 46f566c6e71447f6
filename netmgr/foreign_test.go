package netmgr_test

import (
	"context"
	"log/slog"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/sandbox"
)

func nsRun(t *testing.T, ns *sandbox.NetNS, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath(args[0]); err != nil {
		t.Skipf("%s not installed", args[0])
	}
	out, err := exec.Command("nsenter", append([]string{"--net=" + ns.Path()}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestForeignForwardDropPolicy (REVIEW §1.4): on a host whose iptables-nft FORWARD policy is DROP
// (Docker, ufw), pods have egress and published ports answer; once the network is gone the foreign
// chains hold exactly what they held before.
func TestForeignForwardDropPolicy(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	out := testutil.NewOutside(t, e.host)
	nsRun(t, e.host, "iptables-nft", "-P", "FORWARD", "DROP")
	nsRun(t, e.host, "ip6tables-nft", "-P", "FORWARD", "DROP")
	nsRun(t, e.host, "iptables-nft", "-A", "FORWARD", "-i", "up0", "-p", "tcp", "--dport", "22", "-j", "ACCEPT")
	before4 := nsRun(t, e.host, "nft", "list", "table", "ip", "filter")
	before6 := nsRun(t, e.host, "nft", "list", "table", "ip6", "filter")

	e.network(t, "web", "10.48.0.0/24")
	a, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "a", Networks: []netmgr.AttachSpec{{Network: "web"}}, Publish: publish(t, "8080:80")})
	if err != nil {
		t.Fatal(err)
	}
	ans := testutil.Open(t, a.NetNS)
	testutil.Listen(t, ans, ":80")
	testutil.Listen(t, out.NS, out.Addr.String()+":80")
	if seen, err := testutil.Dial(ans, out.Addr.String()+":80"); err != nil || seen != out.HostIP.String() {
		t.Errorf("egress with FORWARD policy DROP: %q, %v", seen, err)
	}
	if seen, err := testutil.Dial(out.NS, out.HostIP.String()+":8080"); err != nil || seen != out.Addr.String() {
		t.Errorf("published port with FORWARD policy DROP: %q, %v", seen, err)
	}

	if err := e.m.DeleteSandbox(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := e.m.DeleteNetwork(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if after := nsRun(t, e.host, "nft", "list", "table", "ip", "filter"); after != before4 {
		t.Errorf("table ip filter after network rm:\n%s\nwant as before:\n%s", after, before4)
	}
	if after := nsRun(t, e.host, "nft", "list", "table", "ip6", "filter"); after != before6 {
		t.Errorf("table ip6 filter after network rm:\n%s\nwant as before:\n%s", after, before6)
	}
}

// TestForeignLegacyWarns: with iptables-legacy tables in the host namespace, which netmgr cannot
// reach, network create logs a warning that says so (and what to do).
func TestForeignLegacyWarns(t *testing.T) {
	testutil.RequireRoot(t)
	host := testutil.NewNS(t, "host")
	if _, err := exec.LookPath("iptables-legacy"); err != nil {
		t.Skip("iptables-legacy not installed")
	}
	if out, err := exec.Command("nsenter", "--net="+host.Path(), "iptables-legacy", "-P", "FORWARD", "DROP").CombinedOutput(); err != nil {
		t.Skipf("iptables-legacy: %v %s", err, out)
	}
	var logs strings.Builder
	var mu sync.Mutex
	h := slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return logs.Write(p)
	}), nil)
	m, err := netmgr.New(context.Background(), netmgr.WithStateDir(t.TempDir()), netmgr.WithRunDir(t.TempDir()),
		netmgr.WithHostNetNS(host.Path()), netmgr.WithLogger(slog.New(h)))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx := context.Background()
	if _, err := m.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "web", Driver: "bridge", Subnets: []netip.Prefix{netip.MustParsePrefix("10.51.0.0/24")}}); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := m.DeleteNetwork(ctx, "web"); err != nil {
			t.Error(err)
		}
	}()
	mu.Lock()
	out := logs.String()
	mu.Unlock()
	if !strings.Contains(out, "level=WARN") || !strings.Contains(out, "iptables-legacy filter") || !strings.Contains(out, "nm-web") {
		t.Errorf("no warning naming the legacy filter table and the bridge:\n%s", out)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
