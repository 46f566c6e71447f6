package main

import (
	"fmt"
	"maps"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"
)

// Targets of the Speed issue.
const (
	targetCreateMs    = 3.0
	targetVsCNI       = 10.0
	targetPodctlVsCNI = 3.0
	targetPodctlRSS   = 30 // MiB
	targetHeapPerSB   = 4096
)

func (r *results) render(c config, took time.Duration) string {
	var b strings.Builder
	fmt.Fprintf(&b, "netmgr benchmark, %s\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(&b, "host: %s\n", hostLine())
	if c.invocation != "" {
		fmt.Fprintf(&b, "command: %s\n", c.invocation)
	}
	fmt.Fprintf(&b, "run took %s, inside a throwaway network namespace; one run per side and N, sequential ops\n\n", took.Round(time.Second))

	b.WriteString(r.table(c))
	b.WriteString("\n")
	b.WriteString(r.distribution())
	b.WriteString("\n")
	b.WriteString(r.breakdown())
	b.WriteString("\n")
	b.WriteString(r.memory(c))
	b.WriteString("\n")
	b.WriteString(r.targets(c))
	b.WriteString("\n")
	b.WriteString(notes(c))
	if len(r.errs) > 0 {
		b.WriteString("\nERRORS\n")
		for _, name := range slices.Sorted(maps.Keys(r.errs)) {
			fmt.Fprintf(&b, "  %s: %v\n", name, r.errs[name])
		}
	}
	return b.String()
}

func (r *results) ns() []int {
	var ns []int
	for _, m := range []map[string]map[int]series{r.create, r.del} {
		for _, bySide := range m {
			for n := range bySide {
				if !slices.Contains(ns, n) {
					ns = append(ns, n)
				}
			}
		}
	}
	slices.Sort(ns)
	return ns
}

func cell(s series) string {
	if s == nil {
		return "-"
	}
	return fmt.Sprintf("%.2f", s.msPerOp())
}

func ratio(num, den series) string {
	if num == nil || den == nil || den.msPerOp() == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1fx", num.msPerOp()/den.msPerOp())
}

func (r *results) table(c config) string {
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "op\tN\tnetmgr(ms/op)\tpodctl(ms/op)\tcni(ms/op)\tnetavark(ms/op)\tcni/netmgr\tcni/podctl\tnetavark/netmgr\tnetavark/podctl\t")
	for _, n := range r.ns() {
		for _, op := range []struct {
			name string
			m    map[string]map[int]series
		}{{"create+attach", r.create}, {"delete", r.del}} {
			nm, pc, cn, nv := op.m["netmgr"][n], op.m["podctl"][n], op.m["cni"][n], op.m["netavark"][n]
			if nm == nil && pc == nil && cn == nil && nv == nil {
				continue
			}
			fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", op.name, n, cell(nm), skippedCell(r, "podctl", pc), cell(cn),
				skippedCell(r, "netavark", nv), ratio(cn, nm), ratio(cn, pc), ratio(nv, nm), ratio(nv, pc))
		}
	}
	w.Flush()
	// tabwriter right-aligns every column; put the op names back on the left.
	lines := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
	width := len("create+attach")
	for i, l := range lines {
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		rest := strings.TrimPrefix(strings.TrimLeft(l, " "), f[0])
		lines[i] = fmt.Sprintf("%-*s%s", width, f[0], rest)
	}
	return strings.Join(lines, "\n") + "\n"
}

func skippedCell(r *results, side string, s series) string {
	if s == nil && r.skipped[side] != "" {
		return "skipped"
	}
	return cell(s)
}

func (r *results) distribution() string {
	var b strings.Builder
	b.WriteString("per-op spread (ms): p50 / p90 / p99 / max\n")
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	for _, side := range []string{"netmgr", "podctl", "cni", "netavark"} {
		for _, n := range r.ns() {
			for _, op := range []struct {
				name string
				s    series
			}{{"create+attach", r.create[side][n]}, {"delete", r.del[side][n]}} {
				if op.s == nil {
					continue
				}
				fmt.Fprintf(w, "  %s\t%s\tN=%d\t%.2f / %.2f / %.2f / %.2f\t\n", side, op.name, n,
					ms(op.s.quantile(0.5)), ms(op.s.quantile(0.9)), ms(op.s.quantile(0.99)), ms(op.s.quantile(1)))
			}
		}
	}
	w.Flush()
	return b.String()
}

func (r *results) breakdown() string {
	var b strings.Builder
	b.WriteString("where the time goes (ms/op; netmgr's 'rest' = netns, netlink and Go code)\n")
	for _, side := range []string{"netmgr", "podctl", "cni", "netavark"} {
		for _, n := range r.ns() {
			for _, op := range []struct {
				key, name string
				s         series
			}{{"create", "create+attach", r.create[side][n]}, {"delete", "delete", r.del[side][n]}} {
				ps := r.parts[partKey(side, op.key, n)]
				if op.s == nil || len(ps) == 0 {
					continue
				}
				fmt.Fprintf(&b, "  %s %s N=%d: %.2f =", side, op.name, n, op.s.msPerOp())
				sum := 0.0
				for i, p := range ps {
					if i > 0 {
						b.WriteString(" +")
					}
					fmt.Fprintf(&b, " %s %.2f", p.name, p.msOp)
					if p.detail != "" {
						fmt.Fprintf(&b, " (%s)", p.detail)
					}
					sum += p.msOp
				}
				if side == "netmgr" || side == "podctl" {
					fmt.Fprintf(&b, " + rest %.2f", op.s.msPerOp()-sum)
				}
				b.WriteString("\n")
			}
		}
	}
	return b.String()
}

func mib(kib int64) float64 { return float64(kib) / 1024 }

func maxMedian(v []int64) (int64, int64) {
	c := slices.Clone(v)
	slices.Sort(c)
	return c[len(c)-1], c[len(c)/2]
}

func (r *results) memory(c config) string {
	var b strings.Builder
	b.WriteString("memory\n")
	if why := r.skipped["podctl"]; why != "" {
		fmt.Fprintf(&b, "  podctl peak RSS: skipped (%s)\n", why)
	}
	for _, m := range []struct {
		what string
		v    []int64
	}{{"sandbox create", r.podCreateRSS}, {"sandbox rm", r.podRmRSS}} {
		if len(m.v) == 0 {
			continue
		}
		mx, med := maxMedian(m.v)
		fmt.Fprintf(&b, "  podctl peak RSS, `%s` (%d runs): max %.1f MiB, median %.1f MiB\n", m.what, len(m.v), mib(mx), mib(med))
	}
	if r.heapN > 0 {
		fmt.Fprintf(&b, "  Manager heap per sandbox (N=%d, HeapAlloc after GC, after minus before / N): %.0f bytes\n", r.heapN, r.heapPerSandbox)
	}
	if r.portLimitResult != "" {
		verdict := "MISS"
		if r.portLimitOK != nil && *r.portLimitOK {
			verdict = "PASS"
		}
		fmt.Fprintf(&b, "bridge port limit (1024th attach must fail with ErrFull): %s — %s\n", verdict, r.portLimitResult)
	}
	return b.String()
}

func (r *results) targets(c config) string {
	var b strings.Builder
	b.WriteString("targets (informational: timing never fails the run)\n")
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	line := func(what, measured string, ok *bool) {
		verdict := "n/a"
		if ok != nil {
			verdict = map[bool]string{true: "PASS", false: "MISS"}[*ok]
		}
		fmt.Fprintf(w, "  %s\t%s\t%s\t\n", what, measured, verdict)
	}
	n := c.n
	nmC, nmD := r.create["netmgr"][n], r.del["netmgr"][n]
	pcC, pcD := r.create["podctl"][n], r.del["podctl"][n]
	cnC, cnD := r.create["cni"][n], r.del["cni"][n]
	if nmC != nil {
		ok := nmC.msPerOp() <= targetCreateMs
		line(fmt.Sprintf("netmgr create+attach <= %.0f ms/op (N=%d)", targetCreateMs, n), fmt.Sprintf("%.2f ms/op", nmC.msPerOp()), &ok)
	} else {
		line(fmt.Sprintf("netmgr create+attach <= %.0f ms/op (N=%d)", targetCreateMs, n), "not measured", nil)
	}
	speedup := func(what string, fast, slow series, want float64) {
		if fast == nil || slow == nil {
			line(what, "not measured", nil)
			return
		}
		x := slow.msPerOp() / fast.msPerOp()
		ok := x >= want
		line(what, fmt.Sprintf("%.1fx", x), &ok)
	}
	speedup(fmt.Sprintf("netmgr create >= %.0fx faster than CNI ADD (N=%d)", targetVsCNI, n), nmC, cnC, targetVsCNI)
	speedup(fmt.Sprintf("netmgr delete >= %.0fx faster than CNI DEL (N=%d)", targetVsCNI, n), nmD, cnD, targetVsCNI)
	speedup(fmt.Sprintf("podctl create >= %.0fx faster than CNI ADD (N=%d)", targetPodctlVsCNI, n), pcC, cnC, targetPodctlVsCNI)
	speedup(fmt.Sprintf("podctl rm >= %.0fx faster than CNI DEL (N=%d)", targetPodctlVsCNI, n), pcD, cnD, targetPodctlVsCNI)
	all := append(slices.Clone(r.podCreateRSS), r.podRmRSS...)
	if len(all) > 0 {
		mx, _ := maxMedian(all)
		ok := mib(mx) < targetPodctlRSS
		line(fmt.Sprintf("podctl peak RSS < %d MiB (max over create and rm)", targetPodctlRSS), fmt.Sprintf("%.1f MiB", mib(mx)), &ok)
	} else {
		line(fmt.Sprintf("podctl peak RSS < %d MiB", targetPodctlRSS), "not measured", nil)
	}
	if r.heapN > 0 {
		ok := r.heapPerSandbox < targetHeapPerSB
		line(fmt.Sprintf("Manager heap < %d KiB/sandbox (N=%d)", targetHeapPerSB/1024, r.heapN), fmt.Sprintf("%.0f B/sandbox", r.heapPerSandbox), &ok)
	} else {
		line(fmt.Sprintf("Manager heap < %d KiB/sandbox", targetHeapPerSB/1024), "not measured", nil)
	}
	w.Flush()
	return b.String()
}

func notes(c config) string {
	return fmt.Sprintf(`what one op is (the same kernel work on every side):
  create+attach = new network namespace pinned by bind mount, lo up, veth pair with one end in the
                  namespace, host end on a bridge (hairpin on), one IPv4 from a /16, default route
                  netmgr: Manager.CreateSandbox with one bridge network (in process, bbolt store with fsync)
                  podctl: one 'podctl sandbox create NAME --network NET' process, fork to exit
                  cni:    sandbox.Create (pin + lo up) then go-cni Setup -> bridge plugin ADD (+ host-local,
                          ipMasq via iptables), one plugin process per op, as containerd calls it
  delete        = netmgr: Manager.DeleteSandbox; podctl: one 'podctl sandbox rm' process;
                  cni: go-cni Remove -> bridge plugin DEL (deletes the veth, iptables), then netns unpin
                  netavark: one 'netavark teardown' process, then netns unpin
  netavark side:  as rootful Podman 4 runs it: sandbox.Create (pin + lo up), the network read from its JSON
                  file, the address picked in process (Podman does its own IPAM), then one process
                  'netavark --config RUNDIR --rootless=false --aardvark-binary=... setup NSPATH' with the
                  network options JSON on stdin (bridge driver, no DNS, NETAVARK_FW=iptables: its NAT and
                  forward rules go to the bench namespace)
  CNI plugins: %s in %s; IPAM and result cache under the scratch dir
  netavark: %s (%s)
  scratch dir (netmgr/podctl state and run dirs, every namespace pin, CNI files): %s
  ratio = cni (netavark) ms/op / other ms/op at the same N (higher = faster than CNI or netavark); '-' where a side has no run at that N
`, cniVersion(), c.cniDir, netavarkVersion(c.netavark), c.netavark, fsLine(c.work))
}

func fsLine(dir string) string {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return dir
	}
	name := map[int64]string{0xEF53: "ext4", 0x01021994: "tmpfs", 0x58465342: "xfs", 0x9123683E: "btrfs", 0x794c7630: "overlayfs"}[int64(st.Type)]
	if name == "" {
		name = fmt.Sprintf("fs magic %#x", st.Type)
	}
	return fmt.Sprintf("%s on %s (set TMPDIR to move it)", dir, name)
}

func cniVersion() string {
	out, err := exec.Command("dpkg-query", "-W", "-f", "${Version}", "containernetworking-plugins").Output()
	if err != nil || len(out) == 0 {
		return "containernetworking-plugins (version unknown)"
	}
	return "containernetworking-plugins " + string(out)
}

func hostLine() string {
	var u unix.Utsname
	kernel := "?"
	if unix.Uname(&u) == nil {
		kernel = unix.ByteSliceToString(u.Release[:])
	}
	cpu := "?"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	return fmt.Sprintf("Linux %s, %d CPUs (%s), %s", kernel, runtime.NumCPU(), cpu, runtime.Version())
}
