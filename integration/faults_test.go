package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// errorLines counts the lines of podctl's stderr that are not warnings.
func errorLines(stderr string) int {
	n := 0
	for _, l := range strings.Split(strings.TrimSpace(stderr), "\n") {
		if l != "" && !strings.HasPrefix(l, "level=WARN ") {
			n++
		}
	}
	return n
}

// TestFaultInjection is the SIGKILL fault injection of the QA report (FAULTS.md, "What held up"), as a
// test: in a fresh test host, each round runs parallel podctl commands (sandbox create with
// --publish, a dual-stack second network and --pause on some; sandbox rm, attach, detach; network
// create and rm; gc), SIGKILLs a random subset of them 1-50 ms after they start, runs `podctl gc`,
// and then checks that store and kernel agree (faults_check_test.go lists the checks). The commands and kills are random,
// from a seed it logs; the checks are exact. At the end it removes everything, checks that nothing is
// left, and fills the first network's address pool to the last address.
//
// It runs for about a minute. For soak runs:
//
//	NETMGR_FAULT_DURATION=10m     how long to keep starting rounds (default 60s)
//	NETMGR_FAULT_ROUNDS=N         exactly N rounds (no time limit unless NETMGR_FAULT_DURATION is set too)
//	NETMGR_FAULT_SEED=S           replay the commands and kill choices of the run that logged seed S
//	NETMGR_FAULT_PAR=N            parallel commands per round (default 16)
//	NETMGR_FAULT_OPS=K,K...       only these kinds of command (create rm attach detach net-create net-rm gc)
func TestFaultInjection(t *testing.T) {
	if testing.Short() {
		t.Skip("fault injection runs for a minute; skipped with -short")
	}
	cfg := faultConfigFromEnv(t)
	h := newHost(t)
	f := newFaultRun(t, h, cfg)
	t.Logf("fault injection: seed %d (replay with NETMGR_FAULT_SEED=%d), %d commands per round, %s",
		cfg.seed, cfg.seed, cfg.par, cfg.limit())

	// k1 is a /26 so that the final pool check (61 addresses) is quick; k6 is dual-stack.
	h.must(t, "network", "create", "k1", "--driver", "bridge", "--subnet", "10.60.0.0/26")
	h.must(t, "network", "create", "k6", "--driver", "bridge", "--subnet", "10.61.0.0/24", "--subnet", "fd00:61::/64")

	start := time.Now()
	deadline := f.roundDeadline(start)
	for r := 1; cfg.rounds == 0 || r <= cfg.rounds; r++ {
		if !deadline.IsZero() && time.Now().After(deadline) {
			break
		}
		f.round(r)
	}
	f.final()
	f.summary(time.Since(start))
}

type faultConfig struct {
	seed     uint64
	rounds   int           // 0: as many as fit in duration
	duration time.Duration // 0: no limit (only with rounds)
	par      int
	ops      map[string]bool // only these kinds of command; empty: all
}

func (c faultConfig) limit() string {
	switch {
	case c.rounds > 0 && c.duration > 0:
		return fmt.Sprintf("%d rounds or %s", c.rounds, c.duration)
	case c.rounds > 0:
		return fmt.Sprintf("%d rounds", c.rounds)
	default:
		return fmt.Sprintf("rounds for %s", c.duration)
	}
}

func faultConfigFromEnv(t *testing.T) faultConfig {
	t.Helper()
	c := faultConfig{seed: uint64(time.Now().UnixNano()), duration: 60 * time.Second, par: 16}
	num := func(name string, min int) (int, bool) {
		v := os.Getenv(name)
		if v == "" {
			return 0, false
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < min {
			t.Fatalf("%s=%q: want an integer >= %d", name, v, min)
		}
		return n, true
	}
	if v := os.Getenv("NETMGR_FAULT_SEED"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("NETMGR_FAULT_SEED=%q: %v", v, err)
		}
		c.seed = s
	}
	if n, ok := num("NETMGR_FAULT_ROUNDS", 1); ok {
		c.rounds, c.duration = n, 0
	}
	if v := os.Getenv("NETMGR_FAULT_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			t.Fatalf("NETMGR_FAULT_DURATION=%q: want a positive duration such as 90s or 10m", v)
		}
		c.duration = d
	}
	if n, ok := num("NETMGR_FAULT_PAR", 1); ok {
		c.par = n
	}
	if v := os.Getenv("NETMGR_FAULT_OPS"); v != "" {
		c.ops = map[string]bool{}
		for _, k := range strings.Split(v, ",") {
			if !faultKinds[k] {
				t.Fatalf("NETMGR_FAULT_OPS=%q: unknown kind %q (known: create rm attach detach net-create net-rm gc)", v, k)
			}
			c.ops[k] = true
		}
	}
	return c
}

// The objects rounds work on: a fixed set of names, so that what a round does depends only on the seed
// (not on which earlier commands a kill stopped). k1 and k6 stay; w1..w4 are created and removed.
const (
	faultSandboxes = 20
	faultChurnNets = 4
)

func faultSandboxName(i int) string { return "s" + strconv.Itoa(i) }
func faultChurnName(j int) string   { return "w" + strconv.Itoa(j) }

// faultRun is one run of the test: the host, the random source and what the rounds found.
type faultRun struct {
	t    *testing.T
	h    *host
	cfg  faultConfig
	rng  *rand.Rand
	port int // next host port to publish (each publish gets a new one)

	// Problem strings already seen, per check, and in how many rounds each check failed.
	seen      map[string]map[string]bool
	failed    map[string]int
	detailed  map[string]int // rounds whose problems of a check were printed in full
	rounds    int
	ops       int
	kills     int
	userErrs  int
	gcRetries int

	mu    sync.Mutex
	procs map[*os.Process]bool // podctl processes running, killed at cleanup

	// Pause processes of the test binary that were running before this run (left by an earlier
	// test of the package): not this run's to check or stop.
	otherPause map[int]bool
}

func newFaultRun(t *testing.T, h *host, cfg faultConfig) *faultRun {
	f := &faultRun{
		t: t, h: h, cfg: cfg,
		rng:  rand.New(rand.NewPCG(cfg.seed, cfg.seed^0x9e3779b97f4a7c15)),
		port: 20000,
		seen: map[string]map[string]bool{}, failed: map[string]int{}, detailed: map[string]int{},
		procs: map[*os.Process]bool{}, otherPause: map[int]bool{},
	}
	for _, pid := range pausePIDs() {
		f.otherPause[pid] = true
	}
	// Registered after newHost's cleanup, so it runs first: stop what a failed or interrupted run
	// left running, then remove every sandbox and whatever is still mounted under the host's dirs.
	t.Cleanup(f.cleanup)
	return f
}

// roundDeadline is when the last round may start: the configured duration, and never so late that
// the final checks could run into the go test timeout.
func (f *faultRun) roundDeadline(start time.Time) time.Time {
	var d time.Time
	if f.cfg.duration > 0 {
		d = start.Add(f.cfg.duration)
	}
	if td, ok := f.t.Deadline(); ok {
		td = td.Add(-2 * time.Minute)
		if d.IsZero() || td.Before(d) {
			d = td
		}
	}
	return d
}

var faultKinds = map[string]bool{"create": true, "rm": true, "attach": true, "detach": true, "net-create": true, "net-rm": true, "gc": true}

type faultOp struct {
	kind string
	args []string
	kill time.Duration // SIGKILL this long after start; 0: never
}

// plan draws one round's commands and kills.
func (f *faultRun) plan() []faultOp {
	r := f.rng
	sb := func() string { return faultSandboxName(r.IntN(faultSandboxes)) }
	churn := func() string { return faultChurnName(1 + r.IntN(faultChurnNets)) }
	anyNet := func() string {
		switch x := r.IntN(10); {
		case x < 3:
			return "k1"
		case x < 6:
			return "k6"
		default:
			return churn()
		}
	}
	draw := func() faultOp {
		var op faultOp
		switch x := r.Float64(); {
		case x < 0.30:
			op.kind = "create"
			primary := "k1"
			switch y := r.IntN(10); {
			case y >= 8:
				primary = churn()
			case y >= 6:
				primary = "k6" // dual-stack first: its published ports get IPv6 elements too
			}
			op.args = []string{"sandbox", "create", sb(), "--network", primary}
			if r.Float64() < 0.3 {
				second := "k6"
				if primary == "k6" {
					second = "k1"
				}
				op.args = append(op.args, "--network", second)
			}
			if r.Float64() < 0.4 {
				proto := "tcp"
				if r.IntN(4) == 0 {
					proto = "udp"
				}
				op.args = append(op.args, "--publish", fmt.Sprintf("%d:80/%s", f.port, proto))
				f.port++
			}
			if r.Float64() < 0.2 {
				op.args = append(op.args, "--pause")
			}
		case x < 0.48:
			op.kind = "rm"
			op.args = []string{"sandbox", "rm", sb()}
			if r.IntN(5) == 0 {
				op.args = append(op.args, sb())
			}
		case x < 0.62:
			op.kind = "attach"
			op.args = []string{"sandbox", "attach", sb(), "--network", anyNet()}
		case x < 0.74:
			op.kind = "detach"
			op.args = []string{"sandbox", "detach", sb(), "--network", anyNet()}
		case x < 0.84:
			op.kind = "net-create"
			j := 1 + r.IntN(faultChurnNets)
			op.args = []string{"network", "create", faultChurnName(j), "--driver", "bridge", "--subnet", fmt.Sprintf("10.%d.0.0/24", 70+j)}
			if j%2 == 1 {
				op.args = append(op.args, "--subnet", fmt.Sprintf("fd00:%d::/64", 70+j))
			}
		case x < 0.94:
			op.kind = "net-rm"
			op.args = []string{"network", "rm", churn()}
		default:
			op.kind = "gc"
			op.args = []string{"gc"}
		}
		return op
	}
	ops := make([]faultOp, f.cfg.par)
	for i := range ops {
		// NETMGR_FAULT_OPS narrows the mix (to find which commands a failure needs).
		for ops[i] = draw(); len(f.cfg.ops) > 0 && !f.cfg.ops[ops[i].kind]; ops[i] = draw() {
		}
	}
	// Kill between a quarter and three quarters of them, each 1-50 ms after its start.
	n := len(ops)
	victims := n/4 + r.IntN(n*3/4-n/4+1)
	for _, i := range r.Perm(n)[:victims] {
		ops[i].kill = time.Millisecond + time.Duration(r.Int64N(int64(49*time.Millisecond)))
	}
	return ops
}

type faultResult struct {
	op     faultOp
	killed bool // ended by our SIGKILL
	code   int  // exit code when not killed; -1 when it could not run or ended by another signal
	stderr string
}

// faultCmdTimeout bounds every podctl command: a hung command (e.g. a lock never freed) fails the
// round instead of the test timing out.
const faultCmdTimeout = 20 * time.Second

// exec runs the ops in parallel, each killed after its delay, and waits for all of them.
func (f *faultRun) exec(ops []faultOp) []faultResult {
	ctx, cancel := context.WithTimeout(context.Background(), faultCmdTimeout)
	defer cancel()
	res := make([]faultResult, len(ops))
	var wg sync.WaitGroup
	for i, op := range ops {
		res[i] = faultResult{op: op, code: -1}
		c := f.h.cmd(ctx, op.args...)
		var stderr bytes.Buffer
		c.Stderr = &stderr
		c.WaitDelay = 5 * time.Second
		if err := c.Start(); err != nil {
			res[i].stderr = err.Error()
			continue
		}
		// nsenter execs podctl in place, so this process is podctl. os.Process signals through a
		// pidfd: a kill that comes after the exit cannot hit a reused pid.
		p := c.Process
		f.track(p, true)
		var timer *time.Timer
		if op.kill > 0 {
			timer = time.AfterFunc(op.kill, func() { _ = p.Signal(syscall.SIGKILL) })
		}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_ = c.Wait()
			if timer != nil {
				timer.Stop()
			}
			f.track(p, false)
			res[i].stderr = strings.TrimSpace(stderr.String())
			if ws, ok := c.ProcessState.Sys().(syscall.WaitStatus); ok {
				switch {
				case ws.Signaled() && ws.Signal() == syscall.SIGKILL && op.kill > 0 && ctx.Err() == nil:
					res[i].killed = true
				case ws.Exited():
					res[i].code = ws.ExitStatus()
				case ws.Signaled():
					res[i].code = 128 + int(ws.Signal()) // a crash (or the timeout), as a shell reports it
				}
			}
			if ctx.Err() != nil {
				res[i].stderr += fmt.Sprintf(" (killed after the %s command timeout)", faultCmdTimeout)
			}
		}(i)
	}
	wg.Wait()
	return res
}

func (f *faultRun) track(p *os.Process, running bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if running {
		f.procs[p] = true
	} else {
		delete(f.procs, p)
	}
}

// round runs one round and its checks.
func (f *faultRun) round(r int) {
	t := f.t
	f.rounds++
	ops := f.plan()
	t0 := time.Now()
	res := f.exec(ops)
	took := time.Since(t0)

	kinds := map[string]int{}
	killed, userErrs := 0, 0
	var probs []faultProblem
	var errSamples []string
	for _, x := range res {
		kinds[x.op.kind]++
		switch {
		case x.killed:
			killed++
		case x.code == 0:
		case x.code == 1:
			// A user error (exists, not found, in use...): expected when commands race over the
			// same names. podctl promises one line on stderr for the error, after any warnings
			// (a repair it made on the way, "level=WARN ...").
			userErrs++
			if len(errSamples) < 3 {
				errSamples = append(errSamples, x.stderr)
			}
			if errorLines(x.stderr) != 1 {
				probs = append(probs, faultProblem{"podctl", fmt.Sprintf("podctl %s: more than one line on stderr: %q", strings.Join(x.op.args, " "), x.stderr)})
			}
		default:
			probs = append(probs, faultProblem{"podctl", fmt.Sprintf("podctl %s: exit %d (a crash, not a user error): %s", strings.Join(x.op.args, " "), x.code, x.stderr)})
		}
	}
	f.ops += len(res)
	f.kills += killed
	f.userErrs += userErrs

	gcNote, gcProbs := f.gc()
	probs = append(probs, gcProbs...)
	st, checkProbs := f.settledCheck()
	probs = append(probs, checkProbs...)

	var kl []string
	for _, k := range []string{"create", "rm", "attach", "detach", "net-create", "net-rm", "gc"} {
		kl = append(kl, fmt.Sprintf("%s %d", k, kinds[k]))
	}
	t.Logf("round %d: %s; killed %d, user errors %d, %s; gc %s; %s; %s",
		r, strings.Join(kl, " "), killed, userErrs, took.Round(time.Millisecond), gcNote, st.counts(), f.report(fmt.Sprint(r), probs))
	if len(errSamples) > 0 && r == 1 {
		t.Logf("round %d: user errors, e.g. %q", r, errSamples)
	}
}

// gc runs podctl gc, and once more if it fails.
func (f *faultRun) gc() (string, []faultProblem) {
	var probs []faultProblem
	var first error
	for attempt := 1; attempt <= 2; attempt++ {
		out, err := f.h.podctlTimeout("-o", "json", "gc")
		if err != nil {
			if attempt == 1 {
				f.gcRetries++
				first = err
				continue
			}
			probs = append(probs, faultProblem{"gc", fmt.Sprintf("podctl gc failed twice: %v", err)})
			return "failed", probs
		}
		var rep map[string][]string
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			probs = append(probs, faultProblem{"gc", fmt.Sprintf("podctl -o json gc: %v: %q", err, out)})
			return "unreadable", probs
		}
		if e := rep["errors"]; len(e) > 0 {
			probs = append(probs, faultProblem{"gc", fmt.Sprintf("podctl gc reported errors: %q", e)})
		}
		var keys []string
		for k, v := range rep {
			keys = append(keys, fmt.Sprintf("%s %d", k, len(v)))
		}
		sort.Strings(keys)
		note := "{" + strings.Join(keys, ", ") + "}"
		if attempt == 2 {
			note = fmt.Sprintf("%s on the second run (the first: %v)", note, first)
		}
		return note, probs
	}
	panic("unreachable")
}

// podctlTimeout is h.podctl bounded by faultCmdTimeout.
func (h *host) podctlTimeout(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), faultCmdTimeout)
	defer cancel()
	return h.podctl(ctx, args...)
}

// report records a round's problems: t.Errorf with the details for the first rounds each check fails
// in (and for problems not seen before), and returns the compact counts for the round's summary line.
func (f *faultRun) report(round string, probs []faultProblem) string {
	if len(probs) == 0 {
		return "all checks pass"
	}
	by := map[string][]string{}
	for _, p := range probs {
		by[p.check] = append(by[p.check], p.msg)
	}
	var names []string
	for k := range by {
		names = append(names, k)
	}
	sort.Strings(names)
	var counts []string
	for _, k := range names {
		msgs := by[k]
		f.failed[k]++
		counts = append(counts, fmt.Sprintf("%s=%d", k, len(msgs)))
		if f.seen[k] == nil {
			f.seen[k] = map[string]bool{}
		}
		var fresh []string
		for _, m := range msgs {
			if !f.seen[k][m] {
				f.seen[k][m] = true
				fresh = append(fresh, m)
			}
		}
		if len(fresh) == 0 || f.detailed[k] >= 3 {
			continue
		}
		f.detailed[k]++
		const max = 8
		more := ""
		if len(fresh) > max {
			more = fmt.Sprintf("\n    ... and %d more", len(fresh)-max)
			fresh = fresh[:max]
		}
		f.t.Errorf("round %s (seed %d): check %s: %d problem(s), %d new:\n    %s%s",
			round, f.cfg.seed, k, len(msgs), len(fresh), strings.Join(fresh, "\n    "), more)
	}
	return "FAILED " + strings.Join(counts, " ")
}

// final removes every sandbox and churn network, checks that nothing is left, then checks that the
// whole address pool of k1 can be allocated (no address leaked) and removes that again.
func (f *faultRun) final() {
	t, h := f.t, f.h
	var probs []faultProblem
	names := make([]string, faultSandboxes)
	for i := range names {
		names[i] = faultSandboxName(i)
	}
	if _, err := h.podctlTimeout(append([]string{"sandbox", "rm"}, names...)...); err != nil {
		probs = append(probs, faultProblem{"final", fmt.Sprintf("removing every sandbox: %v", err)})
	}
	for j := 1; j <= faultChurnNets; j++ {
		if out, err := h.podctlTimeout("network", "ls"); err == nil && !containsWord(out, faultChurnName(j)) {
			continue
		}
		if _, err := h.podctlTimeout("network", "rm", faultChurnName(j)); err != nil {
			probs = append(probs, faultProblem{"final", fmt.Sprintf("removing network %s: %v", faultChurnName(j), err)})
		}
	}
	_, gcProbs := f.gc()
	probs = append(probs, gcProbs...)
	st, checkProbs := f.settledCheck()
	probs = append(probs, checkProbs...)
	if len(st.sandboxes) != 0 {
		probs = append(probs, faultProblem{"final", fmt.Sprintf("sandboxes left after removing all: %d", len(st.sandboxes))})
	}
	if len(st.networks) != 2 {
		probs = append(probs, faultProblem{"final", fmt.Sprintf("networks after removing the churn networks: %d, want k1 and k6", len(st.networks))})
	}
	t.Logf("final: everything removed; %s; %s", st.counts(), f.report("final", probs))

	// k1 is a /26: 61 addresses besides the gateway. All of them can be taken, and no more.
	probs = nil
	pool := make([]string, 61)
	for i := range pool {
		pool[i] = "p" + strconv.Itoa(i)
	}
	var wg sync.WaitGroup
	errs := make([]error, len(pool))
	sem := make(chan struct{}, 8)
	stop := time.Now().Add(time.Minute) // bounded even when every create hangs until its timeout
	for i, n := range pool {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			if time.Now().After(stop) {
				errs[i] = fmt.Errorf("not tried: the pool phase ran out of time")
				return
			}
			_, errs[i] = h.podctlTimeout("sandbox", "create", n, "--network", "k1")
		}()
	}
	wg.Wait()
	ok := 0
	for i, err := range errs {
		if err != nil {
			probs = append(probs, faultProblem{"pool", fmt.Sprintf("sandbox %s of 61 on the /26: %v", pool[i], err)})
		} else {
			ok++
		}
	}
	if _, err := h.podctlTimeout("sandbox", "create", "p61", "--network", "k1"); err == nil {
		probs = append(probs, faultProblem{"pool", "a 62nd sandbox got an address on the /26 (61 usable)"})
	}
	st, checkProbs = f.settledCheck()
	probs = append(probs, checkProbs...)
	if _, err := h.podctlTimeout(append([]string{"sandbox", "rm", "p61"}, pool...)...); err != nil {
		probs = append(probs, faultProblem{"final", fmt.Sprintf("removing the pool sandboxes: %v", err)})
	}
	t.Logf("pool: %d of 61 addresses of k1 allocated; %s; %s", ok, st.counts(), f.report("pool", probs))
}

func containsWord(s, w string) bool {
	for _, f := range strings.Fields(s) {
		if f == w {
			return true
		}
	}
	return false
}

func (f *faultRun) summary(took time.Duration) {
	var failed []string
	for k, n := range f.failed {
		failed = append(failed, fmt.Sprintf("%s in %d", k, n))
	}
	sort.Strings(failed)
	verdict := "every check passed in every round"
	if len(failed) > 0 {
		verdict = "checks failed: " + strings.Join(failed, ", ") + " (rounds, final and pool phases counted alike)"
	}
	f.t.Logf("fault injection: seed %d, %d rounds, %d commands, %d killed, %d user errors, %d gc retries, %s: %s",
		f.cfg.seed, f.rounds, f.ops, f.kills, f.userErrs, f.gcRetries, took.Round(time.Second), verdict)
}

// cleanup stops every podctl this run started that still runs and every pause process of the test's
// binary, removes all sandboxes and unmounts whatever is left under the host's dirs (newHost's cleanup
// and the temp dirs' then find nothing in their way).
func (f *faultRun) cleanup() {
	f.mu.Lock()
	for p := range f.procs {
		_ = p.Signal(syscall.SIGKILL)
	}
	f.mu.Unlock()
	h := f.h
	if out, err := h.podctlTimeout("-o", "json", "sandbox", "ls"); err == nil {
		var sbs []faultSandbox
		if json.Unmarshal([]byte(out), &sbs) == nil && len(sbs) > 0 {
			args := []string{"sandbox", "rm"}
			for _, s := range sbs {
				args = append(args, s.Name)
			}
			_, _ = h.podctlTimeout(args...)
		}
	}
	for _, pid := range f.pausePIDs() {
		if p, err := os.FindProcess(pid); err == nil {
			_ = p.Signal(syscall.SIGKILL)
		}
	}
	for _, m := range mountsUnder(h.runDir, h.stateDir) {
		if err := syscall.Unmount(m, 0); err != nil {
			_ = syscall.Unmount(m, syscall.MNT_DETACH)
		}
	}
}

// pauseBin is the pause binary podctl starts (TestMain builds it next to podctl).
func pauseBin() string { return filepath.Join(filepath.Dir(podctlBin), "pause") }

// pausePIDs lists the live (not zombie) processes running this test binary's pause.
func pausePIDs() []int {
	var pids []int
	exes, _ := filepath.Glob("/proc/[0-9]*/exe")
	for _, e := range exes {
		if exe, err := os.Readlink(e); err != nil || exe != pauseBin() {
			continue
		}
		dir := filepath.Dir(e)
		st, err := os.ReadFile(filepath.Join(dir, "stat"))
		if err != nil || bytes.Contains(st, []byte(") Z ")) {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(dir)); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// pausePIDs is pausePIDs without the ones that were running before this run.
func (f *faultRun) pausePIDs() []int {
	var out []int
	for _, pid := range pausePIDs() {
		if !f.otherPause[pid] {
			out = append(out, pid)
		}
	}
	return out
}

// mountsUnder lists the mount points under any of dirs, deepest first.
func mountsUnder(dirs ...string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		fs := strings.Fields(line)
		if len(fs) < 5 {
			continue
		}
		for _, d := range dirs {
			if strings.HasPrefix(fs[4], d+"/") {
				out = append(out, fs[4])
			}
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(out)))
	return out
}
