// Command pod measures pod start latency on a real containerd: a pod of two containers, N started one
// after another and P started at once, each split into network setup (the netmgr sandbox: namespace,
// veth on a bridge, address, pause process) and container start (create and start both containers),
// with the network's share of the total. It compares the network part with a CNI ADD of the same
// attachment as bench/cni measured it (bench/out/cni.txt), if that report exists.
//
// With -probe-pods N it then runs N pods with a readiness and a liveness probe each every second
// under the agent's pod keeper in this process, and reports the process's CPU: the probe cost.
//
// It needs root and a built containerd (make containerd). It starts its own containerd in the root
// namespace on a private socket, puts the pods' host side in a namespace of its own, and removes all of
// it at the end, also on error or interrupt. Timing never makes it fail.
//
//	go run ./bench/pod [-n 20] [-parallel 10] [-out bench/out/pod.txt]
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/netmgr/netmgr/integration"
	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/pod"
	"github.com/netmgr/netmgr/netmgr/pod/containerd"
	"github.com/netmgr/netmgr/sandbox"
)

func main() {
	n := flag.Int("n", 20, "pods started one after another")
	par := flag.Int("parallel", 10, "pods started at once")
	probes := flag.Int("probe-pods", 100, "pods probed every second for the probe cost (0: skip)")
	probeTime := flag.Duration("probe-time", 20*time.Second, "how long the probe cost is measured")
	out := flag.String("out", filepath.Join(integration.RepoRoot(), "bench", "out", "pod.txt"), "report file (also printed)")
	cniReport := flag.String("cni", filepath.Join(integration.RepoRoot(), "bench", "out", "cni.txt"), "bench/cni report to compare with")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *n, *par, *probes, *probeTime, *out, *cniReport); err != nil {
		fmt.Fprintln(os.Stderr, "bench/pod:", err)
		os.Exit(1)
	}
}

type sample struct{ network, containers time.Duration }

func (s sample) total() time.Duration { return s.network + s.containers }

func run(ctx context.Context, n, par, probePods int, probeTime time.Duration, outPath, cniPath string) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("needs root: creates network namespaces and runs containerd")
	}
	work, err := os.MkdirTemp("", "netmgr-bench-pod-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	rootfs := filepath.Join(work, "rootfs")
	if err := integration.BusyboxRootFS(rootfs); err != nil {
		return err
	}
	hostPath := filepath.Join(work, "hostns")
	host, err := sandbox.Create(hostPath)
	if err != nil {
		return err
	}
	host.Close()
	defer func() { err = errors.Join(err, sandbox.Remove(hostPath)) }()

	ctd, err := integration.StartContainerd(ctx)
	if err != nil {
		return err
	}
	const ctdNS = "netmgr-bench"
	ctd.UseNamespace(ctdNS)
	defer func() { err = errors.Join(err, ctd.Stop()) }()

	opts := []netmgr.Option{netmgr.WithStateDir(filepath.Join(work, "state")), netmgr.WithRunDir(filepath.Join(work, "run")), netmgr.WithHostNetNS(hostPath)}
	pauseBin := filepath.Join(integration.RepoRoot(), "bin", "pause")
	usePause := false
	if _, err := os.Stat(pauseBin); err == nil {
		opts, usePause = append(opts, netmgr.WithPauseBinary(pauseBin)), true
	}
	nm, err := netmgr.New(ctx, opts...)
	if err != nil {
		return err
	}
	defer nm.Close()
	if _, err := nm.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "bench", Driver: "bridge", Subnets: []netip.Prefix{netip.MustParsePrefix("10.123.0.0/16")}}); err != nil {
		return err
	}
	defer func() { err = errors.Join(err, nm.DeleteNetwork(context.WithoutCancel(ctx), "bench")) }()
	// A registry on 127.0.0.1 in the bench's host namespace, with a busybox image; the runtime pulls
	// from there (its dialer enters that namespace).
	hostNS, err := sandbox.Open(hostPath)
	if err != nil {
		return err
	}
	defer hostNS.Close()
	reg, err := integration.StartRegistry(ctx, hostNS, integration.RegistryOptions{})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, reg.Stop()) }()
	img, err := integration.BusyboxImage("sleep", "3600")
	if err != nil {
		return err
	}
	ref, err := reg.Push(ctx, "busybox:bench", img)
	if err != nil {
		return err
	}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := hostNS.Do(func() (err error) {
			var d net.Dialer
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	rt, err := containerd.New(ctx, ctd.Address, containerd.WithNamespace(ctdNS), containerd.WithDir(filepath.Join(work, "pods")),
		containerd.WithInsecureRegistries(reg.Host), containerd.WithRegistryDialer(dial))
	if err != nil {
		return err
	}
	defer rt.Close()
	defer func() {
		// The pulled image and its snapshots go with the namespace.
		cctx := namespaces.WithNamespace(context.WithoutCancel(ctx), ctdNS)
		err = errors.Join(err, rt.Client().ImageService().Delete(cctx, ref, images.SynchronousDelete()))
	}()
	pm := pod.New(nm, rt, pod.WithPause(usePause))

	var made []string
	var madeMu sync.Mutex
	defer func() {
		cctx := context.WithoutCancel(ctx)
		for _, name := range made {
			err = errors.Join(err, pm.Remove(cctx, name))
		}
	}()
	image := rootfs
	start := func(name string) (sample, error) {
		spec := pod.Spec{Name: name, Networks: []netmgr.AttachSpec{{Network: "bench"}}, Containers: []pod.ContainerSpec{
			{Name: "app", Image: image, Command: []string{"sleep", "3600"}, ImagePullPolicy: pod.PullIfNotPresent},
			{Name: "sidecar", Image: image, Command: []string{"sleep", "3600"}, ImagePullPolicy: pod.PullIfNotPresent},
		}}
		p, err := pm.Run(ctx, spec)
		if err != nil {
			return sample{}, err
		}
		madeMu.Lock()
		made = append(made, name)
		madeMu.Unlock()
		return sample{p.Timing.Network, p.Timing.Containers}, nil
	}

	// One warm-up pod: the first shim and runc exec fill the page cache.
	if _, err := start("warmup"); err != nil {
		return err
	}
	began := time.Now()
	var seq []sample
	for i := 0; i < n; i++ {
		s, err := start(fmt.Sprintf("seq%02d", i))
		if err != nil {
			return err
		}
		seq = append(seq, s)
	}
	seqWall := time.Since(began)

	parS := make([]sample, par)
	errs := make([]error, par)
	var wg sync.WaitGroup
	began = time.Now()
	for i := 0; i < par; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			parS[i], errs[i] = start(fmt.Sprintf("par%02d", i))
		}(i)
	}
	wg.Wait()
	parWall := time.Since(began)
	if err := errors.Join(errs...); err != nil {
		return err
	}

	// The same pods from the pulled image (present: IfNotPresent fetches nothing), one after another.
	t0 := time.Now()
	if err := rt.EnsureImage(ctx, ref, pod.PullIfNotPresent); err != nil {
		return err
	}
	pullTook := time.Since(t0)
	image = ref
	if _, err := start("imgwarmup"); err != nil {
		return err
	}
	began = time.Now()
	var imgS []sample
	for i := 0; i < n; i++ {
		s, err := start(fmt.Sprintf("img%02d", i))
		if err != nil {
			return err
		}
		imgS = append(imgS, s)
	}
	imgWall := time.Since(began)

	began = time.Now()
	cctx := context.WithoutCancel(ctx)
	for _, name := range made {
		if err := pm.Remove(cctx, name); err != nil {
			return err
		}
	}
	rmEach := time.Since(began) / time.Duration(max(len(made), 1))
	made = nil

	var b strings.Builder
	report(&b, n, par, usePause, seq, parS, imgS, seqWall, parWall, imgWall, pullTook, rmEach, cniPath)
	if probePods > 0 {
		if err := probeCost(ctx, &b, nm, pm, rt, rootfs, filepath.Join(work, "run"), probePods, probeTime); err != nil {
			return err
		}
	}
	fmt.Print(b.String())
	if outPath != "" {
		if err := os.MkdirAll(filepath.Dir(outPath), 0o755); err == nil {
			err = os.WriteFile(outPath, []byte(b.String()), 0o644)
			if err != nil {
				return err
			}
		}
	}
	return nil
}

func report(w io.Writer, n, par int, pause bool, seq, parS, imgS []sample, seqWall, parWall, imgWall, pullTook, rmEach time.Duration, cniPath string) {
	host, _ := os.Hostname()
	fmt.Fprintf(w, "netmgr pod start benchmark, %s, host %s, %d CPUs, %s\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"), host, runtime.NumCPU(), runtime.Version())
	fmt.Fprintf(w, "command: make bench (go run ./bench/pod -n %d -parallel %d)\n", n, par)
	fmt.Fprintf(w, "pod = 2 containers (busybox sleep, local root filesystem as an overlay), 1 bridge attachment, pause process: %v;\n", pause)
	fmt.Fprintln(w, "containerd v2.2.9 with runc (private daemon), pods' host side in a bench network namespace")
	fmt.Fprintln(w, "network = netmgr sandbox (netns + veth on a bridge + IPv4 + pause); containers = create + start both")
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "run\tpods\tnetwork ms p50\tp90\tcontainers ms p50\tp90\ttotal ms p50\tp90\tnetwork share\twall s\t")
	row := func(name string, ss []sample, wall time.Duration) float64 {
		var net, tot time.Duration
		for _, s := range ss {
			net += s.network
			tot += s.total()
		}
		share := 100 * float64(net) / float64(max(tot, 1))
		pick := func(f func(sample) time.Duration) []float64 {
			out := make([]float64, len(ss))
			for i, s := range ss {
				out[i] = float64(f(s).Microseconds()) / 1000
			}
			sort.Float64s(out)
			return out
		}
		nw, ct, to := pick(func(s sample) time.Duration { return s.network }), pick(func(s sample) time.Duration { return s.containers }), pick(sample.total)
		fmt.Fprintf(tw, "%s\t%d\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f%%\t%.2f\t\n", name, len(ss),
			pct(nw, 50), pct(nw, 90), pct(ct, 50), pct(ct, 90), pct(to, 50), pct(to, 90), share, wall.Seconds())
		return share
	}
	s1 := row("sequential", seq, seqWall)
	s2 := row("parallel", parS, parWall)
	s3 := row("image", imgS, imgWall)
	tw.Flush()
	fmt.Fprintf(w, "image = the sequential run from a pulled image (a busybox layer in a local docker-registry, pulled once in %.0f ms,\n", float64(pullTook.Microseconds())/1000)
	fmt.Fprintln(w, "then present: imagePullPolicy IfNotPresent fetches nothing); each container gets a snapshot of it")
	fmt.Fprintf(w, "pod rm: %.1f ms per pod (containers, tasks, sandbox, address)\n", float64(rmEach.Microseconds())/1000)
	fmt.Fprintln(w)
	verdict := func(share float64) string {
		if share < 5 {
			return "PASS"
		}
		return "MISS"
	}
	fmt.Fprintln(w, "target (informational: timing never fails the run): network setup under 5% of pod start")
	fmt.Fprintf(w, "  sequential: %.1f%% %s    parallel: %.1f%% %s    image: %.1f%% %s\n", s1, verdict(s1), s2, verdict(s2), s3, verdict(s3))

	var netP50 float64
	{
		xs := make([]float64, len(seq))
		for i, s := range seq {
			xs[i] = float64(s.network.Microseconds()) / 1000
		}
		sort.Float64s(xs)
		netP50 = pct(xs, 50)
	}
	cni := readCNI(cniPath)
	fmt.Fprintln(w)
	if len(cni) == 0 {
		fmt.Fprintf(w, "CNI comparison: no %s (run bench/cni/run.sh first)\n", cniPath)
		return
	}
	fmt.Fprintf(w, "network setup of the same pod through CNI (one ADD through go-cni, from %s):\n", filepath.Base(cniPath))
	for _, c := range cni {
		fmt.Fprintf(w, "  %-14s %7.2f ms   %.1fx this run's sequential network p50 (%.2f ms)\n", c.side, c.ms, c.ms/netP50, netP50)
	}
}

func pct(sorted []float64, p int) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*p+99)/100 - 1
	return sorted[max(i, 0)]
}

type cniFigure struct {
	side string
	ms   float64
}

// readCNI reads the ADD rows of bench/cni's report: "ADD  SIDE  MS/OP ...".
func readCNI(path string) []cniFigure {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []cniFigure
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) >= 3 && fs[0] == "ADD" {
			var ms float64
			if _, err := fmt.Sscanf(fs[2], "%f", &ms); err == nil && ms > 0 {
				out = append(out, cniFigure{fs[1], ms})
			}
		}
	}
	return out
}
