//go:build podctl_pod

package main

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"

	"github.com/netmgr/netmgr/netmgr/agent"
	"github.com/netmgr/netmgr/netmgr/cluster"
)

// TestPrintNodesPeerError: `podctl node ls` says why a node cannot reach a peer (its agent's
// published SyncPeers error), one line per node and network, and nothing for a node without one.
func TestPrintNodesPeerError(t *testing.T) {
	var out bytes.Buffer
	g := &globals{stdout: &out, stderr: &out}
	msg := "peer not on this node's underlay segment: host3 (underlay 198.19.0.3: reached via router 198.18.0.254)"
	nodes := []cluster.Node{
		{Name: "host2", Address: netip.MustParseAddr("198.18.0.2"), Networks: map[string]cluster.NodeNetwork{
			"rg": {Subnets: []netip.Prefix{netip.MustParsePrefix("10.247.2.0/24")}, Attrs: map[string]string{agent.AttrPeerError: msg, "segment": "198.18.0.0/24"}}}},
		{Name: "host1", Address: netip.MustParseAddr("198.18.0.1"), Networks: map[string]cluster.NodeNetwork{
			"rg": {Subnets: []netip.Prefix{netip.MustParsePrefix("10.247.1.0/24")}, Attrs: map[string]string{"segment": "198.18.0.0/24"}}}},
	}
	if err := printNodes(g, nodes, nil); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[1], "host1") || !strings.HasPrefix(lines[2], "host2") {
		t.Fatalf("node ls printed:\n%s", out.String())
	}
	if want := "host2, network rg: " + msg; lines[3] != want {
		t.Fatalf("last line %q, want %q", lines[3], want)
	}
}
