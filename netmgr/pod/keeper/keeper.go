// Package keeper keeps pods' restart policies: an agent.Controller that restarts a pod's containers
// when they exit, as the pod's restartPolicy says (Always; OnFailure: a non-zero exit), with
// kubelet's back-off: the first restart after Base (10 s), each next one after twice the last delay
// up to Max (5 min), back to Base once a container has run for Reset (10 min). The pod keeps its
// sandbox, so its IP and its other containers are untouched. Each restart, the last exit code and
// the reason are recorded with the container (pod.RestartRecorder), which `pod inspect` shows.
//
// While it runs, the keeper holds an flock on its lock file; Running tells podctl whether a keeper
// is there to honour a restart policy.
package keeper

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/agent"
	"github.com/netmgr/netmgr/netmgr/pod"
)

// kubelet's back-off.
const (
	DefaultBase   = 10 * time.Second
	DefaultMax    = 5 * time.Minute
	DefaultReset  = 10 * time.Minute
	DefaultPeriod = time.Second
)

// Kubernetes' reasons.
const (
	ReasonError            = "Error"
	ReasonCompleted        = "Completed"
	ReasonCrashLoopBackOff = "CrashLoopBackOff"
)

// Options configure a Keeper. Zero values are the defaults.
type Options struct {
	// LockFile is held while the keeper runs (Running reads it). Required.
	LockFile string
	// Base, Max and Reset are the back-off's (DefaultBase, DefaultMax, DefaultReset).
	Base, Max, Reset time.Duration
	// Period is how often the pods are looked at (DefaultPeriod; at most Base/2 is used).
	Period time.Duration
	// StopGrace is how long a container whose liveness probe failed gets between SIGTERM and
	// SIGKILL (default 10 s).
	StopGrace time.Duration
	// PodOptions are given to the pod Manager the keeper makes over the agent's netmgr Manager.
	PodOptions []pod.Option
	Logger     *slog.Logger
}

// Keeper is the restart-policy controller.
type Keeper struct {
	rt   pod.Runtime
	opts Options
	log  *slog.Logger

	nm *netmgr.Manager // the agent's, for readiness

	mu      sync.Mutex
	state   map[string]*backoff // by container ID
	probers map[string]*prober  // by proberKey
	ready   map[string]bool     // by container ID: its readiness probe passes
	probed  map[string][]string // by pod: its containers with a readiness probe
	written map[string]bool     // by pod: the readiness last written on its sandbox
	wmu     sync.Mutex          // orders writes of readiness
}

type backoff struct {
	delay   time.Duration // the last delay waited; 0: none yet
	exited  time.Time     // the exit being handled; zero while running
	due     time.Time     // when the restart is due
	started time.Time     // when it was last (re)started by the keeper, or first seen running
}

var _ agent.Controller = (*Keeper)(nil)

// New returns a Keeper over rt.
func New(rt pod.Runtime, opts Options) (*Keeper, error) {
	if opts.LockFile == "" {
		return nil, fmt.Errorf("%w: keeper: no lock file", netmgr.ErrInvalid)
	}
	if opts.Base <= 0 {
		opts.Base = DefaultBase
	}
	if opts.Max <= 0 {
		opts.Max = DefaultMax
	}
	if opts.Max < opts.Base {
		opts.Max = opts.Base
	}
	if opts.Reset <= 0 {
		opts.Reset = DefaultReset
	}
	if opts.Period <= 0 {
		opts.Period = DefaultPeriod
	}
	if opts.Period > opts.Base/2 {
		opts.Period = max(opts.Base/2, 10*time.Millisecond)
	}
	if opts.StopGrace <= 0 {
		opts.StopGrace = 10 * time.Second
	}
	k := &Keeper{rt: rt, opts: opts, log: opts.Logger, state: map[string]*backoff{},
		probers: map[string]*prober{}, ready: map[string]bool{}, probed: map[string][]string{}, written: map[string]bool{}}
	if k.log == nil {
		k.log = slog.New(slog.DiscardHandler)
	}
	return k, nil
}

// Name implements agent.Controller.
func (k *Keeper) Name() string { return "pod-keeper" }

// Run implements agent.Controller: it keeps the pods on a's Manager until ctx ends.
func (k *Keeper) Run(ctx context.Context, a *agent.Agent) error {
	unlock, err := lock(k.opts.LockFile)
	if err != nil {
		return err
	}
	defer unlock()
	k.nm = a.Manager()
	pm := pod.New(k.nm, k.rt, k.opts.PodOptions...)
	defer func() {
		k.mu.Lock()
		defer k.mu.Unlock()
		for key, pr := range k.probers {
			pr.cancel()
			delete(k.probers, key)
		}
	}()
	t := time.NewTicker(k.opts.Period)
	defer t.Stop()
	for {
		if err := k.Sync(ctx, pm); err != nil && ctx.Err() == nil {
			k.log.Warn("pod keeper", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Sync looks at every pod once and restarts what is due.
func (k *Keeper) Sync(ctx context.Context, pm *pod.Manager) error {
	pods, err := pm.Pods(ctx)
	if err != nil {
		return err
	}
	k.mu.Lock()
	seen := map[string]bool{}
	probeSeen := map[string]bool{}
	podNames := map[string]bool{}
	var errs []error
	for _, p := range pods {
		podNames[p.Name] = true
		k.syncProbes(ctx, p, probeSeen)
		policy := p.RestartPolicy()
		if p.Sandbox == nil || policy == pod.RestartNever {
			continue
		}
		for _, c := range p.Containers {
			seen[c.ID] = true
			if err := k.keep(ctx, policy, c); err != nil {
				errs = append(errs, fmt.Errorf("pod %q container %q: %w", p.Name, c.Name, err))
			}
		}
	}
	for id := range k.state {
		if !seen[id] {
			delete(k.state, id) // the pod is gone
		}
	}
	k.stopProbers(probeSeen, podNames)
	var probedPods []string
	for name := range k.probed {
		probedPods = append(probedPods, name)
	}
	k.mu.Unlock()
	// A container that stopped is unready now, not at its next probe.
	for _, name := range probedPods {
		k.writeReady(ctx, name)
	}
	return errors.Join(errs...)
}

func (k *Keeper) keep(ctx context.Context, policy pod.RestartPolicy, c pod.ContainerStatus) error {
	now := time.Now()
	st := k.state[c.ID]
	if st == nil {
		st = &backoff{}
		k.state[c.ID] = st
	}
	switch c.State {
	case pod.StateRunning:
		if st.started.IsZero() {
			st.started = now
		}
		st.exited = time.Time{}
		return nil
	case pod.StateStopped:
	default:
		return nil
	}
	if policy == pod.RestartOnFailure && c.ExitCode == 0 {
		if c.Reason != ReasonCompleted {
			return k.record(ctx, c, ReasonCompleted)
		}
		return nil
	}
	exited := c.ExitedAt
	if exited.IsZero() {
		exited = now
	}
	if !st.exited.Equal(exited) {
		// A new exit: schedule its restart.
		st.exited = exited
		switch {
		case st.delay == 0:
			st.delay = k.opts.Base
		case !st.started.IsZero() && exited.Sub(st.started) >= k.opts.Reset:
			st.delay = k.opts.Base // it ran long enough: the back-off starts over
		default:
			st.delay = min(2*st.delay, k.opts.Max)
		}
		st.due = exited.Add(st.delay)
		k.log.Info("container exited", "container", c.ID, "exit_code", c.ExitCode, "restart_in", time.Until(st.due).Round(time.Millisecond))
		if err := k.record(ctx, c, ReasonCrashLoopBackOff); err != nil {
			return err
		}
	}
	if now.Before(st.due) {
		return nil
	}
	if err := k.rt.Start(ctx, c.ID); err != nil {
		if errors.Is(err, netmgr.ErrNotFound) {
			return nil // removed meanwhile
		}
		return fmt.Errorf("restart: %w", err)
	}
	st.started = time.Now()
	st.exited = time.Time{}
	c.Restarts++
	k.log.Info("container restarted", "container", c.ID, "restarts", c.Restarts)
	return k.record(ctx, c, exitReason(c.ExitCode))
}

func exitReason(code uint32) string {
	if code == 0 {
		return ReasonCompleted
	}
	return ReasonError
}

// record keeps the container's restart count, last exit and reason with it.
func (k *Keeper) record(ctx context.Context, c pod.ContainerStatus, reason string) error {
	rr, ok := k.rt.(pod.RestartRecorder)
	if !ok {
		return nil
	}
	err := rr.RecordRestart(ctx, c.ID, pod.Restarted{Count: c.Restarts, ExitCode: int(c.ExitCode), ExitedAt: c.ExitedAt, Reason: reason})
	if errors.Is(err, netmgr.ErrNotFound) {
		return nil
	}
	return err
}

// lock takes the keeper's lock file, or says who holds it.
func lock(path string) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: another pod keeper runs (lock %s)", netmgr.ErrBusy, path)
		}
		return nil, err
	}
	return func() { os.Remove(path); f.Close() }, nil
}

// Running reports whether a keeper holds the lock file at path.
func Running(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err != nil {
		return errors.Is(err, unix.EWOULDBLOCK)
	}
	_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
	return false
}
