// Command startup measures process start-up side by side in one run: an empty Go program, `podctl
// version` (start-up and nothing else) and `podctl network ls` (start-up plus opening the Manager and
// reading the store). The commands are run in turn, round-robin, so that load on the machine falls on
// each alike; the report gives medians, p90 and the ratios to the empty program. Run it through
// bench/startup/run.sh, which puts it in a throwaway network namespace with scratch state and run dirs.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

type target struct {
	name string
	argv []string
	wall []time.Duration
	cpu  []time.Duration // user + system of the child
}

func main() {
	n := flag.Int("n", 200, "runs of each command")
	empty := flag.String("empty", "", "the empty Go program (required)")
	podctl := flag.String("podctl", "", "podctl binary (required)")
	other := flag.String("compare", "", "another podctl binary whose version is timed in the same rounds (e.g. an older build)")
	stateDir := flag.String("state-dir", "", "podctl --state-dir (required)")
	runDir := flag.String("run-dir", "", "podctl --run-dir (required)")
	out := flag.String("out", "", "also write the report here")
	invocation := flag.String("invocation", "", "how the run was started, for the report")
	flag.Parse()
	if *empty == "" || *podctl == "" || *stateDir == "" || *runDir == "" {
		fmt.Fprintln(os.Stderr, "startup: -empty, -podctl, -state-dir and -run-dir are required; run bench/startup/run.sh")
		os.Exit(2)
	}
	dirs := []string{"--state-dir", *stateDir, "--run-dir", *runDir}
	ts := []*target{
		{name: "empty Go program", argv: []string{*empty}},
		{name: "podctl version", argv: append([]string{*podctl}, append(dirs, "version")...)},
		{name: "podctl network ls", argv: append([]string{*podctl}, append(dirs, "network", "ls")...)},
	}
	if *other != "" {
		ts = append(ts, &target{name: "compare: version", argv: append([]string{*other}, append(dirs, "version")...)})
	}
	// One run of each first: a failing command stops the benchmark before anything is timed, and the
	// binaries are in the page cache for every timed run.
	for _, t := range ts {
		if _, _, err := runOnce(t.argv); err != nil {
			fmt.Fprintf(os.Stderr, "startup: %s: %v\n", t.name, err)
			os.Exit(1)
		}
	}
	began := time.Now()
	for range *n {
		for _, t := range ts {
			w, c, err := runOnce(t.argv)
			if err != nil {
				fmt.Fprintf(os.Stderr, "startup: %s: %v\n", t.name, err)
				os.Exit(1)
			}
			t.wall, t.cpu = append(t.wall, w), append(t.cpu, c)
		}
	}
	var b strings.Builder
	report(&b, ts, *n, time.Since(began), *invocation)
	fmt.Print(b.String())
	if *out != "" {
		if err := os.WriteFile(*out, []byte(b.String()), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "startup:", err)
			os.Exit(1)
		}
	}
}

// runOnce runs argv to its end with output discarded, and returns the wall time from start to exit
// and the child's CPU time.
func runOnce(argv []string) (time.Duration, time.Duration, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = io.Discard, &stderr
	t0 := time.Now()
	err := cmd.Run()
	wall := time.Since(t0)
	if err != nil {
		return 0, 0, fmt.Errorf("%v: %s", err, strings.TrimSpace(stderr.String()))
	}
	var cpu time.Duration
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	return wall, cpu, nil
}

func quantile(s []time.Duration, q float64) time.Duration {
	c := slices.Clone(s)
	slices.Sort(c)
	return c[int(q*float64(len(c)-1)+0.5)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func report(w io.Writer, ts []*target, n int, took time.Duration, invocation string) {
	fmt.Fprintf(w, "netmgr start-up benchmark, %s\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(w, "host: %d CPUs, %s\n", runtime.NumCPU(), runtime.Version())
	if invocation != "" {
		fmt.Fprintf(w, "command: %s\n", invocation)
	}
	fmt.Fprintf(w, "%d runs of each command, round-robin, in %s; fork to exit as the parent sees it\n\n", n, took.Round(time.Second))
	fmt.Fprintf(w, "%-20s %10s %10s %10s %12s %14s\n", "command", "p50(ms)", "p90(ms)", "cpu p50", "p50/empty", "binary (MiB)")
	base := quantile(ts[0].wall, 0.5)
	for _, t := range ts {
		p50 := quantile(t.wall, 0.5)
		size := "-"
		if fi, err := os.Stat(t.argv[0]); err == nil {
			size = fmt.Sprintf("%.1f", float64(fi.Size())/(1<<20))
		}
		fmt.Fprintf(w, "%-20s %10.2f %10.2f %10.2f %11.2fx %14s\n", t.name, ms(p50), ms(quantile(t.wall, 0.9)),
			ms(quantile(t.cpu, 0.5)), float64(p50)/float64(base), size)
	}
	ver := quantile(ts[1].wall, 0.5)
	ratio := float64(ver) / float64(base)
	verdict := "PASS"
	if ratio > 1.5 {
		verdict = "MISS"
	}
	fmt.Fprintf(w, "\nManager open (network ls minus version, p50): %.2f ms\n", ms(quantile(ts[2].wall, 0.5)-ver))
	if len(ts) > 3 {
		fmt.Fprintf(w, "compare: %s\n", ts[3].argv[0])
	}
	fmt.Fprintf(w, "\ntargets (informational: timing never fails the run)\n")
	fmt.Fprintf(w, "  podctl version within 1.5x of an empty Go program   %.2fx   %s\n", ratio, verdict)
}
