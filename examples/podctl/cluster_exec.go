//go:build !podctl_pod

package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/netmgr/netmgr/netmgr/store"
)

// podctl does not link the etcd client (grpc's package initialisation alone would cost every command
// several milliseconds): a command given a cluster store, and the agent and node commands, are served
// by PodBinary, which does.

func (g *globals) openClusterStore(ctx context.Context) (store.Store, error) {
	return nil, execFull("commands on a cluster store")
}

func (g *globals) offline(error) (store.Store, bool) { return nil, false }

func newAgentCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:                "agent",
		Short:              "Run this node's agent: join the cluster (--store etcd://...) and program its peers (served by " + PodBinary + ")",
		DisableFlagParsing: true,
		RunE:               func(*cobra.Command, []string) error { return execFull("agent commands") },
	}
}

func newNodeCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:                "node",
		Short:              "Nodes of the cluster: ls, inspect NAME, rm NAME (served by " + PodBinary + ")",
		DisableFlagParsing: true,
		RunE:               func(*cobra.Command, []string) error { return execFull("node commands") },
	}
}

// leanBuild is true in podctl, which hands cluster stores to PodBinary.
const leanBuild = true
