// Command ports measures whether publishing one more port costs more when many are published already
// (Docker's nftables back end pays 20-40 µs per port per existing rule, moby#53466):
//
//   - netmgr's firewall: N ports published one by one, each one map element added in one netlink
//     batch; the mean of the last 100 against the first 100 (target: at most 1.5);
//   - a reference: one nftables DNAT rule per port appended to a chain, as a rule-per-port back end
//     does, the same way;
//   - netmgr's Manager: sandboxes each publishing one port, created when no port is published and
//     when N ports are published already (by one sandbox with a range), with the number of sandboxes
//     the same in both, so that only the number of published ports differs (target: at most 1.5);
//     and, interleaved with the first, sandboxes without a port, whose difference is publishing's share.
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
	add(rowElements, s, err)

	logf("reference: %d nftables rules one by one", c.n)
	s, err = rules(ctx, c.n)
	add(rowRules, s, err)

	if c.manager {
		logf("manager: %d sandboxes with a port (and %d without) with no port published, then %d with a port after %d are published", c.window, c.window, c.window, c.n)
		ms, err := sandboxes(ctx, c)
		add(rowFew, ms.few, err)
		add(rowBase, ms.base, err)
		add(rowRange, ms.rangeOp, err)
		add(rowMany, ms.many, err)
		add(rowDelete, ms.del, err)
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
	// The table and its rules exist once any port is published; building them is not part of
	// publishing one more port.
	if err := fw.EnsurePorts(ctx); err != nil {
		return nil, err
	}
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

const (
	rowElements = "map element per port, one by one (netmgr)"
	rowRules    = "rule per port, one by one (reference)"
	rowFew      = "CreateSandbox + 1 port, 0 published before"
	rowBase     = "CreateSandbox, no port (interleaved baseline)"
	rowRange    = "CreateSandbox publishing a range of N ports"
	rowMany     = "CreateSandbox + 1 port, N published before"
	rowDelete   = "DeleteSandbox + unpublish"
)

type managerSeries struct {
	few, base, rangeOp, many, del series
}

// sandboxes measures Manager creates with one published port each: window of them with nothing else
// published (interleaved with as many without a port, the baseline), then, after deleting those and
// publishing N ports with one sandbox and a range, window more with a port each plus window without
// (so that the number of sandboxes matches the first phase).
func sandboxes(ctx context.Context, c config) (ms managerSeries, err error) {
	dir, err := os.MkdirTemp(c.work, "manager-")
	if err != nil {
		return ms, err
	}
	m, err := netmgr.New(ctx, netmgr.WithStateDir(filepath.Join(dir, "state")), netmgr.WithRunDir(filepath.Join(dir, "run")))
	if err != nil {
		return ms, err
	}
	defer m.Close()
	bg := context.Background()
	if _, err := m.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "pub", Driver: "bridge", Subnets: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")}}); err != nil {
		return ms, err
	}
	defer m.DeleteNetwork(bg, "pub")
	var names []string
	cleanup := func(timed bool) error {
		var first error
		for _, name := range names {
			t0 := time.Now()
			err := m.DeleteSandbox(bg, name)
			if timed && strings.HasPrefix(name, "p") {
				ms.del = append(ms.del, time.Since(t0))
			}
			if err != nil && first == nil {
				first = err
			}
		}
		names = nil
		time.Sleep(2 * time.Second) // let the kernel finish tearing down the namespaces
		return first
	}
	defer func() {
		if cerr := cleanup(false); cerr != nil && err == nil {
			err = cerr
		}
	}()
	create := func(name string, publish []netmgr.PortMapping) (time.Duration, error) {
		spec := netmgr.SandboxSpec{Name: name, Networks: []netmgr.AttachSpec{{Network: "pub"}}, Publish: publish}
		t0 := time.Now()
		if _, err := m.CreateSandbox(ctx, spec); err != nil {
			return 0, err
		}
		names = append(names, name)
		return time.Since(t0), nil
	}
	one := func(port int) []netmgr.PortMapping {
		return []netmgr.PortMapping{{HostPort: uint16(port), ContainerPort: 80, Protocol: "tcp"}}
	}
	phase := func(ported, plain *series) error {
		for i := range c.window {
			if err := ctx.Err(); err != nil {
				return err
			}
			d, err := create(fmt.Sprintf("p%04d", i), one(20000+i))
			if err != nil {
				return err
			}
			*ported = append(*ported, d)
			if d, err = create(fmt.Sprintf("b%04d", i), nil); err != nil {
				return err
			}
			if plain != nil {
				*plain = append(*plain, d)
			}
		}
		return nil
	}
	if err := phase(&ms.few, &ms.base); err != nil {
		return ms, err
	}
	if err := cleanup(true); err != nil {
		return ms, err
	}
	pm, err := netmgr.ParsePublish(fmt.Sprintf("30000-%d:30000-%d", 30000+c.n-1, 30000+c.n-1))
	if err != nil {
		return ms, err
	}
	d, err := create("range", pm)
	if err != nil {
		return ms, err
	}
	ms.rangeOp = series{d}
	var ignore series
	if err := phase(&ms.many, &ignore); err != nil {
		return ms, err
	}
	return ms, nil
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
	fmt.Fprintf(&b, "run took %s inside a throwaway network namespace; N=%d, window %d\n\n", took.Round(time.Second), c.n, c.window)
	get := func(name string) *row {
		for i := range rows {
			if rows[i].name == name {
				return &rows[i]
			}
		}
		return nil
	}
	verdict := func(r float64) string {
		if r <= 1.5 {
			return "PASS"
		}
		return "MISS"
	}
	w := c.window
	fmt.Fprintf(&b, "publish %d ports one by one (ms per op)          %9s %9s %8s  target <= 1.5\n", c.n, fmt.Sprintf("first %d", w), fmt.Sprintf("last %d", w), "ratio")
	for _, name := range []string{rowElements, rowRules} {
		r := get(name)
		if r == nil {
			continue
		}
		if r.err != nil || len(r.s) < 2*w {
			fmt.Fprintf(&b, "  %-46s error: %v\n", name, r.err)
			continue
		}
		first, last := r.s.mean(0, w), r.s.mean(len(r.s)-w, len(r.s))
		v := verdict(last / first)
		if name == rowRules {
			v = "(reference)"
		}
		fmt.Fprintf(&b, "  %-46s %9.3f %9.3f %7.2fx  %s\n", name, first, last, last/first, v)
	}
	if few, many := get(rowFew), get(rowMany); few != nil && many != nil {
		fmt.Fprintf(&b, "\nManager, %d sandboxes on one bridge network (ms per op)    %9s\n", w, "mean")
		for _, name := range []string{rowFew, rowBase, rowMany, rowRange, rowDelete} {
			r := get(name)
			if r.err != nil || len(r.s) == 0 {
				fmt.Fprintf(&b, "  %-52s error: %v\n", strings.Replace(name, "N", fmt.Sprint(c.n), 1), r.err)
				continue
			}
			fmt.Fprintf(&b, "  %-52s %9.3f\n", strings.Replace(name, "N", fmt.Sprint(c.n), 1), r.s.mean(0, len(r.s)))
		}
		if few.err == nil && many.err == nil && len(few.s) > 0 && len(many.s) > 0 {
			f, m := few.s.mean(0, len(few.s)), many.s.mean(0, len(many.s))
			fmt.Fprintf(&b, "  %-52s %8.2fx  %s (target <= 1.5)\n", fmt.Sprintf("%d published before / none before", c.n), m/f, verdict(m/f))
			if base := get(rowBase); base.err == nil && len(base.s) > 0 {
				fmt.Fprintf(&b, "  %-52s %9.3f\n", "publishing's share (with port - without)", f-base.s.mean(0, len(base.s)))
			}
		}
	}
	fmt.Fprintf(&b, "\nmap element per port: firewall.AddPorts of one port, one netlink batch holding one map element of\n")
	fmt.Fprintf(&b, "  table inet netmgr_ports (what publishing changes in the kernel). rule per port: one 'tcp dport P\n")
	fmt.Fprintf(&b, "  dnat ip to A:80' rule appended per batch, as a rule-per-port back end does; the kernel rebuilds\n")
	fmt.Fprintf(&b, "  the chain's rule blob on every commit. Manager: the same number of sandboxes in both phases, so\n")
	fmt.Fprintf(&b, "  only the number of ports already published differs; a sandbox's create also grows with the number\n")
	fmt.Fprintf(&b, "  of sandboxes on the host, ports or not (see bench/run.sh), which this keeps out.\n")
	return b.String()
}
