// Command netmgr-bench measures netmgr side by side with Debian's CNI reference plugins (called through
// containerd's go-cni, the way containerd calls them) and with podctl (one process per operation), and
// prints one table with ms/op, ratios, memory figures and the project's targets.
//
// It must run as root inside a throwaway network namespace, which bench/run.sh creates and names with
// -netns: it refuses to run anywhere else. Everything it creates (namespace pins, bridges, state, IPAM files)
// lives in that namespace or under -work and is removed before it exits, also on error or signal.
// The exit status reports errors only, never timings.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"time"

	gocni "github.com/containerd/go-cni"
	"github.com/containernetworking/cni/libcni"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/store"
	"github.com/netmgr/netmgr/sandbox"
)

type config struct {
	work       string
	netns      string
	podctl     string
	cniDir     string
	netavark   string
	n          int
	nLarge     int
	cniLarge   int
	settle     time.Duration
	portLimit  bool
	out        string
	invocation string
	sides      string
	cpuProfile string
}

func main() {
	var c config
	flag.StringVar(&c.work, "work", "", "scratch directory for state, run dirs, namespace pins and CNI files (required)")
	flag.StringVar(&c.netns, "netns", "", "the pinned bench namespace this process must be running in (required)")
	flag.StringVar(&c.podctl, "podctl", "", "podctl binary; empty or missing skips the podctl column")
	flag.StringVar(&c.cniDir, "cni-dir", "/usr/lib/cni", "directory of the CNI reference plugins")
	flag.StringVar(&c.netavark, "netavark", "/usr/lib/podman/netavark", "Debian's netavark binary; missing skips the netavark column (apt-get install netavark)")
	flag.IntVar(&c.n, "n", 100, "sandboxes per run for netmgr, CNI and podctl")
	flag.IntVar(&c.nLarge, "n-large", 1000, "sandboxes of netmgr's large run, also used for the heap figure (at most 1023: bridge port limit)")
	flag.IntVar(&c.cniLarge, "cni-large", 500, "sandboxes of CNI's large run (0 skips it)")
	flag.DurationVar(&c.settle, "settle", 2*time.Second, "pause between runs so the kernel finishes tearing down namespaces")
	flag.BoolVar(&c.portLimit, "port-limit", true, "after the large netmgr run, check that the 1024th attach to one bridge fails with ErrFull")
	flag.StringVar(&c.out, "out", "", "also write the report to this file")
	flag.StringVar(&c.invocation, "invocation", "", "how the run was started, printed in the report")
	flag.StringVar(&c.sides, "sides", "netmgr,podctl,cni,netavark", "the sides to run, comma-separated (a side left out is reported as skipped)")
	flag.StringVar(&c.cpuProfile, "cpuprofile", "", "write a CPU profile of netmgr's N=-n creates and deletes (in process) to this file")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, c); err != nil {
		fmt.Fprintln(os.Stderr, "netmgr-bench:", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

// checkIsolated makes sure the process runs in the bench namespace pinned at path: everything here
// creates links, routes and firewall rules in the namespace it runs in.
func checkIsolated(path string) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (creates network namespaces); run bench/run.sh as root")
	}
	if path == "" {
		return errors.New("-netns is required: the bench namespace this process was started in (see bench/run.sh)")
	}
	var self, want unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &self); err != nil {
		return err
	}
	if err := unix.Stat(path, &want); err != nil {
		return err
	}
	if self.Ino != want.Ino || self.Dev != want.Dev {
		return fmt.Errorf("refusing to run: this process is not in the bench namespace %s; use bench/run.sh, which starts it with nsenter --net", path)
	}
	return nil
}

// series is the duration of each operation of one timed loop.
type series []time.Duration

func (s series) msPerOp() float64 {
	if len(s) == 0 {
		return 0
	}
	var total time.Duration
	for _, d := range s {
		total += d
	}
	return ms(total) / float64(len(s))
}

func (s series) quantile(q float64) time.Duration {
	if len(s) == 0 {
		return 0
	}
	c := slices.Clone(s)
	slices.Sort(c)
	return c[min(len(c)-1, int(q*float64(len(c))))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// results holds every measurement of the run; a nil series means not measured.
type results struct {
	create, del map[string]map[int]series // side -> N -> per-op durations
	errs        map[string]error          // side/N -> error of that run
	skipped     map[string]string         // side -> why it was not run

	heapPerSandbox  float64 // bytes, from the large netmgr run
	heapN           int
	podCreateRSS    []int64 // KiB, one per `sandbox create`
	podRmRSS        []int64 // KiB, one per `sandbox rm`
	portLimitResult string
	portLimitOK     *bool

	parts map[string][]part // side/op/N -> where the time of one op goes
}

// part is a share of an operation's time, in ms/op.
type part struct {
	name   string
	msOp   float64
	detail string
}

func partKey(side, op string, n int) string { return fmt.Sprintf("%s/%s/%d", side, op, n) }

// storeParts turns a timedStore snapshot into the store's share of n operations.
func storeParts(n int, ts *timer) part {
	calls, spent := ts.snapshot()
	var total time.Duration
	var ncalls int
	detail := ""
	for _, m := range []string{"Get", "List", "Txn"} {
		total += spent[m]
		ncalls += calls[m]
		if calls[m] > 0 {
			detail += fmt.Sprintf(" %s %.1f/op %.2fms,", m, float64(calls[m])/float64(n), ms(spent[m])/float64(n))
		}
	}
	return part{name: "store", msOp: ms(total) / float64(n), detail: fmt.Sprintf("%.1f calls/op:%s", float64(ncalls)/float64(n), strings.TrimSuffix(detail, ","))}
}

func (r *results) put(side string, n int, c, d series) {
	if c != nil {
		r.create[side][n] = c
	}
	if d != nil {
		r.del[side][n] = d
	}
}

func run(ctx context.Context, c config) error {
	if c.work == "" {
		return errors.New("-work is required")
	}
	if err := checkIsolated(c.netns); err != nil {
		return err
	}
	if c.nLarge > 1023 {
		return fmt.Errorf("-n-large %d: a Linux bridge takes at most 1023 ports", c.nLarge)
	}
	// go-cni leaves libcni's result cache at its default (/var/lib/cni); keep it in the scratch dir.
	libcni.CacheDir = filepath.Join(c.work, "cni-cache")

	r := &results{
		create:  map[string]map[int]series{"netmgr": {}, "podctl": {}, "cni": {}, "netavark": {}},
		del:     map[string]map[int]series{"netmgr": {}, "podctl": {}, "cni": {}, "netavark": {}},
		errs:    map[string]error{},
		skipped: map[string]string{},
		parts:   map[string][]part{},
	}
	started := time.Now()
	type step struct {
		name string
		fn   func() error
	}
	steps := []step{
		{fmt.Sprintf("netmgr N=%d", c.n), func() error {
			cr, dr, err := benchNetmgr(ctx, c, r, c.n, "10.201.0.0/16", false)
			r.put("netmgr", c.n, cr, dr)
			return err
		}},
		{fmt.Sprintf("podctl N=%d", c.n), func() error {
			if why := podctlMissing(c.podctl); why != "" {
				r.skipped["podctl"] = why
				logf("podctl: skipped: %s", why)
				return nil
			}
			cr, dr, err := benchPodctl(ctx, c, r, c.n, "10.203.0.0/16")
			r.put("podctl", c.n, cr, dr)
			return err
		}},
		{fmt.Sprintf("cni N=%d", c.n), func() error {
			cr, dr, err := benchCNI(ctx, c, r, c.n, "10.204.0.0/16")
			r.put("cni", c.n, cr, dr)
			return err
		}},
		{fmt.Sprintf("netavark N=%d", c.n), func() error {
			if why := netavarkMissing(c.netavark); why != "" {
				r.skipped["netavark"] = why
				logf("netavark: skipped: %s", why)
				return nil
			}
			cr, dr, err := benchNetavark(ctx, c, r, c.n, "10.206.0.0/16")
			r.put("netavark", c.n, cr, dr)
			return err
		}},
	}
	if c.cniLarge > 0 {
		steps = append(steps, step{fmt.Sprintf("cni N=%d", c.cniLarge), func() error {
			cr, dr, err := benchCNI(ctx, c, r, c.cniLarge, "10.205.0.0/16")
			r.put("cni", c.cniLarge, cr, dr)
			return err
		}})
	}
	if c.nLarge > 0 {
		steps = append(steps, step{fmt.Sprintf("netmgr N=%d", c.nLarge), func() error {
			cr, dr, err := benchNetmgr(ctx, c, r, c.nLarge, "10.202.0.0/16", true)
			r.put("netmgr", c.nLarge, cr, dr)
			return err
		}})
	}
	// netmgr's large run goes last: the kernel destroys its 1000 namespaces in the background after the
	// deletes return, which would slow whatever ran next.
	for i, s := range steps {
		if ctx.Err() != nil {
			break
		}
		if side, _, _ := strings.Cut(s.name, " "); !slices.Contains(strings.Split(c.sides, ","), side) {
			r.skipped[side] = "not in -sides"
			continue
		}
		if i > 0 {
			sleep(ctx, c.settle)
		}
		t0 := time.Now()
		logf("%s ...", s.name)
		if err := s.fn(); err != nil {
			r.errs[s.name] = err
			logf("%s: error: %v", s.name, err)
		} else {
			logf("%s done in %s", s.name, time.Since(t0).Round(100*time.Millisecond))
		}
	}
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted: %w", ctx.Err())
	}

	report := r.render(c, time.Since(started))
	fmt.Print(report)
	if c.out != "" {
		if err := os.MkdirAll(filepath.Dir(c.out), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(c.out, []byte(report), 0o644); err != nil {
			return err
		}
	}
	if len(r.errs) > 0 {
		var errs []error
		for name, err := range r.errs {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
		return errors.Join(errs...)
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// cleanupCtx is for undoing work after the run's context was cancelled.
func cleanupCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 5*time.Minute)
}

// benchNetmgr times n CreateSandbox calls (new pinned netns + one bridge attachment each), then n
// DeleteSandbox calls, on one Manager with fresh state. With large set it also measures the heap the
// Manager holds per sandbox and, if asked, the bridge port limit.
func benchNetmgr(ctx context.Context, c config, r *results, n int, subnet string, large bool) (cr, dr series, err error) {
	dir := filepath.Join(c.work, fmt.Sprintf("netmgr-%d", n))
	// The stores New would open by default, wrapped to time the calls into them.
	stateDir := filepath.Join(dir, "state")
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, nil, err
	}
	st, err := store.OpenBolt(filepath.Join(stateDir, "netmgr.db"))
	if err != nil {
		return nil, nil, err
	}
	runDir := filepath.Join(dir, "run")
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return nil, nil, errors.Join(err, st.Close())
	}
	rt, err := netmgr.OpenRuntimeStore(ctx, filepath.Join(runDir, "runtime.db"))
	if err != nil {
		return nil, nil, errors.Join(err, st.Close())
	}
	ts := newTimer()
	m, err := netmgr.New(ctx, netmgr.WithStateDir(stateDir), netmgr.WithRunDir(runDir), netmgr.WithStores(ts.wrap(st), ts.wrap(rt)))
	if err != nil {
		return nil, nil, errors.Join(err, st.Close())
	}
	netName := fmt.Sprintf("nm%d", n)
	if _, err := m.CreateNetwork(ctx, netmgr.NetworkSpec{Name: netName, Driver: "bridge", Subnets: []netip.Prefix{mustPrefix(subnet)}}); err != nil {
		return nil, nil, errors.Join(err, m.Close(), st.Close())
	}
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("sb%04d", i)
	}
	var extra []string // sandboxes of the port-limit check
	// Sized up front so that the heap figure counts the Manager's memory, not the benchmark's.
	live := make(map[string]bool, n+64)
	cr = make(series, 0, n)
	defer func() {
		cctx, cancel := cleanupCtx()
		defer cancel()
		var errs []error
		for _, name := range append(slices.Clone(names), extra...) {
			if live[name] {
				errs = append(errs, m.DeleteSandbox(cctx, name))
			}
		}
		errs = append(errs, m.DeleteNetwork(cctx, netName), m.Close(), st.Close())
		err = errors.Join(append([]error{err}, errs...)...)
	}()
	spec := func(name string) netmgr.SandboxSpec {
		return netmgr.SandboxSpec{Name: name, Networks: []netmgr.AttachSpec{{Network: netName}}}
	}

	for _, name := range names {
		live[name] = false
	}
	ts.reset()
	if c.cpuProfile != "" && !large {
		stop, err := startProfile(c.cpuProfile)
		if err != nil {
			return nil, nil, err
		}
		defer stop()
	}
	var before, after runtime.MemStats
	if large {
		gc()
		runtime.ReadMemStats(&before)
	}
	for _, name := range names {
		if ctx.Err() != nil {
			return cr, nil, ctx.Err()
		}
		t0 := time.Now()
		_, err := m.CreateSandbox(ctx, spec(name))
		d := time.Since(t0)
		if err != nil {
			return cr, nil, err
		}
		live[name] = true
		cr = append(cr, d)
	}
	r.parts[partKey("netmgr", "create", n)] = []part{storeParts(n, ts)}
	if large {
		gc()
		runtime.ReadMemStats(&after)
		r.heapPerSandbox = (float64(after.HeapAlloc) - float64(before.HeapAlloc)) / float64(n)
		r.heapN = n
		if c.portLimit {
			extra = portLimitCheck(ctx, m, r, n, spec, live)
			for _, name := range extra {
				if live[name] {
					if err := m.DeleteSandbox(ctx, name); err != nil {
						return cr, nil, err
					}
					live[name] = false
				}
			}
		}
	}
	ts.reset()
	dr = make(series, 0, n)
	for _, name := range names {
		if ctx.Err() != nil {
			return cr, dr, ctx.Err()
		}
		t0 := time.Now()
		err := m.DeleteSandbox(ctx, name)
		d := time.Since(t0)
		if err != nil {
			return cr, dr, err
		}
		live[name] = false
		dr = append(dr, d)
	}
	r.parts[partKey("netmgr", "delete", n)] = []part{storeParts(n, ts)}
	return cr, dr, nil
}

// startProfile starts a CPU profile into path; the returned function stops it and closes the file.
func startProfile(path string) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// gc collects twice, so that sync.Pool victim caches are empty too.
func gc() {
	runtime.GC()
	runtime.GC()
}

// portLimitCheck attaches more sandboxes to a bridge that already has have ports until one fails, and
// records whether the 1024th attach is the one that fails, with ErrFull. It returns the names it used.
func portLimitCheck(ctx context.Context, m *netmgr.Manager, r *results, have int, spec func(string) netmgr.SandboxSpec, live map[string]bool) []string {
	var names []string
	ok := false
	r.portLimitOK = &ok
	for k := have + 1; k <= 1030; k++ {
		name := fmt.Sprintf("full%04d", k)
		names = append(names, name)
		_, err := m.CreateSandbox(ctx, spec(name))
		if err == nil {
			live[name] = true
			continue
		}
		ok = k == 1024 && errors.Is(err, netmgr.ErrFull)
		r.portLimitResult = fmt.Sprintf("attach #%d to one bridge failed (ErrFull: %v): %v", k, errors.Is(err, netmgr.ErrFull), err)
		return names
	}
	r.portLimitResult = "attach #1030 to one bridge still succeeded"
	return names
}

// cniConfList is the network containerd's default config sets up: the bridge plugin as gateway with
// masquerade (iptables) and hairpin (netmgr's bridge sets hairpin too), host-local IPAM with a default
// route, its data kept under the scratch dir.
func cniConfList(name, bridge, subnet, dataDir string) []byte {
	return fmt.Appendf(nil, `{
  "cniVersion": "1.0.0",
  "name": %q,
  "plugins": [{
    "type": "bridge",
    "bridge": %q,
    "isGateway": true,
    "ipMasq": true,
    "hairpinMode": true,
    "ipam": {
      "type": "host-local",
      "ranges": [[{"subnet": %q}]],
      "routes": [{"dst": "0.0.0.0/0"}],
      "dataDir": %q
    }
  }]
}`, name, bridge, subnet, dataDir)
}

// benchCNI times n ADDs (new pinned netns + go-cni Setup) then n DELs (go-cni Remove + netns removal).
func benchCNI(ctx context.Context, c config, r *results, n int, subnet string) (cr, dr series, err error) {
	dir := filepath.Join(c.work, fmt.Sprintf("cni-%d", n))
	bridge := fmt.Sprintf("cnib%d", n)
	conf := cniConfList(fmt.Sprintf("bench%d", n), bridge, subnet, filepath.Join(dir, "ipam"))
	lib, err := gocni.New(gocni.WithPluginDir([]string{c.cniDir}))
	if err != nil {
		return nil, nil, err
	}
	if err := lib.Load(gocni.WithConfListBytes(conf)); err != nil {
		return nil, nil, err
	}
	ids := make([]string, n)
	paths := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("cnibench%d-%04d", n, i)
		paths[i] = filepath.Join(dir, "netns", ids[i])
	}
	return benchPinned(ctx, r, n, paths, peerOps{
		side: "cni", bridge: bridge, setupName: "go-cni Setup (bridge ADD)", teardownName: "go-cni Remove (bridge DEL)",
		setup: func(ctx context.Context, i int) error {
			if _, err := lib.Setup(ctx, ids[i], paths[i]); err != nil {
				return fmt.Errorf("cni add %s: %w", ids[i], err)
			}
			return nil
		},
		teardown: func(ctx context.Context, i int) error {
			if err := lib.Remove(ctx, ids[i], paths[i]); err != nil {
				return fmt.Errorf("cni del %s: %w", ids[i], err)
			}
			return nil
		},
	})
}

// peerOps is a peer's attach (setup) and detach (teardown) of sandbox i, whose namespace is pinned
// at paths[i], and the bridge it uses (which it may leave behind: the bridge plugin never deletes
// its own).
type peerOps struct {
	side, bridge, setupName, teardownName string
	setup, teardown                       func(ctx context.Context, i int) error
}

// benchPinned times a peer's n creates (pin a namespace, then setup) and n deletes (teardown, then
// unpin), one at a time, records the parts, and on the way out undoes whatever is left, also after
// a failure (a failed setup may have done part of its work: teardown undoes it). The peer's
// iptables chains die with the bench namespace.
func benchPinned(ctx context.Context, r *results, n int, paths []string, p peerOps) (cr, dr series, err error) {
	pinned := make([]bool, n)
	added := make([]bool, n)
	defer func() {
		cctx, cancel := cleanupCtx()
		defer cancel()
		var errs []error
		for i := range paths {
			if added[i] {
				errs = append(errs, p.teardown(cctx, i))
			}
			if pinned[i] {
				errs = append(errs, sandbox.Remove(paths[i]))
			}
		}
		if l, lerr := netlink.LinkByName(p.bridge); lerr == nil {
			errs = append(errs, netlink.LinkDel(l))
		}
		err = errors.Join(append([]error{err}, errs...)...)
	}()

	var pinD, addD, delD, unpinD time.Duration
	cr = make(series, 0, n)
	for i := range paths {
		if ctx.Err() != nil {
			return cr, nil, ctx.Err()
		}
		t0 := time.Now()
		ns, err := sandbox.Create(paths[i])
		if err != nil {
			return cr, nil, err
		}
		ns.Close()
		pinned[i] = true
		t1 := time.Now()
		err = p.setup(ctx, i)
		d := time.Since(t0)
		pinD += t1.Sub(t0)
		addD += time.Since(t1)
		added[i] = true
		if err != nil {
			return cr, nil, err
		}
		cr = append(cr, d)
	}
	dr = make(series, 0, n)
	for i := range paths {
		if ctx.Err() != nil {
			return cr, dr, ctx.Err()
		}
		t0 := time.Now()
		if err := p.teardown(ctx, i); err != nil {
			return cr, dr, err
		}
		added[i] = false
		t1 := time.Now()
		err := sandbox.Remove(paths[i])
		d := time.Since(t0)
		delD += t1.Sub(t0)
		unpinD += time.Since(t1)
		if err != nil {
			return cr, dr, err
		}
		pinned[i] = false
		dr = append(dr, d)
	}
	r.parts[partKey(p.side, "create", n)] = []part{
		{name: "netns create+pin", msOp: ms(pinD) / float64(n)},
		{name: p.setupName, msOp: ms(addD) / float64(n)},
	}
	r.parts[partKey(p.side, "delete", n)] = []part{
		{name: p.teardownName, msOp: ms(delD) / float64(n)},
		{name: "netns unpin", msOp: ms(unpinD) / float64(n)},
	}
	return cr, dr, nil
}

func podctlMissing(path string) string {
	if path == "" {
		return "no podctl given"
	}
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Sprintf("%s not found (run `make build` first)", path)
	}
	if st.IsDir() || st.Mode()&0o111 == 0 {
		return fmt.Sprintf("%s is not an executable file", path)
	}
	return ""
}

// benchPodctl times n `podctl sandbox create` processes then n `podctl sandbox rm` processes, each
// from fork to exit, and records each one's peak RSS.
func benchPodctl(ctx context.Context, c config, r *results, n int, subnet string) (cr, dr series, err error) {
	dir := filepath.Join(c.work, fmt.Sprintf("podctl-%d", n))
	base := []string{"--state-dir", filepath.Join(dir, "state"), "--run-dir", filepath.Join(dir, "run")}
	podctl := func(ctx context.Context, args ...string) (time.Duration, int64, error) {
		cmd := exec.CommandContext(ctx, c.podctl, append(slices.Clone(base), args...)...)
		var stderr bytes.Buffer
		cmd.Stdout = io.Discard
		cmd.Stderr = &stderr
		t0 := time.Now()
		err := cmd.Run()
		d := time.Since(t0)
		var rss int64
		if cmd.ProcessState != nil {
			if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
				rss = ru.Maxrss // KiB on Linux
			}
		}
		if err != nil {
			return d, rss, fmt.Errorf("podctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
		}
		return d, rss, nil
	}
	const netName = "pnet"
	if _, _, err := podctl(ctx, "network", "create", netName, "--driver", "bridge", "--subnet", subnet); err != nil {
		return nil, nil, err
	}
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("psb%04d", i)
	}
	live := make([]bool, n)
	defer func() {
		cctx, cancel := cleanupCtx()
		defer cancel()
		var errs []error
		for i, name := range names {
			if live[i] {
				_, _, e := podctl(cctx, "sandbox", "rm", name)
				errs = append(errs, e)
			}
		}
		_, _, e := podctl(cctx, "network", "rm", netName)
		errs = append(errs, e)
		err = errors.Join(append([]error{err}, errs...)...)
	}()

	cr = make(series, 0, n)
	for i, name := range names {
		if ctx.Err() != nil {
			return cr, nil, ctx.Err()
		}
		d, rss, err := podctl(ctx, "sandbox", "create", name, "--network", netName)
		if err != nil {
			// A failed create may have left nothing or a half-made sandbox; rm is idempotent.
			live[i] = true
			return cr, nil, err
		}
		live[i] = true
		cr = append(cr, d)
		r.podCreateRSS = append(r.podCreateRSS, rss)
	}
	// Baselines for the breakdown, with the n sandboxes in place: a process that opens no Manager, and
	// one that opens the Manager and reads the store.
	// Medians of 21 runs each, as single runs are noisy on a busy machine.
	var startS, openS series
	for range 21 {
		d, _, err := podctl(ctx, "version")
		if err != nil {
			return cr, nil, err
		}
		startS = append(startS, d)
		if d, _, err = podctl(ctx, "network", "ls"); err != nil {
			return cr, nil, err
		}
		openS = append(openS, d)
	}
	start := ms(startS.quantile(0.5))
	open := ms(openS.quantile(0.5)) - start
	for _, op := range []string{"create", "delete"} {
		r.parts[partKey("podctl", op, n)] = []part{
			{name: "process start", msOp: start, detail: "median `podctl version`"},
			{name: "Manager open", msOp: open, detail: "median `podctl network ls` minus that"},
		}
	}
	dr = make(series, 0, n)
	for i, name := range names {
		if ctx.Err() != nil {
			return cr, dr, ctx.Err()
		}
		d, rss, err := podctl(ctx, "sandbox", "rm", name)
		if err != nil {
			return cr, dr, err
		}
		live[i] = false
		dr = append(dr, d)
		r.podRmRSS = append(r.podRmRSS, rss)
	}
	return cr, dr, nil
}
