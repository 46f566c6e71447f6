// Command ports measures whether publishing one more port costs more when many are published already
// (Docker's nftables back end pays 20-40 µs per port per existing rule, moby#53466). It publishes N
// ports one by one and compares the mean time of the last 100 with that of the first 100, for:
//
//   - netmgr's firewall: one element added to a map of table inet netmgr_ports (one netlink batch);
//   - a reference: one nftables DNAT rule per port appended to a chain, as a rule-per-port back end does;
//   - netmgr's Manager: CreateSandbox with one published port, and the same without a port as the
//     baseline, so that what grows with the number of sandboxes is told apart from publishing.
//
// It must run as root inside a throwaway network namespace (bench/ports/run.sh creates it and passes
// it as -netns); everything it creates lives there or under -work. The exit status reports errors only.
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/firewall"
)

type config struct {
	n, window  int
	netns      string
	work       string
	out        string
	invocation string
	manager    bool
}

func main() {
	var c config
	flag.IntVar(&c.n, "n", 1000, "ports published one by one per series")
	flag.IntVar(&c.window, "window", 100, "operations in the first and last window compared")
	flag.StringVar(&c.netns, "netns", "", "the pinned bench namespace this process runs in (required)")
	flag.StringVar(&c.work, "work", "", "scratch directory for the Manager's state and namespace pins (required)")
	flag.StringVar(&c.out, "out", "", "also write the report to this file")
	flag.StringVar(&c.invocation, "invocation", "", "how the run was started, printed in the report")
	flag.BoolVar(&c.manager, "manager", true, "also run the Manager series (N sandboxes, twice)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, c); err != nil {
		fmt.Fprintln(os.Stderr, "bench/ports:", err)
		os.Exit(1)
	}
}

func logf(format string, a ...any) { fmt.Fprintf(os.Stderr, "bench/ports: "+format+"\n", a...) }

// checkIsolated refuses to run anywhere but in the bench namespace: this creates bridges, namespaces
// and nftables tables in the namespace it runs in.
func checkIsolated(path string) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root; run bench/ports/run.sh as root")
	}
	if path == "" {
		return errors.New("-netns is required (see bench/ports/run.sh)")
	}
	var self, want, init unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &self); err != nil {
		return err
	}
	if err := unix.Stat(path, &want); err != nil {
		return err
	}
	if self.Ino != want.Ino || self.Dev != want.Dev {
		return fmt.Errorf("refusing to run: not in the bench namespace %s", path)
	}
	if unix.Stat("/proc/1/ns/net", &init) == nil && init.Ino == self.Ino && init.Dev == self.Dev {
		return errors.New("refusing to run in the root network namespace")
	}
	return nil
}

type series []time.Duration

func (s series) mean(from, to int) float64 {
	var t time.Duration
	for _, d := range s[from:to] {
		t += d
	}
	return float64(t) / float64(time.Millisecond) / float64(to-from)
}

type row struct {
	name string
	s    series
	err  error
}

func run(ctx context.Context, c config) error {
	if err := checkIsolated(c.netns); err != nil {
		return err
	}
	if c.work == "" {
		return errors.New("-work is required")
	}
	if c.window*2 > c.n {
		return fmt.Errorf("-n %d must be at least twice -window %d", c.n, c.window)
	}
	start := time.Now()
	var rows []row
	add := func(name string, s series, err error) {
		if err != nil {
			logf("%s: %v", name, err)
		}
		rows = append(rows, row{name, s, err})
	}

	logf("firewall: %d map elements one by one", c.n)
	s, err := elements(ctx, c.n)
	add("map element per port (netmgr firewall)", s, err)

	logf("reference: %d nftables rules one by one", c.n)
	s, err = rules(ctx, c.n)
	add("rule per port (reference back end)", s, err)

	var del series
	if c.manager {
		logf("manager: %d sandboxes with a published port, then %d without", c.n, c.n)
		var base series
		s, del, base, err = sandboxes(ctx, c)
		add("Manager.CreateSandbox + 1 published port", s, err)
		add("Manager.CreateSandbox, no port (baseline)", base, err)
		add("Manager.DeleteSandbox + unpublish", del, err)
	}
	report := format(c, rows, time.Since(start))
	fmt.Print(report)
	if c.out != "" {
		if err := os.MkdirAll(filepath.Dir(c.out), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(c.out, []byte(report), 0o644); err != nil {
			return err
		}
	}
	for _, r := range rows {
		if r.err != nil {
			return errors.New("some series failed; see above")
		}
	}
	return nil
}

func target(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 97, byte(i >> 8), byte(i)}), 80)
}

// elements publishes n ports through netmgr's firewall, one AddPorts (one batch) each, then removes
// the table.
func elements(ctx context.Context, n int) (series, error) {
	fw, err := firewall.New(-1, nil)
	if err != nil {
		return nil, err
	}
	defer fw.Close()
	defer fw.RemovePortsTable(context.Background())
	s := make(series, 0, n)
	for i := range n {
		p := firewall.Port{Protocol: "tcp", HostPort: uint16(10000 + i), Target: target(i), Owner: fmt.Sprintf("s%04d", i)}
		t0 := time.Now()
		if err := fw.AddPorts(ctx, []firewall.Port{p}); err != nil {
			return nil, err
		}
		s = append(s, time.Since(t0))
	}
	if got, err := fw.Ports(ctx); err != nil || len(got) != n {
		return nil, fmt.Errorf("%d ports published, want %d (%v)", len(got), n, err)
	}
	return s, nil
}

// rules appends one DNAT rule per port to a NAT chain, one transaction each, the way a back end with a
// rule per published port does: tcp dport P dnat ip to A:80.
func rules(ctx context.Context, n int) (series, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, err
	}
	t := &nftables.Table{Name: "bench_rules", Family: nftables.TableFamilyINet}
	defer func() {
		c.DelTable(t)
		_ = c.Flush()
	}()
	c.AddTable(t)
	accept := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{Name: "prerouting", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest, Policy: &accept})
	if err := c.Flush(); err != nil {
		return nil, err
	}
	s := make(series, 0, n)
	for i := range n {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		port := make([]byte, 2)
		binary.BigEndian.PutUint16(port, uint16(10000+i))
		tg := target(i)
		addr := tg.Addr().As4()
		dport := make([]byte, 2)
		binary.BigEndian.PutUint16(dport, tg.Port())
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: port},
			&expr.Immediate{Register: 1, Data: addr[:]},
			&expr.Immediate{Register: 2, Data: dport},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2},
		}})
		t0 := time.Now()
		if err := c.Flush(); err != nil {
			return nil, err
		}
		s = append(s, time.Since(t0))
	}
	return s, nil
}

// sandboxes creates N sandboxes with one published port each on one bridge network and, interleaved
// with them, N without a port on a second network (the baseline, which sees the same amount of state
// at each step), then deletes the first N.
func sandboxes(ctx context.Context, c config) (create, del, base series, err error) {
	dir, err := os.MkdirTemp(c.work, "manager-")
	if err != nil {
		return nil, nil, nil, err
	}
	m, err := netmgr.New(ctx, netmgr.WithStateDir(filepath.Join(dir, "state")), netmgr.WithRunDir(filepath.Join(dir, "run")))
	if err != nil {
		return nil, nil, nil, err
	}
	defer m.Close()
	bg := context.Background()
	if _, err := m.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "pub", Driver: "bridge", Subnets: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")}}); err != nil {
		return nil, nil, nil, err
	}
	defer m.DeleteNetwork(bg, "pub")
	if _, err := m.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "base", Driver: "bridge", Subnets: []netip.Prefix{netip.MustParsePrefix("10.95.0.0/16")}}); err != nil {
		return nil, nil, nil, err
	}
	defer m.DeleteNetwork(bg, "base")
	var ported, plain []string
	defer func() {
		for _, name := range plain {
			if derr := m.DeleteSandbox(bg, name); derr != nil && err == nil {
				err = derr
			}
		}
		for _, name := range ported {
			t0 := time.Now()
			derr := m.DeleteSandbox(bg, name)
			del = append(del, time.Since(t0))
			if derr != nil && err == nil {
				err = derr
			}
		}
	}()
	for i := range c.n {
		if err := ctx.Err(); err != nil {
			return nil, nil, nil, err
		}
		spec := netmgr.SandboxSpec{Name: fmt.Sprintf("p%04d", i), Networks: []netmgr.AttachSpec{{Network: "pub"}},
			Publish: []netmgr.PortMapping{{HostPort: uint16(20000 + i), ContainerPort: 80, Protocol: "tcp"}}}
		t0 := time.Now()
		if _, err := m.CreateSandbox(ctx, spec); err != nil {
			return nil, nil, nil, err
		}
		create = append(create, time.Since(t0))
		ported = append(ported, spec.Name)


		spec = netmgr.SandboxSpec{Name: fmt.Sprintf("b%04d", i), Networks: []netmgr.AttachSpec{{Network: "base"}}}
		t0 = time.Now()
		if _, err := m.CreateSandbox(ctx, spec); err != nil {
			return nil, nil, nil, err
		}
		base = append(base, time.Since(t0))
		plain = append(plain, spec.Name)
	}
	return create, del, base, nil
}

func format(c config, rows []row, took time.Duration) string {
	var b strings.Builder
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	fmt.Fprintf(&b, "netmgr bench/ports, %s\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(&b, "host: %s %s, %d CPUs, %s\n", unix.ByteSliceToString(uts.Sysname[:]), unix.ByteSliceToString(uts.Release[:]), runtime.NumCPU(), runtime.Version())
	if c.invocation != "" {
		fmt.Fprintf(&b, "command: %s\n", c.invocation)
	}
	fmt.Fprintf(&b, "run took %s inside a throwaway network namespace; N=%d ports published one by one per series\n\n", took.Round(time.Second), c.n)
	w := c.window
	fmt.Fprintf(&b, "%-44s %12s %12s %11s  %s\n", "series (ms per op)", fmt.Sprintf("first %d", w), fmt.Sprintf("last %d", w), "last/first", "target last/first <= 1.5")
	var mgr, baseRow *row
	for i := range rows {
		r := &rows[i]
		if r.err != nil || len(r.s) < 2*w {
			fmt.Fprintf(&b, "%-44s %12s %12s %11s  error: %v\n", r.name, "-", "-", "-", r.err)
			continue
		}
		first, last := r.s.mean(0, w), r.s.mean(len(r.s)-w, len(r.s))
		verdict := ""
		switch {
		case strings.HasPrefix(r.name, "map element"):
			verdict = "MISS"
			if last/first <= 1.5 {
				verdict = "PASS"
			}
		case strings.HasPrefix(r.name, "Manager.CreateSandbox + "):
			verdict = "(whole create: see the baseline)"
		case strings.HasPrefix(r.name, "rule per port"):
			verdict = "(reference, no target)"
		}
		fmt.Fprintf(&b, "%-44s %12.3f %12.3f %10.2fx  %s\n", r.name, first, last, last/first, verdict)
		switch {
		case strings.HasPrefix(r.name, "Manager.CreateSandbox + "):
			mgr = r
		case strings.HasPrefix(r.name, "Manager.CreateSandbox, no port"):
			baseRow = r
		}
	}
	if mgr != nil && baseRow != nil && mgr.err == nil {
		f := mgr.s.mean(0, w) - baseRow.s.mean(0, w)
		l := mgr.s.mean(len(mgr.s)-w, len(mgr.s)) - baseRow.s.mean(len(baseRow.s)-w, len(baseRow.s))
		fmt.Fprintf(&b, "%-44s %12.3f %12.3f %11s  (difference of the two Manager series: noisy)\n", "  publishing's share of CreateSandbox", f, l, ratioOrDash(l, f))
	}
	fmt.Fprintf(&b, "\nmap element per port: firewall.AddPorts of one port, one netlink batch holding one map element;\n")
	fmt.Fprintf(&b, "  this is what publishing changes in the kernel, and the series the target is for.\n")
	fmt.Fprintf(&b, "rule per port: one 'tcp dport P dnat ip to A:80' rule appended per batch, as a back end with a\n")
	fmt.Fprintf(&b, "  rule per published port does; the kernel rebuilds the chain's rule blob on every commit.\n")
	fmt.Fprintf(&b, "Manager series: CreateSandbox with one published port on network pub, interleaved with a\n")
	fmt.Fprintf(&b, "  CreateSandbox without a port on network base (the baseline: same state at every step). Both grow\n")
	fmt.Fprintf(&b, "  with the number of sandboxes (veths, namespaces, records) on the host, ports or not; the\n")
	fmt.Fprintf(&b, "  difference of the two is publishing's share (store keys, sysctl check, one nftables batch).\n")
	return b.String()
}

func ratioOrDash(a, b float64) string {
	if b <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", a/b)
}
