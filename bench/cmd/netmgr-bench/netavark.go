package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// The netavark side is called the way Podman 4 calls it (common/libnetwork/netavark): Podman keeps each
// network as a JSON file (/etc/containers/networks/NAME.json), does the IPAM itself, creates and pins
// the container's namespace, and then runs
//
//	netavark --config RUNDIR --rootless=false --aardvark-binary=PATH setup|teardown NSPATH
//
// with the network options (container id and name, per-network interface name and static IPs, and the
// network definitions as network_info) as JSON on stdin. Debian's netavark 1.4 knows the iptables and
// firewalld drivers; NETAVARK_FW=iptables pins the first, so that it never reaches for a firewalld on
// the system bus (whose rules would land in the root namespace): its iptables rules land in the bench
// namespace this process runs in.

// netavarkNetwork is Podman's network file (types.Network), the part a bridge network uses.
type netavarkNetwork struct {
	Name             string           `json:"name"`
	ID               string           `json:"id"`
	Driver           string           `json:"driver"`
	NetworkInterface string           `json:"network_interface"`
	Created          string           `json:"created"`
	Subnets          []netavarkSubnet `json:"subnets"`
	IPv6Enabled      bool             `json:"ipv6_enabled"`
	Internal         bool             `json:"internal"`
	DNSEnabled       bool             `json:"dns_enabled"`
	IPAMOptions      map[string]any   `json:"ipam_options"`
}

type netavarkSubnet struct {
	Subnet  string `json:"subnet"`
	Gateway string `json:"gateway"`
}

// netavarkOptions is what netavark reads on stdin (Podman's types.NetworkOptions plus network_info).
type netavarkOptions struct {
	ContainerID   string                        `json:"container_id"`
	ContainerName string                        `json:"container_name"`
	Networks      map[string]netavarkPerNetwork `json:"networks"`
	NetworkInfo   map[string]netavarkNetwork    `json:"network_info"`
}

type netavarkPerNetwork struct {
	InterfaceName string   `json:"interface_name"`
	StaticIPs     []string `json:"static_ips"`
}

func netavarkMissing(path string) string {
	if path == "" {
		return "no netavark given"
	}
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Sprintf("%s not found (apt-get install netavark)", path)
	}
	if st.IsDir() || st.Mode()&0o111 == 0 {
		return fmt.Sprintf("%s is not an executable file", path)
	}
	return ""
}

// benchNetavark times n creates (new pinned netns + netavark setup) then n deletes (netavark teardown +
// netns removal) on one netavark bridge network, as a rootful Podman runs them.
func benchNetavark(ctx context.Context, c config, r *results, n int, subnet string) (cr, dr series, err error) {
	dir := filepath.Join(c.work, fmt.Sprintf("netavark-%d", n))
	runDir := filepath.Join(dir, "run") // Podman's /run/containers/networks
	netDir := filepath.Join(dir, "networks")
	for _, d := range []string{runDir, netDir, filepath.Join(dir, "netns")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, nil, err
		}
	}
	pfx := mustPrefix(subnet)
	gw := pfx.Addr().Next()
	bridge := fmt.Sprintf("navb%d", n)
	name := fmt.Sprintf("navbench%d", n)
	id := sha256.Sum256([]byte(name))
	network := netavarkNetwork{
		Name: name, ID: hex.EncodeToString(id[:]), Driver: "bridge", NetworkInterface: bridge,
		Created: time.Now().Format(time.RFC3339Nano), Subnets: []netavarkSubnet{{Subnet: pfx.String(), Gateway: gw.String()}},
		IPAMOptions: map[string]any{"driver": "host-local"},
	}
	netFile := filepath.Join(netDir, name+".json")
	b, err := json.MarshalIndent(network, "", "     ")
	if err != nil {
		return nil, nil, err
	}
	if err := os.WriteFile(netFile, b, 0o644); err != nil {
		return nil, nil, err
	}
	aardvark := filepath.Join(filepath.Dir(c.netavark), "aardvark-dns")

	ids := make([]string, n)
	paths := make([]string, n)
	ips := make([]netip.Addr, n)
	ip := gw
	for i := range ids {
		sum := sha256.Sum256(fmt.Appendf(nil, "navbench%d-%04d", n, i))
		ids[i] = hex.EncodeToString(sum[:])
		paths[i] = filepath.Join(dir, "netns", "netns-"+ids[i][:12])
		ip = ip.Next()
		ips[i] = ip
	}
	// One netavark process, as Podman's exec does it: the options on stdin, the result on stdout.
	call := func(ctx context.Context, cmd string, i int) error {
		// Podman reads its network files when it starts; read this one per op too.
		raw, err := os.ReadFile(netFile)
		if err != nil {
			return err
		}
		var nw netavarkNetwork
		if err := json.Unmarshal(raw, &nw); err != nil {
			return err
		}
		opts, err := json.Marshal(netavarkOptions{
			ContainerID: ids[i], ContainerName: fmt.Sprintf("c%04d", i),
			Networks:    map[string]netavarkPerNetwork{name: {InterfaceName: "eth0", StaticIPs: []string{ips[i].String()}}},
			NetworkInfo: map[string]netavarkNetwork{name: nw},
		})
		if err != nil {
			return err
		}
		x := exec.CommandContext(ctx, c.netavark, "--config", runDir, "--rootless=false", "--aardvark-binary="+aardvark, cmd, paths[i])
		x.Env = append(os.Environ(), "NETAVARK_FW=iptables")
		x.Stdin = bytes.NewReader(opts)
		var stdout, stderr bytes.Buffer
		x.Stdout, x.Stderr = &stdout, &stderr
		if err := x.Run(); err != nil {
			return fmt.Errorf("netavark %s %s: %w: %s", cmd, ids[i][:12], err, strings.TrimSpace(stderr.String()+" "+stdout.String()))
		}
		return nil
	}

	return benchPinned(ctx, r, n, paths, peerOps{
		side: "netavark", bridge: bridge, setupName: "netavark setup", teardownName: "netavark teardown",
		setup:    func(ctx context.Context, i int) error { return call(ctx, "setup", i) },
		teardown: func(ctx context.Context, i int) error { return call(ctx, "teardown", i) },
	})
}

func netavarkVersion(path string) string {
	out, err := exec.Command("dpkg-query", "-W", "-f", "${Version}", "netavark").Output()
	if err != nil || len(out) == 0 {
		return path + " (version unknown)"
	}
	return "netavark " + string(out)
}
