package integration

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestPodDNS runs `podctl agent` (its DNS server) beside two pods on containerd: a container's
// resolv.conf names the network's DNS server with the cluster search path and ndots:5, its hosts file
// has the pod's name and IP, and the other pod is reached by name (busybox nslookup and wget).
func TestPodDNS(t *testing.T) {
	ph := newPodHost(t)
	ctx := context.Background()
	ph.must(t, "network", "create", "dnsnet", "--driver", "bridge", "--subnet", "10.43.0.0/24")
	// The upstream is TEST-NET, unroutable from the test's host namespace: nothing leaves.
	var agentErr bytes.Buffer
	agent := ph.cmd(ctx, "agent", "--dns-upstream", "192.0.2.53")
	agent.Stderr = &agentErr
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		_ = agent.Process.Signal(syscall.SIGTERM)
		if err := agent.Wait(); err != nil {
			t.Errorf("agent: %v\n%s", err, agentErr.String())
		}
	}
	t.Cleanup(stop)

	ph.mustPod(t, "run", "-f", ph.manifest(t, "web", webPod), "--network", "dnsnet")
	ph.mustPod(t, "run", "-f", ph.manifest(t, "peer", peerPod), "--network", "dnsnet")
	web, peer := ph.inspect(t, "web"), ph.inspect(t, "peer")
	webIP, peerIP := web.IPs[0], peer.IPs[0]

	rc := ph.mustPod(t, "exec", "peer", "fetch", "--", "cat", "/etc/resolv.conf")
	for _, want := range []string{"nameserver 10.43.0.1\n", "search svc.cluster.local cluster.local\n", "options ndots:5\n"} {
		if !strings.Contains(rc, want) {
			t.Errorf("peer's resolv.conf lacks %q:\n%s", want, rc)
		}
	}
	hosts := ph.mustPod(t, "exec", "peer", "fetch", "--", "cat", "/etc/hosts")
	for _, want := range []string{"127.0.0.1\tlocalhost", peerIP + "\tpeer"} {
		if !strings.Contains(hosts, want) {
			t.Errorf("peer's hosts lacks %q:\n%s", want, hosts)
		}
	}
	eventually(t, 10*time.Second, "nslookup web from peer", func() error {
		// busybox nslookup tries every search domain and exits 1 if any is NXDOMAIN: the answer is
		// what counts (web.cluster.local, where the search path finds it).
		out, err := ph.pod(ctx, "exec", "peer", "fetch", "--", "timeout", "5", "nslookup", "web")
		if !strings.Contains(out, "Address: "+webIP) {
			return fmt.Errorf("nslookup web: %q (%v)", out, err)
		}
		return nil
	})
	eventually(t, 10*time.Second, "wget http://web:8080/ from peer", func() error {
		out, err := ph.pod(ctx, "exec", "peer", "fetch", "--", "timeout", "5", "wget", "-qO-", "http://web:8080/")
		if err != nil || strings.TrimSpace(out) != "hello from web" {
			return fmt.Errorf("wget by name: %q (%v)", out, err)
		}
		return nil
	})
	ph.mustPod(t, "rm", "web", "peer")
	stop()
	ph.assertPodsClean(t, "dnsnet")
	ph.must(t, "network", "rm", "dnsnet")
}
