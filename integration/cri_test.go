package integration

import (
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/netmgr/netmgr/drivers/bridge"
	"github.com/netmgr/netmgr/internal/testutil"
)

// TestCRIPodsOnNetmgrCNI runs pods through containerd's CRI plugin configured with netmgr-cni, as a
// kubelet would: a private containerd (the version go.mod pins) inside a test host namespace, CNI
// from a conf dir with one netmgr-cni network, local images only. Two pods get addresses from netmgr
// and reach each other (ICMP and TCP); removing them through CRI leaves nothing in CRI, containerd,
// netmgr or the kernel.
func TestCRIPodsOnNetmgrCNI(t *testing.T) {
	const network = "cripods"
	subnet := netip.MustParsePrefix("10.251.0.0/24")
	c := newCRIHost(t, network, subnet.String())

	pods := []*criPod{c.runPod("web"), c.runPod("client")}
	web, cl := pods[0], pods[1]

	// Each pod has an address from the netmgr network, and that is the one netmgr recorded for the
	// attachment CRI asked for (container ID = pod sandbox ID, eth0, the namespace CRI pinned).
	recorded := map[string]cniSandbox{}
	for _, s := range c.cniSandboxes() {
		recorded[s.Name] = s
	}
	if len(recorded) != 2 {
		t.Fatalf("netmgr recorded %d sandboxes, want 2: %+v", len(recorded), recorded)
	}
	for _, p := range pods {
		ip, err := netip.ParseAddr(p.ip)
		if err != nil || !subnet.Contains(ip) {
			t.Fatalf("pod %s: CRI reports IP %q, want one in %s", p.name, p.ip, subnet)
		}
		s, ok := recorded[sandboxNameFor(network, p.id, "eth0")]
		if !ok {
			t.Fatalf("pod %s (%s): no netmgr sandbox for its attachment; have %+v", p.name, p.id, recorded)
		}
		if len(s.Attachments) != 1 || s.Attachments[0].Network != network || !strings.HasPrefix(s.Attachments[0].IPv4, p.ip+"/") {
			t.Errorf("pod %s: netmgr attachment %+v, want %s on %s", p.name, s.Attachments, p.ip, network)
		}
		if s.Labels["cni.netmgr.io/container-id"] != p.id {
			t.Errorf("pod %s: netmgr labels %v, want container-id %s", p.name, s.Labels, p.id)
		}
		if filepath.Dir(s.NetNS) != c.netnsDir() {
			t.Errorf("pod %s: namespace %s, want one pinned under %s", p.name, s.NetNS, c.netnsDir())
		}
		// The container, which joined the pod's namespace, has that address on eth0.
		out, err := c.exec(p, "ip", "-4", "-o", "addr", "show", "dev", "eth0")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, " "+p.ip+"/") {
			t.Errorf("pod %s: eth0 shows %q, want %s", p.name, strings.TrimSpace(out), p.ip)
		}
	}
	if web.ip == cl.ip {
		t.Fatalf("both pods got %s", web.ip)
	}

	// They reach each other: ICMP both ways, and TCP from client to a server in web.
	if err := c.ping(cl, web.ip); err != nil {
		t.Fatal(err)
	}
	if err := c.ping(web, cl.ip); err != nil {
		t.Fatal(err)
	}
	if _, err := c.exec(web, "httpd", "-p", "8080", "-h", "/www"); err != nil {
		t.Fatal(err)
	}
	var got string
	var err error
	for try := 0; try < 20; try++ { // httpd daemonizes before it listens
		// Not wget -T: Debian's static busybox crashes with it when the connection fails.
		if got, err = c.exec(cl, "timeout", "5", "wget", "-qO-", "http://"+web.ip+":8080/index.html"); err == nil {
			break
		}
	}
	if err != nil || got != "hello from netmgr\n" {
		t.Fatalf("client fetching from web: %q, %v", got, err)
	}

	// Teardown as a kubelet does it, then nothing is left of the pods.
	for _, p := range pods {
		if err := c.removePod(p); err != nil {
			t.Fatal(err)
		}
	}
	// The host ends of the veths go asynchronously (netmgr-cni's detached child, or with the netns).
	testutil.WaitNoLinks(t, c.ns, bridge.HostIfPrefix)
	c.assertNothingLeft()
	if rep := c.gcReport(); len(rep) != 0 {
		t.Errorf("netmgr's repair found leftovers of the pods: %v", rep)
	}
	// CRI used the images present: it never pulled (there is no registry to pull from).
	if strings.Contains(c.ctd.Log(), "PullImage") {
		t.Errorf("containerd pulled an image:\n%s", lastLines(c.ctd.Log(), 20))
	}
}
