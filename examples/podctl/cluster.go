//go:build podctl_pod

package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"time"

	"github.com/spf13/cobra"

	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/agent"
	"github.com/netmgr/netmgr/netmgr/cluster"
	"github.com/netmgr/netmgr/netmgr/service/proxy"
	"github.com/netmgr/netmgr/netmgr/store"
	"github.com/netmgr/netmgr/netmgr/store/etcd"
)

// openClusterStore opens a cluster store URL (etcd://...). It lives in podctl-pod, which links the
// etcd client (and through it grpc) that podctl itself does not.
func (g *globals) openClusterStore(ctx context.Context) (store.Store, error) {
	if !etcd.IsURL(g.storeURL) {
		return nil, fmt.Errorf("store URL %q: unknown scheme (want bolt://PATH or etcd://HOST:PORT)", g.storeURL)
	}
	return etcd.Open(ctx, g.storeURL)
}

// cluster is the cluster store the Manager was opened with, if any.
func (g *globals) cluster() (store.Store, bool) { return g.clusterStore, g.clusterStore != nil }

func newAgentCmd(g *globals) *cobra.Command {
	var underlay string
	var ttl, grace time.Duration
	c := &cobra.Command{
		Use:   "agent",
		Short: "Run this node's agent until stopped: on a cluster store (--store etcd://...) join the cluster and program its peers; on any store run the controllers",
		Long: "Registers this node (--node, default the host name) in the cluster store, leases its subnet of every\n" +
			"network that spans nodes, plumbs them and keeps their peers current. On SIGTERM or SIGINT it exits\n" +
			"and leaves the data path in place; the node's record expires after --ttl.",
		Args: nameArgs(),
		RunE: g.withManager(func(ctx context.Context, m *netmgr.Manager, args []string) error {
			var addr netip.Addr
			cs, onCluster := g.cluster()
			if onCluster || underlay != "" {
				var err error
				if addr, err = netip.ParseAddr(underlay); err != nil {
					return fmt.Errorf("agent: --underlay %q is not an IP address (a cluster agent needs the address other nodes reach this one by)", underlay)
				}
			}
			a, err := agent.New(agent.Config{Manager: m, Cluster: cs, Underlay: addr, TTL: ttl, Grace: grace, Logger: g.agentLogger(),
				Controllers: []agent.Controller{proxy.New(proxy.Options{})}})
			if err != nil {
				return err
			}
			go func() {
				select {
				case <-a.Ready():
					g.logger().Warn("agent ready", "node", a.Node())
				case <-ctx.Done():
				}
			}()
			return a.Run(ctx)
		}),
	}
	c.Flags().StringVar(&underlay, "underlay", "", "this node's address that other nodes reach it by (required with a cluster store)")
	c.Flags().DurationVar(&ttl, "ttl", cluster.DefaultTTL, "lifetime of this node's record without keep-alives")
	c.Flags().DurationVar(&grace, "grace", cluster.DefaultGrace, "how long a dead node's subnets stay its own")
	return c
}

// agentLogger logs the agent's info lines too (joins, peers), to stderr.
func (g *globals) agentLogger() *slog.Logger {
	return g.leveledLogger(slog.LevelInfo)
}

func newNodeCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "node", Short: "Nodes of the cluster (--store etcd://...)"}
	groupCmd(c)
	c.AddCommand(&cobra.Command{
		Use: "ls", Aliases: []string{"list"}, Short: "List the live nodes", Args: nameArgs(),
		RunE: g.withCluster(func(ctx context.Context, cs store.Store, args []string) error {
			nodes, _, err := cluster.ListNodes(ctx, cs, nil)
			if err != nil {
				return err
			}
			return printNodes(g, nodes)
		}),
	}, &cobra.Command{
		Use: "inspect NAME", Short: "Show one node", Args: nameArgs("NAME"),
		RunE: g.withCluster(func(ctx context.Context, cs store.Store, args []string) error {
			n, err := cluster.GetNode(ctx, cs, args[0])
			if err != nil {
				return err
			}
			return writeJSON(g.stdout, n)
		}),
	}, &cobra.Command{
		Use: "rm NAME", Short: "Forget a dead node: free its subnets now and drop it from every peer", Args: nameArgs("NAME"),
		RunE: g.withCluster(func(ctx context.Context, cs store.Store, args []string) error {
			freed, err := cluster.RemoveNode(ctx, cs, args[0])
			if err != nil {
				return err
			}
			if g.output == "json" {
				return writeJSON(g.stdout, freed)
			}
			for _, l := range freed {
				fmt.Fprintf(g.stdout, "freed %s of network %s\n", l.Subnet, l.Network)
			}
			return nil
		}),
	})
	return c
}

// withCluster runs fn with the cluster store alone (no Manager: node commands touch no host state).
func (g *globals) withCluster(fn func(ctx context.Context, cs store.Store, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if g.storeURL == "" {
			return fmt.Errorf("%sneeds a cluster store (--store etcd://HOST:PORT)", where(cmd))
		}
		cs, err := g.openClusterStore(cmd.Context())
		if err != nil {
			return err
		}
		defer cs.Close()
		return fn(cmd.Context(), cs, args)
	}
}

func printNodes(g *globals, nodes []cluster.Node) error {
	if g.output == "json" {
		if nodes == nil {
			nodes = []cluster.Node{}
		}
		return writeJSON(g.stdout, nodes)
	}
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].Name < nodes[j].Name })
	tw := newTable(g.stdout)
	fmt.Fprintln(tw, "NAME\tADDRESS\tREADY\tSUBNETS")
	for _, n := range nodes {
		fmt.Fprintf(tw, "%s\t%s\t%v\t%s\n", n.Name, n.Address, n.Ready, list(n.Subnets()))
	}
	return tw.Flush()
}

// leanBuild is false in PodBinary, which serves cluster stores itself.
const leanBuild = false
