//go:build podctl_pod

package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"time"

	"github.com/spf13/cobra"

	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/agent"
	"github.com/netmgr/netmgr/netmgr/bgp"
	"github.com/netmgr/netmgr/netmgr/cluster"
	"github.com/netmgr/netmgr/netmgr/dns"
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

// offline stands in for a cluster store that did not answer: every call fails at once with err, so
// that a command that needs only the node's own state (a sandbox on a network this node joined: its
// copy is local) still works while etcd is unreachable, and one that needs the cluster fails fast.
func (g *globals) offline(err error) (store.Store, bool) {
	if !errors.Is(err, etcd.ErrUnreachable) {
		return nil, false
	}
	return offlineStore{err}, true
}

type offlineStore struct{ err error }

func (s offlineStore) Get(context.Context, string) (store.KV, error) { return store.KV{}, s.err }
func (s offlineStore) List(context.Context, string) ([]store.KV, int64, error) {
	return nil, 0, s.err
}
func (s offlineStore) Txn(context.Context, []store.Cmp, []store.Op) error { return s.err }
func (s offlineStore) Watch(context.Context, string, int64) (<-chan store.Event, error) {
	return nil, s.err
}
func (s offlineStore) Close() error { return nil }

// The lease calls fail too, so that what needs the cluster says the cluster is unreachable (not that
// the store has no leases).
func (s offlineStore) Grant(context.Context, time.Duration) (store.LeaseID, error) { return 0, s.err }
func (s offlineStore) KeepAlive(context.Context, store.LeaseID) error              { return s.err }
func (s offlineStore) Revoke(context.Context, store.LeaseID) error                 { return s.err }

// cluster is the cluster store the Manager was opened with, if any.
func (g *globals) cluster() (store.Store, bool) { return g.clusterStore, g.clusterStore != nil }

func newAgentCmd(g *globals) *cobra.Command {
	var underlay string
	var ttl, grace time.Duration
	var dnsUpstreams []string
	var dnsDomain string
	var noDNS bool
	var ups []netip.AddrPort
	var podControllers func(context.Context, *globals) ([]agent.Controller, func(), error)
	var bgpASN, bgpRouterID string
	var bgpPeers, bgpAdvertise []string
	var bgpCfg bgp.Config
	var speaker *bgp.Controller
	c := &cobra.Command{
		Use:   "agent",
		Short: "Run this node's agent until stopped: on a cluster store (--store etcd://...) join the cluster and program its peers; on any store run the controllers",
		Long: "Registers this node (--node, default the host name) in the cluster store, leases its subnet of every\n" +
			"network that spans nodes, plumbs them and keeps their peers current. On SIGTERM or SIGINT it exits\n" +
			"and leaves the data path in place; the node's record expires after --ttl.",
		Args: nameArgs(),
		// Checked before the Manager opens: a bad flag changes nothing.
		PreRunE: func(cmd *cobra.Command, _ []string) error {
			for _, u := range dnsUpstreams {
				ap, err := dns.ParseUpstream(u)
				if err != nil {
					return fmt.Errorf("agent: --dns-upstream: %w", err)
				}
				ups = append(ups, ap)
			}
			if _, err := dns.New(dns.Config{Hosts: noHosts{}, HostNetNS: "-", Domain: dnsDomain}); err != nil {
				return fmt.Errorf("agent: --dns-domain: %w", err)
			}
			if bgpASN == "" {
				for _, f := range []string{"bgp-hold-time", "bgp-restart-time", "bgp-connect-retry", "bgp-listen-port", "bgp-withdraw-on-stop"} {
					if cmd.Flags().Changed(f) {
						return fmt.Errorf("agent: --%s needs --bgp-as", f)
					}
				}
			}
			if err := parseBGPFlags(&bgpCfg, &speaker, bgpASN, bgpRouterID, bgpPeers, bgpAdvertise); err != nil {
				return err
			}
			if speaker != nil && bgpRouterID == "" {
				if u, err := netip.ParseAddr(underlay); err == nil && !u.Is4() {
					return fmt.Errorf("agent: BGP needs a router ID, an IPv4 address: the underlay address %s is not one; give --bgp-router-id", u)
				}
			}
			return nil
		},
		RunE: g.withManager(func(ctx context.Context, m *netmgr.Manager, args []string) error {
			if g.offlineErr != nil {
				return fmt.Errorf("agent: %w", g.offlineErr)
			}
			var addr netip.Addr
			cs, onCluster := g.cluster()
			if onCluster || underlay != "" {
				var err error
				if addr, err = netip.ParseAddr(underlay); err != nil {
					return fmt.Errorf("agent: --underlay %q is not an IP address (a cluster agent needs the address other nodes reach this one by)", underlay)
				}
			}
			// The service proxy, the DNS server answering service names from the same store, and the
			// pod keeper (restart policies, probes) when containerd is there.
			controllers := []agent.Controller{proxy.New(proxy.Options{})}
			if !noDNS {
				controllers = append(controllers, &dns.Controller{Config: dns.Config{Domain: dnsDomain, Upstreams: ups}, ServicesFromStore: true})
			}
			pcs, closeCtrls, err := podControllers(ctx, g)
			if err != nil {
				return err
			}
			defer closeCtrls()
			controllers = append(controllers, pcs...)
			if speaker != nil {
				controllers = append(controllers, speaker)
			}
			a, err := agent.New(agent.Config{Manager: m, Cluster: cs, Underlay: addr, TTL: ttl, Grace: grace, Logger: g.agentLogger(), Controllers: controllers})
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
	c.Flags().StringArrayVar(&dnsUpstreams, "dns-upstream", nil, "resolver IP[:PORT] the DNS server forwards other names to (repeatable; default the host's /etc/resolv.conf)")
	c.Flags().StringVar(&dnsDomain, "dns-domain", dns.DefaultDomain, "cluster domain of service names (NAME.svc.DOMAIN)")
	c.Flags().BoolVar(&noDNS, "no-dns", false, "do not run the DNS server on the networks' gateways")
	c.Flags().StringVar(&bgpASN, "bgp-as", "", "run a BGP speaker with this AS number: advertise this node's subnets of every routed-global network to the --bgp-peer routers")
	c.Flags().StringArrayVar(&bgpPeers, "bgp-peer", nil, "BGP router to peer with, IP[:ASN] or [IPv6]:ASN (repeatable; without ASN: iBGP, the node's own)")
	c.Flags().StringVar(&bgpRouterID, "bgp-router-id", "", "BGP identifier (default the IPv4 underlay address)")
	c.Flags().StringArrayVar(&bgpAdvertise, "bgp-advertise", nil, "also advertise: cluster-ips (every service's cluster IP, so that clients beyond the routers reach services)")
	c.Flags().DurationVar(&bgpCfg.HoldTime, "bgp-hold-time", bgp.DefaultHoldTime, "BGP hold time (at least 3s)")
	c.Flags().DurationVar(&bgpCfg.RestartTime, "bgp-restart-time", 0, "graceful-restart time announced to the routers: how long they keep this node's routes while the agent restarts, or after it died (default: the hold time)")
	c.Flags().DurationVar(&bgpCfg.ConnectRetry, "bgp-connect-retry", bgp.DefaultConnectRetry, "how often an unanswered BGP peer is tried again")
	c.Flags().IntVar(&bgpCfg.ListenPort, "bgp-listen-port", bgp.DefaultPort, "TCP port the routers may connect to (-1: connect out only)")
	c.Flags().BoolVar(&bgpCfg.WithdrawOnStop, "bgp-withdraw-on-stop", false, "withdraw this node's routes when the agent stops (default: the routers keep them for --bgp-restart-time, graceful restart)")
	podControllers = addKeeperFlags(c)
	return c
}

// parseBGPFlags checks the BGP flags before anything opens: a bad AS number or peer is one line at
// start and changes nothing.
func parseBGPFlags(cfg *bgp.Config, out **bgp.Controller, asn, routerID string, peers, advertise []string) error {
	if asn == "" {
		if len(peers) > 0 || len(advertise) > 0 || routerID != "" {
			return fmt.Errorf("agent: --bgp-peer, --bgp-advertise and --bgp-router-id need --bgp-as")
		}
		return nil
	}
	var err error
	if cfg.ASN, err = bgp.ParseASN(asn); err != nil {
		return fmt.Errorf("agent: --bgp-as: %w", err)
	}
	for _, p := range peers {
		pp, err := bgp.ParsePeer(p)
		if err != nil {
			return fmt.Errorf("agent: --bgp-peer: %w", err)
		}
		cfg.Peers = append(cfg.Peers, pp)
	}
	if routerID != "" {
		if cfg.RouterID, err = netip.ParseAddr(routerID); err != nil {
			return fmt.Errorf("agent: --bgp-router-id %q is not an IPv4 address", routerID)
		}
	}
	if err := bgp.ParseAdvertise(cfg, advertise); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	c, err := bgp.New(*cfg)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	*out = c
	return nil
}

// noHosts lets the agent's flags be checked by dns.New before any Manager exists.
type noHosts struct{}

func (noHosts) Hosts(context.Context) ([]dns.Net, []dns.Host, error) { return nil, nil, nil }

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
			speakers, err := bgp.ListStatus(ctx, cs)
			if err != nil {
				return err
			}
			return printNodes(g, nodes, speakers)
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

func printNodes(g *globals, nodes []cluster.Node, speakers []bgp.Status) error {
	if g.output == "json" {
		if nodes == nil {
			nodes = []cluster.Node{}
		}
		if len(speakers) == 0 {
			return writeJSON(g.stdout, nodes)
		}
		type withBGP struct {
			cluster.Node
			BGP *bgp.Status `json:"bgp,omitempty"`
		}
		out := make([]withBGP, len(nodes))
		for i, n := range nodes {
			out[i].Node = n
			for _, s := range speakers {
				if s.Node == n.Name {
					out[i].BGP = &s
				}
			}
		}
		return writeJSON(g.stdout, out)
	}
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].Name < nodes[j].Name })
	tw := newTable(g.stdout)
	fmt.Fprintln(tw, "NAME\tADDRESS\tREADY\tSUBNETS")
	for _, n := range nodes {
		fmt.Fprintf(tw, "%s\t%s\t%v\t%s\n", n.Name, n.Address, n.Ready, list(n.Subnets()))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	// Why a node cannot reach some of its peers (its agent's last SyncPeers error, e.g. a
	// routed-global peer off its underlay segment), one line per node and network.
	for _, n := range nodes {
		for _, name := range slices.Sorted(maps.Keys(n.Networks)) {
			if msg := n.Networks[name].Attrs[agent.AttrPeerError]; msg != "" {
				fmt.Fprintf(g.stdout, "%s, network %s: %s\n", n.Name, name, msg)
			}
		}
	}
	// Each listed node's BGP sessions (peer, state, routes advertised), as its speaker published them.
	sort.Slice(speakers, func(i, j int) bool { return speakers[i].Node < speakers[j].Node })
	for _, s := range speakers {
		if !slices.ContainsFunc(nodes, func(n cluster.Node) bool { return n.Name == s.Node }) {
			continue
		}
		for _, l := range s.Lines() {
			fmt.Fprintln(g.stdout, l)
		}
	}
	return nil
}

// leanBuild is false in PodBinary, which serves cluster stores itself.
const leanBuild = false
