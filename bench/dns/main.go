// Command dns measures netmgr's embedded DNS server against dnsmasq serving the same names from a
// hosts file, side by side in one run: queries per second and latency (p50, p99) for a sandbox name
// and a service name, from one client and from 8 in parallel, each client a UDP socket in a sandbox
// on the network asking the gateway (netmgr on port 53, dnsmasq on port 5353 of the same address).
// Rounds alternate between the two servers.
//
// It must run as root inside a throwaway network namespace (bench/dns/run.sh creates it); everything
// it creates lives there or under -work, and every request loop is bounded in time. The exit status
// reports errors only, never timings.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/dns"
	"github.com/netmgr/netmgr/sandbox"
)

type services []dns.Service

func (s services) Services(context.Context) ([]dns.Service, error) { return s, nil }

func main() {
	work := flag.String("work", "", "scratch directory (required)")
	out := flag.String("out", "", "also write the report here")
	dur := flag.Duration("duration", 2*time.Second, "length of one measurement")
	rounds := flag.Int("rounds", 2, "rounds per case (alternating servers)")
	dnsmasq := flag.String("dnsmasq", "/usr/sbin/dnsmasq", "dnsmasq binary (empty: netmgr only)")
	invocation := flag.String("invocation", "", "how the run was started, printed in the report")
	serve := flag.Bool("serve", false, "internal: run netmgr's DNS server on -work's state until SIGTERM")
	flag.Parse()
	if *work == "" {
		fmt.Fprintln(os.Stderr, "dns bench: -work is required")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *serve {
		if err := serveDNS(ctx, *work); err != nil {
			fmt.Fprintln(os.Stderr, "dns bench server:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(ctx, *work, *out, *dur, *rounds, *dnsmasq, *invocation); err != nil {
		fmt.Fprintln(os.Stderr, "dns bench:", err)
		os.Exit(1)
	}
}

type result struct {
	qps      float64
	p50, p99 time.Duration
}

func run(ctx context.Context, work, out string, dur time.Duration, rounds int, dnsmasqBin, invocation string) (err error) {
	m, err := netmgr.New(ctx, netmgr.WithStateDir(filepath.Join(work, "state")), netmgr.WithRunDir(filepath.Join(work, "run")))
	if err != nil {
		return err
	}
	defer m.Close()
	bg := context.WithoutCancel(ctx)
	n, err := m.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "dnsbench", Driver: "bridge", Subnets: []netip.Prefix{netip.MustParsePrefix("10.89.250.0/24")}})
	if err != nil {
		return err
	}
	defer m.DeleteNetwork(bg, "dnsbench")
	var client *netmgr.Sandbox
	for _, name := range []string{"web", "client"} {
		s, err := m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: name, Networks: []netmgr.AttachSpec{{Network: "dnsbench"}}})
		if err != nil {
			return err
		}
		defer m.DeleteSandbox(bg, name)
		if name == "client" {
			client = s
		}
	}
	web, _ := m.Sandbox(ctx, "web")
	webIP := web.Attachments[0].IPv4.Addr()
	svcIP := netip.MustParseAddr("10.96.0.10")
	gw := n.Gateways[0]

	// The server runs in a process of its own, as the agent does and as dnsmasq does: the clients
	// here take no CPU from it but what the machine shares.
	srvCmd := exec.Command("/proc/self/exe", "-serve", "-work", work)
	srvCmd.Stdout, srvCmd.Stderr = os.Stderr, os.Stderr
	if err := srvCmd.Start(); err != nil {
		return err
	}
	defer func() {
		_ = srvCmd.Process.Signal(syscall.SIGTERM)
		err = errors.Join(err, srvCmd.Wait())
	}()
	_ = svcIP

	cns, err := sandbox.Open(client.NetNS)
	if err != nil {
		return err
	}
	defer cns.Close()
	netmgrAddr := netip.AddrPortFrom(gw, 53)
	servers := []struct {
		name string
		addr netip.AddrPort
	}{{"netmgr", netmgrAddr}}
	if dnsmasqBin != "" {
		stopMasq, err := startDnsmasq(work, dnsmasqBin, gw, webIP, svcIP)
		if err != nil {
			return err
		}
		defer stopMasq()
		servers = append(servers, struct {
			name string
			addr netip.AddrPort
		}{"dnsmasq", netip.AddrPortFrom(gw, 5353)})
	}
	names := []struct {
		label, q string
		want     netip.Addr
	}{{"sandbox name (web)", "web.", webIP}, {"service name (api.svc.cluster.local)", "api.svc.cluster.local.", svcIP}}
	// Wait until every server answers every name.
	for _, s := range servers {
		for _, nm := range names {
			deadline := time.Now().Add(10 * time.Second)
			for {
				if err := check(cns, s.addr, nm.q, nm.want); err == nil {
					break
				} else if time.Now().After(deadline) {
					return fmt.Errorf("%s does not answer %s: %v", s.name, nm.q, err)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
	}
	type key struct {
		name, server string
		clients      int
	}
	res := map[key][]result{}
	for _, nm := range names {
		for _, clients := range []int{1, 8} {
			for r := 0; r < rounds; r++ {
				order := slices.Clone(servers)
				if r%2 == 1 {
					slices.Reverse(order)
				}
				for _, s := range order {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					rs, err := measure(ctx, cns, s.addr, nm.q, clients, dur)
					if err != nil {
						return fmt.Errorf("%s %s x%d: %w", s.name, nm.q, clients, err)
					}
					res[key{nm.label, s.name, clients}] = append(res[key{nm.label, s.name, clients}], rs)
					fmt.Fprintf(os.Stderr, "dns bench: %-8s %-24s x%d: %.0f q/s p50 %v p99 %v\n", s.name, nm.q, clients, rs.qps, rs.p50, rs.p99)
				}
			}
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# netmgr DNS server vs dnsmasq %s (%s)\n", dnsmasqVersion(dnsmasqBin), time.Now().UTC().Format("2006-01-02 15:04"))
	if invocation != "" {
		fmt.Fprintf(&b, "# %s\n", invocation)
	}
	fmt.Fprintf(&b, "# UDP queries from a sandbox to its gateway, %v per measurement, %d rounds alternating; the best round's q/s, its p50 and p99\n\n", dur, rounds)
	b.WriteString("| name | clients | netmgr q/s | p50 | p99 | dnsmasq q/s | p50 | p99 | netmgr / dnsmasq q/s |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, nm := range names {
		for _, clients := range []int{1, 8} {
			a := best(res[key{nm.label, "netmgr", clients}])
			d := best(res[key{nm.label, "dnsmasq", clients}])
			ratio := "-"
			if d.qps > 0 {
				ratio = fmt.Sprintf("%.2fx", a.qps/d.qps)
			}
			fmt.Fprintf(&b, "| %s | %d | %.0f | %v | %v | %.0f | %v | %v | %s |\n", nm.label, clients, a.qps, round(a.p50), round(a.p99), d.qps, round(d.p50), round(d.p99), ratio)
		}
	}
	fmt.Print(b.String())
	if out != "" {
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			return err
		}
		return os.WriteFile(out, []byte(b.String()), 0o644)
	}
	return nil
}

func round(d time.Duration) time.Duration { return d.Round(time.Microsecond) }

func best(rs []result) result {
	var b result
	for _, r := range rs {
		if r.qps > b.qps {
			b = r
		}
	}
	return b
}

func dnsmasqVersion(bin string) string {
	if bin == "" {
		return "(not run)"
	}
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return ""
	}
	f := strings.Fields(strings.SplitN(string(out), "\n", 2)[0])
	if len(f) >= 3 {
		return f[2]
	}
	return ""
}

// serveDNS runs netmgr's DNS server on the state under work, with the service api.
func serveDNS(ctx context.Context, work string) error {
	m, err := netmgr.New(ctx, netmgr.WithStateDir(filepath.Join(work, "state")), netmgr.WithRunDir(filepath.Join(work, "run")))
	if err != nil {
		return err
	}
	defer m.Close()
	srv, err := dns.New(dns.Config{Manager: m, Services: services{{Name: "api", IPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")}}},
		ResolvConf: filepath.Join(work, "no-resolv.conf")})
	if err != nil {
		return err
	}
	return srv.Run(ctx)
}

// startDnsmasq runs dnsmasq on gw:5353 with the same names in a hosts file, no upstreams, and no
// configuration file but this one.
func startDnsmasq(work, bin string, gw, webIP, svcIP netip.Addr) (func(), error) {
	hosts := filepath.Join(work, "dnsmasq.hosts")
	if err := os.WriteFile(hosts, fmt.Appendf(nil, "%s web\n%s api.svc.cluster.local\n", webIP, svcIP), 0o644); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--addn-hosts="+hosts,
		"--listen-address="+gw.String(), "--bind-interfaces", "--port=5353", "--local-ttl=5", "--cache-size=1000",
		"--pid-file="+filepath.Join(work, "dnsmasq.pid"), "--user=root", "--group=root", "--no-dhcp-interface=", "--log-facility=/dev/null")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}, nil
}

// dial makes a UDP socket in the client's namespace connected to the server.
func dial(ns *sandbox.NetNS, addr netip.AddrPort) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() error {
		var err error
		c, err = net.Dial("udp", addr.String())
		return err
	})
	return c, err
}

func check(ns *sandbox.NetNS, addr netip.AddrPort, name string, want netip.Addr) error {
	c, err := dial(ns, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	q := new(mdns.Msg)
	q.SetQuestion(name, mdns.TypeA)
	co := &mdns.Conn{Conn: c}
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if err := co.WriteMsg(q); err != nil {
		return err
	}
	r, err := co.ReadMsg()
	if err != nil {
		return err
	}
	if len(r.Answer) != 1 {
		return fmt.Errorf("answer %v", r)
	}
	a, ok := r.Answer[0].(*mdns.A)
	if !ok || a.A.String() != want.String() {
		return fmt.Errorf("answer %v, want %s", r.Answer[0], want)
	}
	return nil
}

// measure runs clients loops of query-and-wait for dur and returns the rate and latency.
func measure(ctx context.Context, ns *sandbox.NetNS, addr netip.AddrPort, name string, clients int, dur time.Duration) (result, error) {
	q := new(mdns.Msg)
	q.SetQuestion(name, mdns.TypeA)
	var mu sync.Mutex
	var lats []time.Duration
	var firstErr error
	var wg sync.WaitGroup
	start := time.Now()
	end := start.Add(dur)
	for i := 0; i < clients; i++ {
		c, err := dial(ns, addr)
		if err != nil {
			return result{}, err
		}
		wg.Add(1)
		go func(id uint16) {
			defer wg.Done()
			defer c.Close()
			mine := make([]time.Duration, 0, 1<<16)
			buf := make([]byte, 1500)
			qq := q.Copy()
			for n := uint16(0); ctx.Err() == nil; n++ {
				t0 := time.Now()
				if t0.After(end) {
					break
				}
				qq.Id = id<<12 | n&0xfff
				pkt, _ := qq.Pack()
				_ = c.SetDeadline(t0.Add(time.Second))
				if _, err := c.Write(pkt); err != nil {
					mu.Lock()
					firstErr = cmp(firstErr, err)
					mu.Unlock()
					return
				}
				for {
					k, err := c.Read(buf)
					if err != nil {
						if !errors.Is(err, os.ErrDeadlineExceeded) {
							mu.Lock()
							firstErr = cmp(firstErr, err)
							mu.Unlock()
							return
						}
						break // a lost packet: counted as a 1 s latency
					}
					if k >= 2 && uint16(buf[0])<<8|uint16(buf[1]) == qq.Id {
						break
					}
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lats = append(lats, mine...)
			mu.Unlock()
		}(uint16(i))
	}
	wg.Wait()
	elapsed := time.Since(start)
	if firstErr != nil {
		return result{}, firstErr
	}
	if len(lats) == 0 {
		return result{}, io.ErrNoProgress
	}
	slices.Sort(lats)
	return result{qps: float64(len(lats)) / elapsed.Seconds(), p50: lats[len(lats)/2], p99: lats[len(lats)*99/100]}, nil
}

func cmp(a, b error) error {
	if a != nil {
		return a
	}
	return b
}
