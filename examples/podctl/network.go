package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/spf13/cobra"

	"github.com/netmgr/netmgr/netmgr"
)

func newNetworkCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "network", Short: "Manage networks"}
	groupCmd(c)
	c.AddCommand(newNetworkCreateCmd(g), newNetworkLsCmd(g), newNetworkInspectCmd(g), newNetworkRmCmd(g))
	return c
}

type networkFlags struct {
	driver   string
	subnets  []string
	gateways []string
	opts     []string
	internal bool
	mtu      int
}

// spec turns the flags into a NetworkSpec, rejecting malformed values before the library is called.
func (f *networkFlags) spec(name string) (netmgr.NetworkSpec, error) {
	s := netmgr.NetworkSpec{Name: name, Driver: f.driver, Internal: f.internal, MTU: f.mtu}
	for _, v := range f.subnets {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			return s, fmt.Errorf("invalid subnet %q: %s", v, parseReason(err))
		}
		s.Subnets = append(s.Subnets, p)
	}
	for _, v := range f.gateways {
		a, err := netip.ParseAddr(v)
		if err != nil {
			return s, fmt.Errorf("invalid gateway %q: %s", v, parseReason(err))
		}
		// One gateway per family (dual stack takes one of each); a second would silently win.
		for _, g := range s.Gateways {
			if g.Is4() == a.Is4() {
				return s, fmt.Errorf("--gateway given twice for %s: %s and %s", family(a), g, a)
			}
		}
		s.Gateways = append(s.Gateways, a)
	}
	if len(f.opts) > 0 {
		s.Options = map[string]string{}
		for _, o := range f.opts {
			k, v, err := keyValue(o)
			if err != nil {
				return s, fmt.Errorf("invalid --opt: %w", err)
			}
			if _, dup := s.Options[k]; dup {
				return s, fmt.Errorf("--opt %s given twice", k)
			}
			s.Options[k] = v
		}
	}
	if f.mtu < 0 {
		return s, fmt.Errorf("invalid --mtu %d: must not be negative", f.mtu)
	}
	return s, nil
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// parseReason strips the `netip.ParseX("input"): ` prefix that repeats what the caller already quotes.
func parseReason(err error) string {
	msg := err.Error()
	if before, after, ok := strings.Cut(msg, "\"): "); ok && strings.Contains(before, "Parse") {
		return after
	}
	return msg
}

func keyValue(s string) (string, string, error) {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return "", "", fmt.Errorf("%q is not KEY=VALUE", s)
	}
	return k, v, nil
}

func newNetworkCreateCmd(g *globals) *cobra.Command {
	var f networkFlags
	c := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a network",
		Args:  nameArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			spec, err := f.spec(args[0])
			if err != nil {
				return err
			}
			m, done, err := g.manager(cmd.Context())
			if err != nil {
				return err
			}
			defer done()
			n, err := m.CreateNetwork(cmd.Context(), spec)
			if err != nil {
				return err
			}
			if g.output == "json" {
				return writeJSON(g.stdout, n)
			}
			fmt.Fprintf(g.stdout, "%s %s\n", n.Name, n.ID)
			return nil
		},
	}
	fl := c.Flags()
	fl.StringVarP(&f.driver, "driver", "d", "bridge", "network driver")
	// StringArray, not StringSlice: values are not split on commas.
	fl.StringArrayVar(&f.subnets, "subnet", nil, "subnet in CIDR form, at most one per address family (repeatable)")
	fl.StringArrayVar(&f.gateways, "gateway", nil, "gateway of the subnet of the same family (repeatable)")
	fl.StringArrayVar(&f.opts, "opt", nil, "driver option KEY=VALUE (repeatable)")
	fl.BoolVar(&f.internal, "internal", false, "no traffic leaves the network")
	fl.IntVar(&f.mtu, "mtu", 0, "MTU of the network's interfaces (default: the driver's)")
	return c
}

func newNetworkLsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List networks",
		Args:    nameArgs(),
		RunE: g.withManager(func(ctx context.Context, m *netmgr.Manager, args []string) error {
			nets, err := m.Networks(ctx)
			if err != nil {
				return err
			}
			return printNetworks(g, nets)
		}),
	}
}

func newNetworkInspectCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "inspect NAME",
		Short: "Show a network",
		Args:  nameArgs("NAME"),
		RunE: g.withManager(func(ctx context.Context, m *netmgr.Manager, args []string) error {
			n, err := m.Network(ctx, args[0])
			if err != nil {
				return err
			}
			return printNetwork(g, n)
		}),
	}
}

func newNetworkRmCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "rm NAME...",
		Aliases: []string{"remove"},
		Short:   "Remove networks that no sandbox is attached to",
		Args:    minArgs("NAME"),
		RunE: g.withManager(func(ctx context.Context, m *netmgr.Manager, args []string) error {
			var errs []error
			for _, name := range args {
				errs = append(errs, m.DeleteNetwork(ctx, name))
			}
			return errors.Join(errs...)
		}),
	}
}
