package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/sandbox"
)

// clusterHost is one host of a cluster driven through podctl processes, as a user does: its
// namespace on the underlay, its own state and run dirs, the cluster's etcd.
type clusterHost struct {
	host
	name  string
	addr  netip.Addr
	store string
	agent *exec.Cmd
	log   *testutil.SyncBuffer
}

func (h *clusterHost) run(args ...string) (string, error) {
	return h.podctl(context.Background(), append([]string{"--store", h.store, "--node", h.name}, args...)...)
}

func (h *clusterHost) mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, err := h.run(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// startAgent runs `podctl agent` on the host, as a process of its own, with extra flags; it is
// killed when t ends.
func (h *clusterHost) startAgent(t *testing.T, extra ...string) {
	t.Helper()
	h.startAgentFor(t, t, extra...)
}

// startAgentFor is startAgent from a subtest t whose agent must outlive it: killed when owner ends.
func (h *clusterHost) startAgentFor(t, owner *testing.T, extra ...string) {
	t.Helper()
	h.log = &testutil.SyncBuffer{}
	h.agent = h.cmd(context.Background(), append([]string{"--store", h.store, "--node", h.name, "agent", "--underlay", h.addr.String(), "--ttl", "3s"}, extra...)...)
	h.agent.Stderr = h.log
	if err := h.agent.Start(); err != nil {
		t.Fatal(err)
	}
	cmd := h.agent
	owner.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
}

type nodeJSON struct {
	Name     string `json:"name"`
	Ready    bool   `json:"ready"`
	Networks map[string]struct {
		Subnets []netip.Prefix `json:"subnets"`
	} `json:"networks"`
}

// TestClusterPodctl drives a two-host cluster through podctl processes: agents as `podctl agent`,
// networks and sandboxes as `podctl --store etcd://...`. It shows what the library test cannot: an
// agent's SIGTERM leaves the data path in place, and podctl keeps creating and deleting sandboxes on
// a joined network while etcd is down, while a command that needs etcd fails with one line.
func TestClusterPodctl(t *testing.T) {
	testutil.RequireNetAdmin(t)
	u := testutil.NewUnderlay(t)
	var hs []*clusterHost
	for i := 1; i <= 2; i++ {
		h := &clusterHost{host: *newHost(t), name: fmt.Sprintf("node%d", i), addr: netip.AddrFrom4([4]byte{198, 18, 0, byte(i)})}
		u.Plug(h.name, h.addr, h.ns)
		hs = append(hs, h)
	}
	e := testutil.StartEtcd(t, testutil.EtcdOptions{NS: hs[0].ns, Addr: hs[0].addr.String()})
	for _, h := range hs {
		h.store = "etcd://" + e.Endpoint + "?prefix=/it/&dial-timeout=2s&timeout=2s"
		h.startAgent(t)
	}
	hs[0].mustRun(t, "network", "create", "ov", "--driver", "overlay", "--subnet", "10.244.0.0/16")
	t.Cleanup(func() {
		for _, h := range hs {
			_, _ = h.run("sandbox", "rm", "web")
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		var nodes []nodeJSON
		out, err := hs[0].run("-o", "json", "node", "ls")
		if err == nil && json.Unmarshal([]byte(out), &nodes) == nil && len(nodes) == 2 &&
			nodes[0].Ready && nodes[1].Ready && len(nodes[0].Networks["ov"].Subnets) == 1 && len(nodes[1].Networks["ov"].Subnets) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("nodes not ready with subnets: %s %v\nagent logs:\n%s\n%s", out, err, hs[0].log, hs[1].log)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Log(hs[0].mustRun(t, "node", "ls"))

	var pods []*sandbox.NetNS
	var addrs []string
	for _, h := range hs {
		var sb sandboxJSON
		if err := json.Unmarshal([]byte(h.mustRun(t, "-o", "json", "sandbox", "create", "web", "--network", "ov")), &sb); err != nil {
			t.Fatal(err)
		}
		ns := testutil.Open(t, sb.NetNS)
		testutil.Listen(t, ns, ":8080")
		pods = append(pods, ns)
		addrs = append(addrs, strings.Split(sb.Attachments[0].IPv4, "/")[0])
	}
	reach := func(what string) {
		t.Helper()
		for i := range pods {
			j := 1 - i
			seen, err := testutil.Dial(pods[i], addrs[j]+":8080")
			if err != nil || seen != addrs[i] {
				t.Fatalf("%s: pod on %s -> %s: saw %q, %v", what, hs[i].name, addrs[j], seen, err)
			}
		}
	}
	reach("agents running")

	// SIGTERM: the agent exits at once and leaves the data path; pods keep talking (the peers drop
	// the node only when its record expires).
	stopped := time.Now()
	if err := hs[1].agent.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := hs[1].agent.Wait(); err != nil {
		t.Fatalf("agent after SIGTERM: %v\n%s", err, hs[1].log)
	}
	t.Logf("agent exited %v after SIGTERM", time.Since(stopped).Round(time.Millisecond))
	reach("node2's agent stopped")
	hs[1].startAgent(t)

	// etcd down: sandboxes on the joined network are still created and deleted through podctl; a
	// command that needs the cluster says so in one line.
	e.Kill()
	reach("etcd down")
	out, err := hs[0].run("-o", "json", "sandbox", "create", "offline", "--network", "ov")
	if err != nil {
		t.Fatalf("sandbox create while etcd is down: %v", err)
	}
	var sb sandboxJSON
	if err := json.Unmarshal([]byte(out), &sb); err != nil {
		t.Fatal(err)
	}
	ns := testutil.Open(t, sb.NetNS)
	if _, err := testutil.Dial(ns, addrs[1]+":8080"); err != nil {
		t.Errorf("new pod while etcd is down -> node2's pod: %v", err)
	}
	if _, err := hs[0].run("sandbox", "rm", "offline"); err != nil {
		t.Fatalf("sandbox rm while etcd is down: %v", err)
	}
	_, err = hs[0].run("network", "create", "x", "--driver", "overlay", "--subnet", "10.245.0.0/16")
	if err == nil {
		t.Fatal("network create while etcd is down succeeded")
	}
	lines := strings.Split(err.Error(), "\n")
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, "podctl: ") || !strings.Contains(last, "unreachable") {
		t.Fatalf("network create while etcd is down: last line %q, want podctl's one-line unreachable error", last)
	} else {
		t.Log(last)
	}
	e.Restart()
}
