//go:build podctl_pod

package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/agent"
	"github.com/netmgr/netmgr/netmgr/pod"
	"github.com/netmgr/netmgr/netmgr/pod/containerd"
	"github.com/netmgr/netmgr/netmgr/pod/keeper"
)

// keeperLock is the lock file the agent's pod keeper holds for a containerd namespace.
func (g *globals) keeperLock(ns string) string {
	return filepath.Join(g.runDir, "pod-keeper-"+ns+".lock")
}

// needKeeper refuses a restart policy that no running agent would keep.
func (g *globals) needKeeper(spec *pod.Spec) error {
	if spec.RestartPolicy == "" || spec.RestartPolicy == pod.RestartNever {
		return nil
	}
	if keeper.Running(g.keeperLock(ctdNamespace)) {
		return nil
	}
	return fmt.Errorf("%w: restartPolicy %s needs a running agent to keep it (start `podctl agent` with the same --state-dir, --run-dir and --containerd-namespace), or say Never", netmgr.ErrInvalid, spec.RestartPolicy)
}

// addKeeperFlags adds the pod keeper's flags to the agent command and returns what makes its
// controllers: the keeper over the containerd at --containerd, unless --pod-keeper=false.
func addKeeperFlags(c *cobra.Command) func(ctx context.Context, g *globals) ([]agent.Controller, func(), error) {
	var on bool
	var ns string
	var base, maxDelay, reset, stopGrace time.Duration
	f := c.Flags()
	f.BoolVar(&on, "pod-keeper", true, "keep pods' restart policies (needs containerd; without it the agent runs without, unless this flag is given)")
	f.StringVar(&ns, "containerd-namespace", containerd.DefaultNamespace, "containerd namespace of the pods kept")
	f.DurationVar(&base, "restart-backoff", keeper.DefaultBase, "delay before a pod's exited container is first restarted; it doubles with each restart")
	f.DurationVar(&maxDelay, "restart-backoff-max", keeper.DefaultMax, "the longest delay between restarts")
	f.DurationVar(&reset, "restart-backoff-reset", keeper.DefaultReset, "a container that ran this long is restarted after the first delay again")
	f.DurationVar(&stopGrace, "stop-grace", 10*time.Second, "how long a container whose liveness probe failed gets between SIGTERM and SIGKILL")
	return func(ctx context.Context, g *globals) ([]agent.Controller, func(), error) {
		if !on {
			return nil, func() {}, nil
		}
		ctdNamespace = ns
		rt, err := containerd.New(ctx, g.containerdAddress(), containerd.WithNamespace(ns), containerd.WithDir(filepath.Join(g.stateDir, "pods")))
		if err != nil {
			if errors.Is(err, pod.ErrUnavailable) && !c.Flags().Changed("pod-keeper") {
				g.agentLogger().Warn("agent: no pod keeper: restart policies are not kept", "err", err)
				return nil, func() {}, nil
			}
			if errors.Is(err, pod.ErrUnavailable) {
				return nil, nil, fmt.Errorf("agent: the pod keeper %w (or run the agent with --pod-keeper=false)", err)
			}
			return nil, nil, err
		}
		k, err := keeper.New(rt, keeper.Options{
			LockFile: g.keeperLock(ns), Base: base, Max: maxDelay, Reset: reset, StopGrace: stopGrace,
			PodOptions: []pod.Option{pod.WithPause(g.pauseBinary() != "")}, Logger: g.agentLogger(),
		})
		if err != nil {
			rt.Close()
			return nil, nil, err
		}
		return []agent.Controller{k}, func() { rt.Close() }, nil
	}
}
