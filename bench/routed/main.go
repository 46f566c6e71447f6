// Command routed measures sandbox create and delete per op at several N on one host, side by side
// in one run:
//
//	routed        netmgr in process, a routed network (Manager.CreateSandbox / DeleteSandbox)
//	routed-floor  the bare kernel work of a routed pod, by hand with netlink, no netmgr: a namespace
//	              pinned by bind mount, lo up, a veth pair made inside it with its peer in the host,
//	              a /32, both ends up, a default route via 169.254.1.1 on-link, the host's /32 route;
//	              delete: host end down and unpin (the kernel destroys the rest, as netmgr's delete)
//	bridge        netmgr in process, a bridge network (stops at 1023: the kernel's port limit)
//	bridge-floor  the same by hand for a bridge: the veth's host end on a bridge, a /16 address and a
//	              default route via the bridge's address
//
// Each (side, N) gets a fresh host namespace: N creates, timed as one batch, then N deletes, timed
// as one batch, then the namespace goes and the kernel is given time to finish destroying the N
// namespaces before the next side. It prints ms/op per side and N, the ratios routed/routed-floor,
// bridge/bridge-floor and routed at N against N=first, and writes a PNG of ms/op against N.
//
// It needs root. Every namespace is pinned under a temporary directory (TMPDIR, /dev/shm by default
// in bench/run.sh) and removed at the end, also on error or interrupt; the root namespace is never
// touched. Timing never makes it fail.
//
//	go run ./bench/routed [-n 100,1000,4000] [-out bench/out/routed.txt] [-png bench/out/routed.png]
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/netmgr/netmgr/drivers"
	_ "github.com/netmgr/netmgr/drivers/routed"
	"github.com/netmgr/netmgr/integration"
	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/sandbox"
)

// sides in the order they run at each N.
var sides = []string{"routed", "routed-floor", "bridge", "bridge-floor"}

// bridgeMax is the most sandboxes one bridge takes (the kernel's 1024 ports, less none: netmgr's
// bridge has no other port).
const bridgeMax = 1023

type result struct{ create, del time.Duration }

func main() {
	ns := flag.String("n", "100,1000,4000", "comma-separated N")
	out := flag.String("out", filepath.Join(integration.RepoRoot(), "bench", "out", "routed.txt"), "report file (also printed)")
	png := flag.String("png", filepath.Join(integration.RepoRoot(), "bench", "out", "routed.png"), "plot file (empty: none)")
	settle := flag.Duration("settle", 3*time.Second, "pause after each side for the kernel to destroy its namespaces")
	replot := flag.String("replot", "", "only draw -png from a JSON report of an earlier run (-out with .json)")
	rounds := flag.Int("rounds", 3, "rounds; each measures every side at every N once (sides in rotating order); the report gives medians")
	flag.Parse()
	var counts []int
	for _, s := range strings.Split(*ns, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "bench/routed: -n %q: not a list of counts\n", *ns)
			os.Exit(2)
		}
		counts = append(counts, n)
	}
	if *replot != "" {
		res, err := readJSON(*replot)
		if err == nil {
			err = plot(*png, counts, res)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench/routed:", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, counts, *rounds, *settle, *out, *png); err != nil {
		fmt.Fprintln(os.Stderr, "bench/routed:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, counts []int, rounds int, settle time.Duration, out, png string) error {
	work, err := os.MkdirTemp("", "netmgr-bench-routed-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	all := map[string]map[int][]result{}
	for round := range rounds {
		for _, n := range counts {
			for k := range sides {
				side := sides[(k+round)%len(sides)]
				if strings.HasPrefix(side, "bridge") && n > bridgeMax {
					continue
				}
				if ctx.Err() != nil {
					return ctx.Err()
				}
				dir := filepath.Join(work, fmt.Sprintf("%s-%d-%d", side, n, round))
				r, err := measure(ctx, side, n, dir)
				if err != nil {
					return fmt.Errorf("%s N=%d: %w", side, n, err)
				}
				if all[side] == nil {
					all[side] = map[int][]result{}
				}
				all[side][n] = append(all[side][n], r)
				fmt.Fprintf(os.Stderr, "bench/routed: round %d %-13s N=%-5d create %6.2f ms/op  delete %6.2f ms/op\n", round+1, side, n, perOp(r.create, n), perOp(r.del, n))
				select {
				case <-ctx.Done():
				case <-time.After(settle):
				}
			}
		}
	}
	res, best := map[string]map[int]result{}, map[string]map[int]result{}
	for side, byN := range all {
		res[side], best[side] = map[int]result{}, map[int]result{}
		for n, rs := range byN {
			res[side][n], best[side][n] = median(rs), fastest(rs)
		}
	}
	report := table(counts, res, "medians of the rounds") + "\n" + table(counts, best, "fastest of the rounds (the least disturbed by other load)")
	fmt.Print(report)
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(out, []byte(report), 0o644); err != nil {
		return err
	}
	if err := writeJSON(strings.TrimSuffix(out, filepath.Ext(out))+".json", res); err != nil {
		return err
	}
	if png != "" {
		if err := plot(png, counts, res); err != nil {
			return fmt.Errorf("plot: %w", err)
		}
		fmt.Fprintf(os.Stderr, "bench/routed: plot written to %s\n", png)
	}
	return nil
}

// jsonResult is one side at one N in the JSON report, in ms per op.
type jsonResult struct {
	Create float64 `json:"create_ms"`
	Delete float64 `json:"delete_ms"`
}

func writeJSON(path string, res map[string]map[int]result) error {
	out := map[string]map[string]jsonResult{}
	for side, byN := range res {
		out[side] = map[string]jsonResult{}
		for n, r := range byN {
			out[side][strconv.Itoa(n)] = jsonResult{perOp(r.create, n), perOp(r.del, n)}
		}
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

func readJSON(path string) (map[string]map[int]result, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var in map[string]map[string]jsonResult
	if err := json.Unmarshal(b, &in); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	res := map[string]map[int]result{}
	for side, byN := range in {
		res[side] = map[int]result{}
		for ns, r := range byN {
			n, err := strconv.Atoi(ns)
			if err != nil {
				return nil, fmt.Errorf("%s: N %q: %w", path, ns, err)
			}
			ms := func(v float64) time.Duration { return time.Duration(v * float64(n) * float64(time.Millisecond)) }
			res[side][n] = result{create: ms(r.Create), del: ms(r.Delete)}
		}
	}
	return res, nil
}

// fastest is the fastest create and the fastest delete of rs, each on its own.
func fastest(rs []result) result {
	f := rs[0]
	for _, r := range rs[1:] {
		f.create, f.del = min(f.create, r.create), min(f.del, r.del)
	}
	return f
}

// median is the median create and the median delete of rs, each on its own.
func median(rs []result) result {
	cs := make([]time.Duration, len(rs))
	ds := make([]time.Duration, len(rs))
	for i, r := range rs {
		cs[i], ds[i] = r.create, r.del
	}
	slices.Sort(cs)
	slices.Sort(ds)
	return result{create: cs[len(cs)/2], del: ds[len(ds)/2]}
}

func perOp(d time.Duration, n int) float64 { return float64(d.Microseconds()) / 1000 / float64(n) }

func table(counts []int, res map[string]map[int]result, what string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "bench/routed (%s): sandbox create and delete per op, one host, in process; %s\n\n", time.Now().UTC().Format("2006-01-02 15:04"), what)
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "op\tN\trouted\trouted-floor\trouted/floor\tbridge\tbridge-floor\tbridge/floor\trouted N / first N\t")
	for _, op := range []string{"create", "delete"} {
		for _, n := range counts {
			get := func(side string) (float64, bool) {
				r, ok := res[side][n]
				if !ok {
					return 0, false
				}
				if op == "create" {
					return perOp(r.create, n), true
				}
				return perOp(r.del, n), true
			}
			cell := func(side string) string {
				if v, ok := get(side); ok {
					return fmt.Sprintf("%.2f ms", v)
				}
				return "-"
			}
			ratio := func(a, b string) string {
				x, ok1 := get(a)
				y, ok2 := get(b)
				if !ok1 || !ok2 || y == 0 {
					return "-"
				}
				return fmt.Sprintf("%.2fx", x/y)
			}
			growth := "-"
			if first, ok := res["routed"][counts[0]]; ok {
				if v, ok := get("routed"); ok {
					f := perOp(first.create, counts[0])
					if op == "delete" {
						f = perOp(first.del, counts[0])
					}
					growth = fmt.Sprintf("%.2fx", v/f)
				}
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", op, n, cell("routed"), cell("routed-floor"), ratio("routed", "routed-floor"),
				cell("bridge"), cell("bridge-floor"), ratio("bridge", "bridge-floor"), growth)
		}
	}
	tw.Flush()
	fmt.Fprintf(&b, "\nbridge stops at %d (one bridge's port limit); the floors are netlink by hand, no netmgr (see bench/routed/main.go)\n", bridgeMax)
	return b.String()
}

// measure runs one side at one N in a fresh host namespace under dir.
func measure(ctx context.Context, side string, n int, dir string) (r result, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return r, err
	}
	hostPath := filepath.Join(dir, "host")
	host, err := sandbox.Create(hostPath)
	if err != nil {
		return r, err
	}
	defer func() {
		host.Close()
		err = errors.Join(err, sandbox.Remove(hostPath))
	}()
	hh, err := host.NewHandle()
	if err != nil {
		return r, err
	}
	defer hh.Close()
	if lo, err := hh.LinkByName("lo"); err == nil {
		_ = hh.LinkSetUp(lo)
	}
	switch side {
	case "routed", "bridge":
		return measureNetmgr(ctx, side, n, dir, hostPath)
	default:
		return measureFloor(ctx, side, n, dir, host, hh)
	}
}

func measureNetmgr(ctx context.Context, side string, n int, dir, hostPath string) (r result, err error) {
	m, err := netmgr.New(ctx, netmgr.WithStateDir(filepath.Join(dir, "state")), netmgr.WithRunDir(filepath.Join(dir, "run")), netmgr.WithHostNetNS(hostPath))
	if err != nil {
		return r, err
	}
	defer m.Close()
	if _, err := m.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "net", Driver: side, Subnets: []netip.Prefix{netip.MustParsePrefix("10.128.0.0/16")}}); err != nil {
		return r, err
	}
	names := make([]string, n)
	for i := range n {
		names[i] = "s" + strconv.Itoa(i)
	}
	defer func() {
		// Whatever a failure left.
		sbs, _ := m.Sandboxes(context.WithoutCancel(ctx))
		for _, s := range sbs {
			_ = m.DeleteSandbox(context.WithoutCancel(ctx), s.Name)
		}
		_ = m.DeleteNetwork(context.WithoutCancel(ctx), "net")
	}()
	start := time.Now()
	for _, name := range names {
		if _, err := m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: name, Networks: []netmgr.AttachSpec{{Network: "net"}}}); err != nil {
			return r, err
		}
	}
	r.create = time.Since(start)
	start = time.Now()
	for _, name := range names {
		if err := m.DeleteSandbox(ctx, name); err != nil {
			return r, err
		}
	}
	r.del = time.Since(start)
	return r, nil
}

var nextHop = net.ParseIP("169.254.1.1")

// measureFloor does a pod's kernel work by hand (see the package documentation).
func measureFloor(ctx context.Context, side string, n int, dir string, host *sandbox.NetNS, hh *netlink.Handle) (r result, err error) {
	bridge := side == "bridge-floor"
	var br netlink.Link
	if bridge {
		b := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0", TxQLen: -1}}
		if err := hh.LinkAdd(b); err != nil {
			return r, err
		}
		if br, err = hh.LinkByName("br0"); err != nil {
			return r, err
		}
		if err := hh.AddrAdd(br, &netlink.Addr{IPNet: drivers.IPNet(netip.MustParsePrefix("10.128.0.1/16"))}); err != nil {
			return r, err
		}
		if err := hh.LinkSetUp(br); err != nil {
			return r, err
		}
	}
	paths := make([]string, 0, n)
	hostEnds := make([]string, 0, n)
	defer func() {
		for _, p := range paths {
			_ = sandbox.Remove(p)
		}
	}()
	start := time.Now()
	for i := range n {
		if ctx.Err() != nil {
			return r, ctx.Err()
		}
		p := filepath.Join(dir, "pod"+strconv.Itoa(i))
		hostEnd := fmt.Sprintf("fl%d", i)
		ip := netip.AddrFrom4([4]byte{10, 128, byte((i + 2) >> 8), byte(i + 2)})
		if err := floorPod(p, hostEnd, ip, host, hh, br); err != nil {
			return r, fmt.Errorf("pod %d: %w", i, err)
		}
		paths = append(paths, p)
		hostEnds = append(hostEnds, hostEnd)
	}
	r.create = time.Since(start)
	start = time.Now()
	for i, p := range paths {
		if l, err := hh.LinkByName(hostEnds[i]); err == nil {
			if err := hh.LinkSetDown(l); err != nil {
				return r, err
			}
		}
		if err := sandbox.Remove(p); err != nil {
			return r, err
		}
	}
	r.del = time.Since(start)
	paths = nil
	return r, nil
}

func floorPod(path, hostEnd string, ip netip.Addr, host *sandbox.NetNS, hh *netlink.Handle, br netlink.Link) error {
	ns, err := sandbox.Create(path)
	if err != nil {
		return err
	}
	defer ns.Close()
	sh, err := ns.Handle()
	if err != nil {
		return err
	}
	if lo, err := sh.LinkByName("lo"); err == nil {
		if err := sh.LinkSetUp(lo); err != nil {
			return err
		}
	}
	if err := sh.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", TxQLen: -1}, PeerName: hostEnd, PeerNamespace: netlink.NsFd(host.Fd())}); err != nil {
		return err
	}
	he, err := hh.LinkByName(hostEnd)
	if err != nil {
		return err
	}
	if br != nil {
		if err := hh.LinkSetMasterByIndex(he, br.Attrs().Index); err != nil {
			return err
		}
	}
	if err := hh.LinkSetUp(he); err != nil {
		return err
	}
	eth, err := sh.LinkByName("eth0")
	if err != nil {
		return err
	}
	bits := 32
	if br != nil {
		bits = 16
	}
	if err := sh.AddrAdd(eth, &netlink.Addr{IPNet: drivers.IPNet(netip.PrefixFrom(ip, bits))}); err != nil {
		return err
	}
	if err := sh.LinkSetUp(eth); err != nil {
		return err
	}
	def := &netlink.Route{LinkIndex: eth.Attrs().Index, Dst: drivers.IPNet(netip.MustParsePrefix("0.0.0.0/0"))}
	if br != nil {
		def.Gw = net.ParseIP("10.128.0.1")
	} else {
		def.Gw, def.Flags = nextHop, int(netlink.FLAG_ONLINK)
	}
	if err := sh.RouteAdd(def); err != nil {
		return err
	}
	if br == nil {
		if err := hh.RouteAdd(&netlink.Route{LinkIndex: he.Attrs().Index, Dst: drivers.IPNet(netip.PrefixFrom(ip, 32)), Scope: netlink.SCOPE_LINK}); err != nil {
			return err
		}
	}
	return nil
}
