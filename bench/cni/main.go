// Command cnibench times CNI ADD and DEL through go-cni, as containerd's CRI plugin calls them, for
// netmgr-cni and for Debian's bridge plugin with host-local, side by side in one run. Run it through
// bench/cni/run.sh, which puts it in a throwaway network namespace: every bridge, veth and firewall
// rule the plugins create lives there.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	gocni "github.com/containerd/go-cni"
	"github.com/containernetworking/cni/libcni"

	"github.com/netmgr/netmgr/sandbox"
)

// side is one plugin configuration under test.
type side struct {
	name, note string
	conf       string
	cni        gocni.CNI
	add, del   []time.Duration
}

func main() {
	n := flag.Int("n", 100, "attachments per side")
	work := flag.String("work", "", "scratch directory (required): state, IPAM data, result cache, pod namespaces")
	pluginDir := flag.String("plugin-dir", "", "directory holding the netmgr-cni binary (required)")
	cniDir := flag.String("cni-dir", "/usr/lib/cni", "Debian's reference plugins")
	out := flag.String("out", "", "also write the report here")
	invocation := flag.String("invocation", "", "how the run was started, for the report")
	flag.Parse()
	if *work == "" || *pluginDir == "" {
		fmt.Fprintln(os.Stderr, "cnibench: -work and -plugin-dir are required; run bench/cni/run.sh")
		os.Exit(2)
	}
	if err := run(*n, *work, *pluginDir, *cniDir, *out, *invocation); err != nil {
		fmt.Fprintln(os.Stderr, "cnibench:", err)
		os.Exit(1)
	}
}

func run(n int, work, pluginDir, cniDir, out, invocation string) error {
	ctx := context.Background()
	// go-cni has no option for libcni's result cache; keep it in the scratch dir, not /var/lib/cni.
	libcni.CacheDir = filepath.Join(work, "cache")
	ipam := filepath.Join(work, "host-local")
	sides := []*side{
		{name: "netmgr-cni", note: "driver bridge, netmgr IPAM, nftables masquerade (per network)",
			conf: fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "nmbench", "plugins": [{"type": "netmgr-cni", "driver": "bridge",
  "subnets": ["10.200.0.0/16"], "stateDir": %q, "runDir": %q}]}`, filepath.Join(work, "state"), filepath.Join(work, "run"))},
		{name: "bridge", note: "bridge + host-local as containerd's default config (isGateway, ipMasq via iptables)",
			conf: fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "brbench", "plugins": [{"type": "bridge", "bridge": "cni0",
  "isGateway": true, "ipMasq": true, "promiscMode": true,
  "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": "10.201.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}]}}]}`, ipam)},
		{name: "bridge-nomasq", note: "the same without ipMasq (no iptables calls)",
			conf: fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "brbench2", "plugins": [{"type": "bridge", "bridge": "cni1",
  "isGateway": true, "ipMasq": false, "promiscMode": true,
  "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": "10.202.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}]}}]}`, ipam)},
	}
	for _, s := range sides {
		c, err := gocni.New(gocni.WithPluginDir([]string{pluginDir, cniDir}), gocni.WithMinNetworkCount(1))
		if err != nil {
			return err
		}
		if err := c.Load(gocni.WithConfListBytes([]byte(s.conf))); err != nil {
			return fmt.Errorf("%s: load configuration: %w", s.name, err)
		}
		s.cni = c
	}
	nsDir := filepath.Join(work, "netns")
	pod := func(s *side, i int) string { return filepath.Join(nsDir, fmt.Sprintf("%s-%d", s.name, i)) }

	// One untimed round first: each side creates its bridge (and netmgr-cni its network) on first use.
	ops := func(i int, timed bool) error {
		for _, s := range sides {
			ns, err := sandbox.Create(pod(s, i))
			if err != nil {
				return err
			}
			ns.Close()
		}
		// ADDs alternate between the sides, so that load on the machine hits them alike.
		for _, s := range sides {
			t0 := time.Now()
			if _, err := s.cni.Setup(ctx, fmt.Sprintf("bench%d", i), pod(s, i)); err != nil {
				return fmt.Errorf("%s: ADD #%d: %w", s.name, i, err)
			}
			if timed {
				s.add = append(s.add, time.Since(t0))
			}
		}
		return nil
	}
	dels := func(i int, timed bool) error {
		for _, s := range sides {
			t0 := time.Now()
			if err := s.cni.Remove(ctx, fmt.Sprintf("bench%d", i), pod(s, i)); err != nil {
				return fmt.Errorf("%s: DEL #%d: %w", s.name, i, err)
			}
			if timed {
				s.del = append(s.del, time.Since(t0))
			}
			if err := sandbox.Remove(pod(s, i)); err != nil {
				return err
			}
		}
		return nil
	}
	if err := ops(-1, false); err != nil {
		return err
	}
	if err := dels(-1, false); err != nil {
		return err
	}
	start := time.Now()
	for i := 0; i < n; i++ {
		if err := ops(i, true); err != nil {
			return err
		}
	}
	for i := 0; i < n; i++ {
		if err := dels(i, true); err != nil {
			return err
		}
	}
	return report(sides, n, time.Since(start), cniDir, out, invocation)
}

func mean(d []time.Duration) float64 {
	var sum time.Duration
	for _, x := range d {
		sum += x
	}
	return float64(sum) / float64(len(d)) / 1e6
}

func pct(d []time.Duration, p float64) float64 {
	s := slices.Clone(d)
	slices.Sort(s)
	return float64(s[min(len(s)-1, int(float64(len(s))*p))]) / 1e6
}

func report(sides []*side, n int, took time.Duration, cniDir, out, invocation string) error {
	var b strings.Builder
	host, _ := os.Hostname()
	fmt.Fprintf(&b, "netmgr-cni vs Debian's CNI bridge plugin, %s UTC, host %s\n", time.Now().UTC().Format("2006-01-02 15:04"), host)
	if invocation != "" {
		fmt.Fprintf(&b, "command: %s\n", invocation)
	}
	fmt.Fprintf(&b, "N=%d per side, ops alternating between sides, through go-cni Setup/Remove (one plugin process per op), run took %s\n\n", n, took.Round(time.Second))
	nm := sides[0]
	fmt.Fprintf(&b, "%-4s %-14s %9s %9s %9s %9s\n", "op", "side", "ms/op", "p50", "p90", "ratio")
	for _, op := range []string{"ADD", "DEL"} {
		base := nm.add
		if op == "DEL" {
			base = nm.del
		}
		for _, s := range sides {
			d := s.add
			if op == "DEL" {
				d = s.del
			}
			ratio := "-"
			if s != nm {
				ratio = fmt.Sprintf("%.1fx", mean(d)/mean(base))
			}
			fmt.Fprintf(&b, "%-4s %-14s %9.2f %9.2f %9.2f %9s\n", op, s.name, mean(d), pct(d, 0.5), pct(d, 0.9), ratio)
		}
	}
	fmt.Fprintf(&b, "\nratio = side's ms/op / netmgr-cni's ms/op (higher: netmgr-cni faster)\n")
	fmt.Fprintf(&b, "targets (informational): netmgr-cni >= 3x faster than bridge for ADD and DEL\n")
	for _, op := range []string{"ADD", "DEL"} {
		a, o := nm.add, sides[1].add
		if op == "DEL" {
			a, o = nm.del, sides[1].del
		}
		verdict := "MISS"
		if mean(o)/mean(a) >= 3 {
			verdict = "PASS"
		}
		fmt.Fprintf(&b, "  %s: %.1fx %s\n", op, mean(o)/mean(a), verdict)
	}
	fmt.Fprintf(&b, "\nsides:\n")
	for _, s := range sides {
		fmt.Fprintf(&b, "  %-14s %s\n", s.name, s.note)
	}
	fmt.Fprintf(&b, "each ADD goes into a fresh pinned namespace (created untimed); each DEL is followed by its removal (untimed)\n")
	fmt.Fprintf(&b, "Debian plugins from %s\n", cniDir)
	var w io.Writer = os.Stdout
	if out != "" {
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(out, []byte(b.String()), 0o644); err != nil {
			return err
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
