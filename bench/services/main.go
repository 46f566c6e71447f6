// Command services measures the service controller (netmgr/service/proxy) side by side with a
// linear-chain reference, in one run, inside a throwaway network namespace:
//
//	full sync      N services with E endpoints each in a bolt store; from the agent's start (listing
//	               the store included) to every rule in the kernel, at N=100 and N=10,000
//	latency        from the store write of one change (an endpoint added or removed, a service added)
//	               to the kernel, p50 and p99, with N present; the store is bolt polled every 1 ms, so
//	               up to 1 ms of each figure is the poll
//	kernel         the proxier's Sync of one change alone (no store), p50 and p99
//	linear         the iptables model: one rule per service port in one chain (ip daddr . dport ->
//	               jump to the service's chain), where a change rewrites the chain as
//	               iptables-restore does; its full program and its one change at N, against ours
//	RSS            the agent process's resident set after the full sync at N
//
// It needs root. The namespace and scratch files are removed at the end, also on error or
// interrupt; no packet leaves the namespace. Timing never makes it fail.
//
//	go run ./bench/services [-n 10000] [-endpoints 10] [-changes 200] [-out bench/out/services.txt]
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	mnl "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	_ "github.com/netmgr/netmgr/drivers/bridge"
	"github.com/netmgr/netmgr/integration"
	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/agent"
	"github.com/netmgr/netmgr/netmgr/service"
	"github.com/netmgr/netmgr/netmgr/service/proxy"
	"github.com/netmgr/netmgr/netmgr/store"
	"github.com/netmgr/netmgr/sandbox"
)

func main() {
	n := flag.Int("n", 10000, "services of the large run (the small run has 100)")
	eps := flag.Int("endpoints", 10, "endpoints per service")
	changes := flag.Int("changes", 200, "changes timed per run")
	out := flag.String("out", filepath.Join(integration.RepoRoot(), "bench", "out", "services.txt"), "report file (also printed)")
	prof := flag.String("cpuprofile", "", "write a CPU profile here")
	flag.Parse()
	if *prof != "" {
		f, err := os.Create(*prof)
		if err == nil {
			_ = pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, []int{100, *n}, *eps, *changes, *out); err != nil {
		fmt.Fprintln(os.Stderr, "bench/services:", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

type result struct {
	n              int
	fullSync       time.Duration
	proxierFull    time.Duration
	lat, kern      []time.Duration
	linearFull     time.Duration
	linearChange   []time.Duration
	rssKiB, hwmKiB int
	cps            [2]float64 // new connections per second: straight to the pod, through the cluster IP
	elements       int
}

func run(ctx context.Context, ns []int, eps, changes int, out string) error {
	work, err := os.MkdirTemp("", "netmgr-bench-services.")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	var results []result
	for _, n := range ns {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		r, err := runOne(ctx, work, n, eps, changes)
		if err != nil {
			return fmt.Errorf("services=%d: %w", n, err)
		}
		results = append(results, r)
	}
	return report(results, eps, changes, out)
}

func serviceIP(i int) netip.Addr {
	b := netip.MustParseAddr("10.96.0.10").As4()
	v := binary.BigEndian.Uint32(b[:]) + uint32(i)
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

func endpointIP(i int) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], 10<<24|1<<16+uint32(i))
	return netip.AddrFrom4(b)
}

func endpointRecord(svc, j, idx int) (string, []byte) {
	e := service.Endpoint{Sandbox: fmt.Sprintf("s%d-%d", svc, j), Node: "other", Labels: map[string]string{"app": fmt.Sprintf("s%d", svc)},
		Addrs: []service.EndpointAddr{{Network: "ov", IP: endpointIP(idx), Global: true}}}
	b, _ := json.Marshal(e)
	return service.EndpointKey("other", e.Sandbox), b
}

func serviceRecord(i int) (string, []byte) {
	s := service.Service{Name: fmt.Sprintf("s%d", i), Type: service.ClusterIP, ClusterIP: serviceIP(i),
		Ports: []service.Port{{Port: 80, TargetPort: 8080, Protocol: "tcp"}}, Selector: map[string]string{"app": fmt.Sprintf("s%d", i)},
		ExternalTrafficPolicy: service.PolicyCluster}
	b, _ := json.Marshal(s)
	return service.KeyServices + s.Name, b
}

// populate writes n services and their endpoints straight into the store (Registry.Create would
// choose each address against the others: the benchmark is about the controller).
func populate(ctx context.Context, st store.Store, n, eps int) error {
	var ops []store.Op
	flush := func() error {
		if len(ops) == 0 {
			return nil
		}
		err := st.Txn(ctx, nil, ops)
		ops = ops[:0]
		return err
	}
	for i := 0; i < n; i++ {
		k, v := serviceRecord(i)
		ops = append(ops, store.Put(k, v))
		for j := 0; j < eps; j++ {
			k, v := endpointRecord(i, j, i*eps+j)
			ops = append(ops, store.Put(k, v))
		}
		if len(ops) >= 2000 {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

func runOne(ctx context.Context, work string, n, eps, changes int) (r result, err error) {
	r.n = n
	dir := filepath.Join(work, fmt.Sprint(n))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return r, err
	}
	nsPath := filepath.Join(dir, "netns")
	ns, err := sandbox.Create(nsPath)
	if err != nil {
		return r, err
	}
	defer func() { ns.Close(); err = errors.Join(err, sandbox.Remove(nsPath)) }()
	st, err := store.OpenBolt(filepath.Join(dir, "state.db"), store.WithWatchInterval(time.Millisecond))
	if err != nil {
		return r, err
	}
	defer st.Close()
	if err := populate(ctx, st, n, eps); err != nil {
		return r, err
	}
	m, err := netmgr.New(ctx, netmgr.WithStore(st), netmgr.WithStateDir(filepath.Join(dir, "state")), netmgr.WithRunDir(filepath.Join(dir, "run")),
		netmgr.WithHostNetNS(ns.Path()), netmgr.WithNode("bench"))
	if err != nil {
		return r, err
	}
	defer m.Close()
	synced := make(chan bool, 1000)
	c := proxy.New(proxy.Options{NoPublish: true, Resync: time.Hour, OnSync: func(full bool) { synced <- full }})
	a, err := agent.New(agent.Config{Manager: m, Controllers: []agent.Controller{c}, Logger: benchLogger()})
	if err != nil {
		return r, err
	}
	actx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- a.Run(actx) }()
	defer func() { cancel(); err = errors.Join(err, <-done) }()
	wait := func() error {
		select {
		case <-synced:
			return nil
		case err := <-done:
			return fmt.Errorf("agent ended: %v", err)
		case <-time.After(2 * time.Minute):
			return errors.New("no sync within 2 minutes")
		}
	}
	if err := wait(); err != nil {
		return r, err
	}
	r.fullSync = time.Since(start)
	r.rssKiB, r.hwmKiB = rss()
	conn, err := nftables.New(nftables.WithNetNSFd(int(ns.Fd())))
	if err != nil {
		return r, err
	}
	els, err := conn.GetSetElements(&nftables.Set{Table: &nftables.Table{Name: proxy.TableName, Family: nftables.TableFamilyIPv4}, Name: "cluster-ips",
		KeyType: nftables.TypeIPAddr})
	if err != nil {
		return r, fmt.Errorf("read back cluster-ips: %w", err)
	}
	r.elements = len(els)
	if r.elements != n {
		return r, fmt.Errorf("cluster-ips holds %d elements after the full sync, want %d", r.elements, n)
	}
	bels, err := conn.GetSetElements(&nftables.Set{Table: &nftables.Table{Name: proxy.TableName, Family: nftables.TableFamilyIPv4}, Name: "backends",
		IsMap: true, KeyType: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeMark),
		DataType: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService)})
	if err != nil {
		return r, fmt.Errorf("read back backends: %w", err)
	}
	if len(bels) != n*eps {
		return r, fmt.Errorf("backends holds %d elements after the full sync, want %d", len(bels), n*eps)
	}

	// One change at a time, each timed from its store write to the controller's Sync.
	next := n * eps
	for i := 0; i < changes; i++ {
		var op store.Op
		switch i % 3 {
		case 0: // an endpoint more for some service
			k, v := endpointRecord((i*7919)%n, eps+i, next)
			next++
			op = store.Put(k, v)
		case 1: // and it goes again
			k, _ := endpointRecord(((i-1)*7919)%n, eps+i-1, 0)
			op = store.Del(k)
		case 2: // a new service, with no endpoints
			k, v := serviceRecord(n + i)
			op = store.Put(k, v)
		}
		if err := st.Txn(ctx, nil, []store.Op{op}); err != nil {
			return r, err
		}
		t := time.Now() // the write is committed (and synced: the state file is written with fsync)
		if err := wait(); err != nil {
			return r, err
		}
		r.lat = append(r.lat, time.Since(t))
	}
	if err := dataPath(ctx, m, st, &r, wait); err != nil {
		return r, fmt.Errorf("data path: %w", err)
	}
	cancel()
	if err := <-done; err != nil {
		return r, err
	}
	done <- nil

	// The proxier alone (no store): a full sync of the same state, then single changes.
	px := proxy.NewProxier(int(ns.Fd()), "bench", nil)
	defer px.Close()
	for i := 0; i < n; i++ {
		_, v := serviceRecord(i)
		var s service.Service
		_ = json.Unmarshal(v, &s)
		px.SetService(&s)
		for j := 0; j < eps; j++ {
			k, v := endpointRecord(i, j, i*eps+j)
			e, _ := service.DecodeEndpoint(v)
			px.SetEndpoint(k, e)
		}
	}
	t := time.Now()
	if err := px.Sync(); err != nil {
		return r, fmt.Errorf("proxier full sync: %w", err)
	}
	r.proxierFull = time.Since(t)
	for i := 0; i < changes; i++ {
		k, v := endpointRecord((i*104729)%n, eps+1000+i, next)
		next++
		e, _ := service.DecodeEndpoint(v)
		px.SetEndpoint(k, e)
		t := time.Now()
		if err := px.Sync(); err != nil {
			return r, err
		}
		r.kern = append(r.kern, time.Since(t))
	}
	r.linearFull, r.linearChange, err = linear(int(ns.Fd()), n, eps, min(changes, 20))
	if err != nil {
		err = fmt.Errorf("linear reference: %w", err)
	}
	return r, err
}

// linear programs the iptables model in a table of its own: a chain per service with its endpoints
// (numgen over DNAT rules, as ours) and one dispatch chain with a rule per service port, which a
// change rewrites whole (iptables-restore replaces a chain, it cannot patch one rule of it in place
// without knowing its position).
func linear(fd, n, eps, changes int) (full time.Duration, change []time.Duration, err error) {
	c, err := nftables.New(nftables.WithNetNSFd(fd), nftables.AsLasting(), nftables.WithSockOptions(func(c *mnl.Conn) error {
		raw, err := c.SyscallConn()
		if err != nil {
			return err
		}
		return raw.Control(func(fd uintptr) {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 64<<20)
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 64<<20)
		})
	}))
	if err != nil {
		return 0, nil, err
	}
	defer c.CloseLasting()
	t := &nftables.Table{Name: "linear", Family: nftables.TableFamilyIPv4}
	dispatch := &nftables.Chain{Name: "services", Table: t}
	ops := 0
	flush := func() error {
		ops = 0
		return c.Flush()
	}
	svcRule := func(i int) {
		ip := serviceIP(i)
		c.AddRule(&nftables.Rule{Table: t, Chain: dispatch, Exprs: []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ip.AsSlice()},
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(80)},
			&expr.Verdict{Kind: expr.VerdictJump, Chain: fmt.Sprintf("svc-%d", i)},
		}})
		ops++
	}
	start := time.Now()
	c.AddTable(t)
	c.AddChain(dispatch)
	for i := 0; i < n; i++ {
		ch := &nftables.Chain{Name: fmt.Sprintf("svc-%d", i), Table: t}
		c.AddChain(ch)
		for j := 0; j < eps; j++ {
			ip := endpointIP(i*eps + j)
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{
				&expr.Numgen{Register: 1, Modulus: uint32(eps - j), Type: unix.NFT_NG_RANDOM},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
				&expr.Immediate{Register: 1, Data: ip.AsSlice()},
				&expr.Immediate{Register: 9, Data: binaryutil.BigEndian.PutUint16(8080)},
				&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 9, Specified: true},
			}})
			ops++
		}
		svcRule(i)
		if ops > 3000 {
			if err := flush(); err != nil {
				return 0, nil, err
			}
		}
	}
	if err := flush(); err != nil {
		return 0, nil, err
	}
	full = time.Since(start)
	for k := 0; k < changes; k++ {
		start := time.Now()
		c.FlushChain(dispatch)
		for i := 0; i < n; i++ {
			svcRule(i)
		}
		// One transaction, as iptables-restore's: the whole chain in one batch.
		if err := flush(); err != nil {
			return 0, nil, err
		}
		change = append(change, time.Since(start))
	}
	c.DelTable(t)
	return full, change, c.Flush()
}

func rss() (rssKiB, hwmKiB int) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		var v int
		if _, err := fmt.Sscanf(l, "VmRSS: %d kB", &v); err == nil {
			rssKiB = v
		}
		if _, err := fmt.Sscanf(l, "VmHWM: %d kB", &v); err == nil {
			hwmKiB = v
		}
	}
	return
}

func pct(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(float64(len(s)-1) * p)
	return s[i]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000) }

func report(rs []result, eps, changes int, out string) error {
	var b strings.Builder
	host, _ := os.Hostname()
	fmt.Fprintf(&b, "bench/services — %s, %s, %d endpoints per service, %d changes timed per run\n\n", time.Now().UTC().Format(time.RFC3339), host, eps, changes)
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "services\tfull sync (agent start -> kernel)\tproxier full sync\tstore -> kernel p50\tp99\tkernel only p50\tp99\tlinear full\tlinear change p50\tlinear / ours (change p50)\tRSS after sync\tconn/s pod\tconn/s cluster IP")
	for _, r := range rs {
		lc := pct(r.linearChange, 0.5)
		ratio := float64(lc) / float64(max(pct(r.kern, 0.5), 1))
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.1fx\t%.1f MiB (peak %.1f)\t%.0f\t%.0f (%.1f%%)\n", r.n, ms(r.fullSync), ms(r.proxierFull),
			ms(pct(r.lat, 0.5)), ms(pct(r.lat, 0.99)), ms(pct(r.kern, 0.5)), ms(pct(r.kern, 0.99)), ms(r.linearFull), ms(lc), ratio,
			float64(r.rssKiB)/1024, float64(r.hwmKiB)/1024, r.cps[0], r.cps[1], 100*(r.cps[1]/r.cps[0]-1))
	}
	tw.Flush()
	if len(rs) == 2 {
		a, z := rs[0], rs[1]
		fmt.Fprintf(&b, "\nstore -> kernel p99 at %d vs %d: %.2fx (target <= 1.5x); kernel-only p99: %.2fx; linear change: %.1fx\n",
			z.n, a.n, float64(pct(z.lat, 0.99))/float64(max(pct(a.lat, 0.99), 1)),
			float64(pct(z.kern, 0.99))/float64(max(pct(a.kern, 0.99), 1)),
			float64(pct(z.linearChange, 0.5))/float64(max(pct(a.linearChange, 0.5), 1)))
	}
	fmt.Fprintf(&b, "(the store is bolt, polled every 1 ms by the controller's watch: up to 1 ms of store -> kernel is that poll;\n RSS is the whole benchmark process: the agent, its store and both runs' garbage)\n")
	fmt.Print(b.String())
	if out == "" {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	return os.WriteFile(out, []byte(b.String()), 0o644)
}

// benchLogger shows the controller's full-sync lines with BENCH_VERBOSE=1.
func benchLogger() *slog.Logger {
	if os.Getenv("BENCH_VERBOSE") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// dataPath measures new TCP connections per second (connect, read a line, close) from a client
// sandbox to a server sandbox on one bridge, straight to the pod's address and through a cluster IP,
// with every service of the run present; rounds alternate the two, each figure is the median.
func dataPath(ctx context.Context, m *netmgr.Manager, st store.Store, r *result, wait func() error) error {
	if _, err := m.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "dp", Driver: "bridge", Subnets: []netip.Prefix{netip.MustParsePrefix("10.250.0.0/24")}}); err != nil {
		return err
	}
	srv, err := m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "server", Networks: []netmgr.AttachSpec{{Network: "dp"}}})
	if err != nil {
		return err
	}
	defer m.DeleteSandbox(context.Background(), "server")
	cli, err := m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "client", Networks: []netmgr.AttachSpec{{Network: "dp"}}})
	if err != nil {
		return err
	}
	defer m.DeleteSandbox(context.Background(), "client")
	defer m.DeleteNetwork(context.Background(), "dp")
	sns, err := sandbox.Open(srv.NetNS)
	if err != nil {
		return err
	}
	defer sns.Close()
	cns, err := sandbox.Open(cli.NetNS)
	if err != nil {
		return err
	}
	defer cns.Close()
	var ln net.Listener
	if err := sns.Do(func() (err error) { ln, err = net.Listen("tcp", ":8080"); return err }); err != nil {
		return err
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("ok\n"))
			c.Close()
		}
	}()
	// The service, and its endpoint as this node's publisher would write it.
	vip := serviceIP(200000)
	svc := service.Service{Name: "dp", Type: service.ClusterIP, ClusterIP: vip, Ports: []service.Port{{Port: 80, TargetPort: 8080, Protocol: "tcp"}},
		Selector: map[string]string{"app": "dp"}, ExternalTrafficPolicy: service.PolicyCluster}
	sb, _ := json.Marshal(svc)
	eb, _ := json.Marshal(service.Endpoint{Sandbox: "server", Node: "bench", Labels: map[string]string{"app": "dp"},
		Addrs: []service.EndpointAddr{{Network: "dp", IP: srv.Attachments[0].IPv4.Addr()}}})
	if err := st.Txn(ctx, nil, []store.Op{store.Put(service.KeyServices+"dp", sb), store.Put(service.EndpointKey("bench", "server"), eb)}); err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := wait(); err != nil {
			return err
		}
		if _, err := connectOnce(cns, netip.AddrPortFrom(vip, 80).String()); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return errors.New("the cluster IP never answered")
		}
	}
	targets := []string{netip.AddrPortFrom(srv.Attachments[0].IPv4.Addr(), 8080).String(), netip.AddrPortFrom(vip, 80).String()}
	var rates [2][]float64
	for round := 0; round < 5; round++ {
		for i, t := range targets {
			n, d := 0, time.Second
			start := time.Now()
			for time.Since(start) < d {
				if _, err := connectOnce(cns, t); err != nil {
					return fmt.Errorf("%s: %w", t, err)
				}
				n++
			}
			rates[i] = append(rates[i], float64(n)/time.Since(start).Seconds())
		}
	}
	for i := range rates {
		slices.Sort(rates[i])
		r.cps[i] = rates[i][2]
	}
	return nil
}

func connectOnce(ns *sandbox.NetNS, addr string) (string, error) {
	var c net.Conn
	if err := ns.Do(func() (err error) { c, err = net.DialTimeout("tcp", addr, time.Second); return err }); err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	b := make([]byte, 8)
	n, err := c.Read(b)
	return string(b[:n]), err
}
