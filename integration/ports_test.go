package integration

import (
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"

	"github.com/netmgr/netmgr/internal/testutil"
)

// nftPorts is the published-ports table of the host as nft prints it ("" when absent).
func (h *host) nftPorts(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft")
	}
	out, err := exec.Command("nsenter", "--net="+h.ns.Path(), "nft", "list", "table", "inet", "netmgr_ports").CombinedOutput()
	if err != nil {
		return ""
	}
	return string(out)
}

// TestPodctlPublish drives published ports through podctl: --publish with a range, a refused second
// publish, bad syntax, removal, and repair of a create killed after it took its port.
func TestPodctlPublish(t *testing.T) {
	h := newHost(t)
	ctx := context.Background()
	out := testutil.NewOutside(t, h.ns)
	h.must(t, "network", "create", "web", "--driver", "bridge", "--subnet", "10.80.0.0/24")
	doc := h.must(t, "-o", "json", "sandbox", "create", "a", "--network", "web", "--publish", "8080:80", "-p", "5300-5301:53-54/udp")
	var sb struct {
		NetNS string `json:"netns"`
		Ports []struct {
			HostPort      int    `json:"host_port"`
			ContainerPort int    `json:"container_port"`
			Protocol      string `json:"protocol"`
		} `json:"ports"`
	}
	if err := json.Unmarshal([]byte(doc), &sb); err != nil {
		t.Fatal(err)
	}
	if len(sb.Ports) != 3 || sb.Ports[2].HostPort != 5301 || sb.Ports[2].ContainerPort != 54 || sb.Ports[2].Protocol != "udp" {
		t.Fatalf("ports %+v", sb.Ports)
	}
	testutil.Listen(t, testutil.Open(t, sb.NetNS), ":80")
	if seen, err := testutil.Dial(out.NS, "192.0.2.1:8080"); err != nil || seen != "192.0.2.2" {
		t.Fatalf("outside -> 192.0.2.1:8080: %q %v", seen, err)
	}

	_, err := h.podctl(ctx, "sandbox", "create", "b", "--network", "web", "-p", "8080:80")
	if err == nil || !strings.Contains(err.Error(), `already published by sandbox "a"`) {
		t.Errorf("second publish of 8080: %v", err)
	}
	_, err = h.podctl(ctx, "sandbox", "create", "b", "--network", "web", "-p", "80")
	if err == nil || !strings.Contains(err.Error(), "--publish") {
		t.Errorf("bad --publish: %v", err)
	}
	if len(h.sandboxes(t)) != 1 {
		t.Errorf("refused creates left sandboxes: %+v", h.sandboxes(t))
	}

	// A create killed after its sandbox took port 9090 and was plumbed: the next podctl rolls it back,
	// and the port is free.
	h.killAt(t, "sandbox-create:attached", "sandbox", "create", "c", "--network", "web", "-p", "9090:80")
	h.must(t, "sandbox", "create", "d", "--network", "web", "-p", "9090:80")
	h.must(t, "sandbox", "rm", "d")

	// A delete killed after it detached (ports already closed): the next podctl finishes it.
	h.killAt(t, "sandbox-delete:detached", "sandbox", "rm", "a")
	h.must(t, "gc")
	if err := testutil.DialBlocked(out.NS, "192.0.2.1:8080"); err != nil {
		t.Errorf("port 8080 after its sandbox was removed: %v", err)
	}
	table := h.nftPorts(t)
	for _, s := range []string{"8080", "5300", "5301", "9090", "owner="} {
		if strings.Contains(table, s) {
			t.Errorf("ports table still mentions %s:\n%s", s, table)
		}
	}
	if n := len(h.sandboxes(t)); n != 0 {
		t.Errorf("%d sandboxes left", n)
	}
	h.must(t, "sandbox", "create", "e", "--network", "web", "-p", "8080:80")
}

// TestPodctlMacvlan creates a macvlan network with a shim through podctl on a veth parent whose peer
// stands for the LAN, and reaches a sandbox from the host.
func TestPodctlMacvlan(t *testing.T) {
	h := newHost(t)
	lan := testutil.NewOutsideNet(t, h.ns, "10.81.0.100/24", "10.81.0.1/24", "lan0")
	h.must(t, "network", "create", "mv", "--driver", "macvlan", "--subnet", "10.81.0.0/24", "--gateway", "10.81.0.1",
		"--opt", "parent=lan0", "--opt", "shim=true")
	var sb sandboxJSON
	if err := json.Unmarshal([]byte(h.must(t, "-o", "json", "sandbox", "create", "a", "--network", "mv")), &sb); err != nil {
		t.Fatal(err)
	}
	ip := strings.Split(sb.Attachments[0].IPv4, "/")[0]
	if err := testutil.Ping(h.ns, ip); err != nil {
		t.Errorf("host -> macvlan pod through the shim: %v", err)
	}
	if err := testutil.Ping(testutil.Open(t, sb.NetNS), lan.Addr.String()); err != nil {
		t.Errorf("macvlan pod -> LAN router: %v", err)
	}
	if _, err := h.podctl(context.Background(), "network", "create", "mv2", "--driver", "macvlan", "--subnet", "10.82.0.0/24",
		"--opt", "parent=lan0", "--opt", "mode=private"); err == nil || !strings.Contains(err.Error(), "one mode per parent") {
		t.Errorf("second mode on lan0: %v", err)
	}
	h.must(t, "sandbox", "rm", "a")
	h.must(t, "network", "rm", "mv")
}
