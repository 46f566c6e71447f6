package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/service"
)

// Services live in the network store (the state file on one host, etcd in a cluster); `podctl
// agent` programs them on each host.

func newServiceCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "service", Aliases: []string{"svc"}, Short: "Manage services (cluster IPs and node ports, programmed by podctl agent)"}
	groupCmd(c)
	c.AddCommand(newServiceCreateCmd(g), newServiceLsCmd(g), newServiceInspectCmd(g), newServiceRmCmd(g), newServiceCIDRCmd(g))
	return c
}

type serviceFlags struct {
	selector  string
	ports     []string
	typ       string
	nodePorts []string
	clusterIP string
	affinity  string
	timeout   time.Duration
	policy    string
}

// spec turns the flags into a Spec, refusing malformed values before anything is opened.
func (f *serviceFlags) spec(name string) (service.Spec, error) {
	s := service.Spec{Name: name, Type: f.typ, SessionAffinity: f.affinity, AffinityTimeout: f.timeout, ExternalTrafficPolicy: f.policy}
	sel, err := service.ParseSelector(f.selector)
	if err != nil {
		return s, err
	}
	s.Selector = sel
	if len(f.ports) == 0 {
		return s, fmt.Errorf("%w: a service needs at least one --port PORT[:TARGETPORT][/tcp|udp]", netmgr.ErrInvalid)
	}
	for _, v := range f.ports {
		p, err := service.ParsePort(v)
		if err != nil {
			return s, err
		}
		s.Ports = append(s.Ports, p)
	}
	if len(f.nodePorts) > len(s.Ports) {
		return s, fmt.Errorf("%w: %d --node-port for %d --port (the Nth node port goes to the Nth port)", netmgr.ErrInvalid, len(f.nodePorts), len(s.Ports))
	}
	for i, v := range f.nodePorts {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 65535 {
			return s, fmt.Errorf("%w: --node-port %q is not a port number", netmgr.ErrInvalid, v)
		}
		s.Ports[i].NodePort = uint16(n)
		if s.Type == "" {
			s.Type = service.NodePort
		}
	}
	if f.clusterIP != "" {
		a, err := netip.ParseAddr(f.clusterIP)
		if err != nil {
			return s, fmt.Errorf("%w: --cluster-ip %q: %s", netmgr.ErrInvalid, f.clusterIP, parseReason(err))
		}
		s.ClusterIP = a
	}
	return s, nil
}

func newServiceCreateCmd(g *globals) *cobra.Command {
	var f serviceFlags
	c := &cobra.Command{
		Use:   "create NAME --selector K=V[,K=V] --port PORT[:TARGETPORT][/tcp|udp]...",
		Short: "Create a service: a cluster IP (and node ports) in front of the sandboxes its selector matches",
		Args:  nameArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			spec, err := f.spec(args[0])
			if err != nil {
				return fmt.Errorf("create service %q: %w", args[0], err)
			}
			return g.withManager(func(ctx context.Context, m *netmgr.Manager, _ []string) error {
				s, err := service.New(m.NetworkStore()).Create(ctx, spec)
				if err != nil {
					return err
				}
				if g.output == "json" {
					return writeJSON(g.stdout, serviceView{Service: s, Endpoints: []endpointView{}})
				}
				fmt.Fprintf(g.stdout, "%s %s %s\n", s.Name, s.ClusterIP, portList(s))
				return nil
			})(cmd, args)
		},
	}
	fl := c.Flags()
	fl.StringVar(&f.selector, "selector", "", "labels of the sandboxes behind the service, K=V[,K=V] (all must match)")
	fl.StringArrayVar(&f.ports, "port", nil, "PORT[:TARGETPORT][/tcp|udp] (repeatable)")
	fl.StringVar(&f.typ, "type", "", "ClusterIP (default) or NodePort")
	fl.StringArrayVar(&f.nodePorts, "node-port", nil, "node port (30000-32767) of the Nth --port (repeatable; default: a free one)")
	fl.StringVar(&f.clusterIP, "cluster-ip", "", "cluster IP from the service CIDR (default: a free one)")
	fl.StringVar(&f.affinity, "session-affinity", "", "ClientIP: a client's connections go to one endpoint")
	fl.DurationVar(&f.timeout, "session-affinity-timeout", 0, "how long ClientIP affinity lasts without traffic (default 3h)")
	fl.StringVar(&f.policy, "external-traffic-policy", "", "Cluster (default: any node's endpoints, client masqueraded) or Local (only this node's, client kept)")
	return c
}

type endpointView struct {
	IP      netip.Addr `json:"ip"`
	Node    string     `json:"node"`
	Sandbox string     `json:"sandbox"`
}

type serviceView struct {
	*service.Service
	Endpoints []endpointView `json:"endpoints"`
}

// endpointsOf lists the published endpoints that s selects.
func endpointsOf(s *service.Service, eps []*service.Endpoint) []endpointView {
	out := []endpointView{}
	for _, e := range eps {
		if !s.Matches(e.Labels) {
			continue
		}
		for _, a := range e.Addrs {
			out = append(out, endpointView{IP: a.IP, Node: e.Node, Sandbox: e.Sandbox})
			break
		}
	}
	return out
}

func portList(s *service.Service) string {
	var ps []string
	for _, p := range s.Ports {
		v := fmt.Sprintf("%d", p.Port)
		if p.NodePort != 0 {
			v += fmt.Sprintf(":%d", p.NodePort)
		}
		if p.TargetPort != p.Port {
			v += fmt.Sprintf("->%d", p.TargetPort)
		}
		ps = append(ps, v+"/"+p.Protocol)
	}
	return strings.Join(ps, ",")
}

func selectorString(sel map[string]string) string {
	var kv []string
	for k, v := range sel {
		kv = append(kv, k+"="+v)
	}
	sort.Strings(kv)
	return strings.Join(kv, ",")
}

func newServiceLsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "ls", Aliases: []string{"list"}, Short: "List services", Args: nameArgs(),
		RunE: g.withManager(func(ctx context.Context, m *netmgr.Manager, args []string) error {
			r := service.New(m.NetworkStore())
			svcs, err := r.List(ctx)
			if err != nil {
				return err
			}
			eps, err := r.Endpoints(ctx)
			if err != nil {
				return err
			}
			if g.output == "json" {
				out := make([]serviceView, 0, len(svcs))
				for _, s := range svcs {
					out = append(out, serviceView{Service: s, Endpoints: endpointsOf(s, eps)})
				}
				return writeJSON(g.stdout, out)
			}
			tw := newTable(g.stdout)
			fmt.Fprintln(tw, "NAME\tTYPE\tCLUSTER-IP\tPORTS\tSELECTOR\tENDPOINTS")
			for _, s := range svcs {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\n", s.Name, s.Type, s.ClusterIP, portList(s), selectorString(s.Selector), len(endpointsOf(s, eps)))
			}
			return tw.Flush()
		}),
	}
}

func newServiceInspectCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "inspect NAME", Short: "Show a service and its endpoints (as the nodes' agents publish them)", Args: nameArgs("NAME"),
		RunE: g.withManager(func(ctx context.Context, m *netmgr.Manager, args []string) error {
			r := service.New(m.NetworkStore())
			s, err := r.Get(ctx, args[0])
			if err != nil {
				return fmt.Errorf("inspect service %q: %w", args[0], err)
			}
			eps, err := r.Endpoints(ctx)
			if err != nil {
				return err
			}
			return writeJSON(g.stdout, serviceView{Service: s, Endpoints: endpointsOf(s, eps)})
		}),
	}
}

func newServiceRmCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "rm NAME...", Aliases: []string{"remove"}, Short: "Remove services", Args: minArgs("NAME"),
		RunE: g.withManager(func(ctx context.Context, m *netmgr.Manager, args []string) error {
			r := service.New(m.NetworkStore())
			var errs []error
			for _, name := range args {
				errs = append(errs, r.Delete(ctx, name))
			}
			return errors.Join(errs...)
		}),
	}
}

func newServiceCIDRCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "cidr [CIDR...]", Short: "Show, or set, the store's service CIDRs (default 10.96.0.0/12; one per family)",
		RunE: g.withManager(func(ctx context.Context, m *netmgr.Manager, args []string) error {
			r := service.New(m.NetworkStore())
			if len(args) > 0 {
				var cidrs []netip.Prefix
				for _, a := range args {
					p, err := netip.ParsePrefix(a)
					if err != nil {
						return fmt.Errorf("%w: service CIDR %q: %s", netmgr.ErrInvalid, a, parseReason(err))
					}
					cidrs = append(cidrs, p)
				}
				if err := r.SetCIDRs(ctx, cidrs...); err != nil {
					return err
				}
			}
			cfg, err := r.Config(ctx)
			if err != nil {
				return err
			}
			if g.output == "json" {
				return writeJSON(g.stdout, cfg)
			}
			var out []string
			for _, c := range cfg.CIDRs {
				out = append(out, c.String())
			}
			fmt.Fprintln(g.stdout, strings.Join(out, " "))
			return nil
		}),
	}
}
