package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/agent"
	"github.com/netmgr/netmgr/netmgr/pod"
	"github.com/netmgr/netmgr/netmgr/pod/keeper"
)

// probeCost runs n pods, each an httpd with a tcpSocket readiness probe and an httpGet liveness probe
// every second, under the agent's keeper in this process, and measures this process's CPU (user and
// system) over secs seconds: the keeper's Sync every second (every pod listed) and its 2n probes a
// second, dialled from the pods' namespaces.
func probeCost(ctx context.Context, w io.Writer, nm *netmgr.Manager, pm *pod.Manager, rt pod.Runtime, rootfs, runDir string, n int, window time.Duration) (err error) {
	var made []string
	defer func() {
		cctx := context.WithoutCancel(ctx)
		for _, name := range made {
			err = errors.Join(err, pm.Remove(cctx, name))
		}
	}()
	probe := func(p pod.Probe) *pod.Probe { p.Period, p.FailureThreshold = time.Second, 3; return &p }
	t0 := time.Now()
	for i := range n {
		name := fmt.Sprintf("probe%03d", i)
		_, err := pm.Run(ctx, pod.Spec{Name: name, Networks: []netmgr.AttachSpec{{Network: "bench"}}, Containers: []pod.ContainerSpec{{
			Name: "web", Image: rootfs, Command: []string{"sh", "-c", "echo ok >/www/index.html && exec httpd -f -p 8080 -h /www"},
			Readiness: probe(pod.Probe{TCPPort: 8080}), Liveness: probe(pod.Probe{HTTPPort: 8080, HTTPPath: "/"}),
		}}})
		if err != nil {
			return err
		}
		made = append(made, name)
	}
	started := time.Since(t0)
	k, err := keeper.New(rt, keeper.Options{LockFile: filepath.Join(runDir, "bench-keeper.lock"), Period: time.Second})
	if err != nil {
		return err
	}
	a, err := agent.New(agent.Config{Manager: nm, Controllers: []agent.Controller{k}})
	if err != nil {
		return err
	}
	actx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(actx) }()
	// Let every pod turn ready before measuring.
	deadline := time.Now().Add(60 * time.Second)
	for {
		ps, err := pm.Pods(ctx)
		if err != nil {
			cancel()
			return err
		}
		ready := 0
		for _, p := range ps {
			if r := p.Ready(); r != nil && *r {
				ready++
			}
		}
		if ready == n {
			break
		}
		if time.Now().After(deadline) {
			cancel()
			<-done
			return fmt.Errorf("only %d of %d probed pods ready after 60 s", ready, n)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if prof := os.Getenv("BENCH_PROBE_CPUPROFILE"); prof != "" {
		if f, err := os.Create(prof); err == nil {
			_ = pprof.StartCPUProfile(f)
			defer func() { pprof.StopCPUProfile(); f.Close() }()
		}
	}
	cpu0, wall0 := cpuTime(), time.Now()
	select {
	case <-time.After(window):
	case <-ctx.Done():
	}
	cpu, wall := cpuTime()-cpu0, time.Since(wall0)
	cancel()
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	fmt.Fprintf(w, "\nprobe cost: %d pods (started in %.1f s), each a tcpSocket readiness and an httpGet liveness probe every second,\n", n, started.Seconds())
	fmt.Fprintf(w, "kept by the agent's keeper (Sync every second) in this process: %.1f%% of one core over %.0f s (%.2f ms CPU per probe)\n",
		100*cpu.Seconds()/wall.Seconds(), wall.Seconds(), 1000*cpu.Seconds()/(2*float64(n)*wall.Seconds()))
	fmt.Fprintf(w, "target (informational): under 5%% of one core\n")
	return nil
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
