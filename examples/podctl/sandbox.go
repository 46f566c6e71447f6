package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/sandbox"
)

func newSandboxCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "sandbox", Short: "Manage sandboxes (pinned network namespaces)"}
	groupCmd(c)
	c.AddCommand(newSandboxCreateCmd(g), newSandboxLsCmd(g), newSandboxInspectCmd(g), newSandboxRmCmd(g), newSandboxExecCmd(g),
		newSandboxAttachCmd(g), newSandboxDetachCmd(g))
	return c
}

// parseAttach parses NET[,ip=IP]...[,mac=MAC][,ifname=IF].
func parseAttach(s string) (netmgr.AttachSpec, error) {
	parts := strings.Split(s, ",")
	a := netmgr.AttachSpec{Network: parts[0]}
	if a.Network == "" {
		return a, fmt.Errorf("invalid --network %q: no network name", s)
	}
	for _, p := range parts[1:] {
		k, v, err := keyValue(p)
		if err != nil {
			return a, fmt.Errorf("invalid --network %q: %w", s, err)
		}
		switch k {
		case "ip":
			ip, err := netip.ParseAddr(v)
			if err != nil {
				return a, fmt.Errorf("invalid --network %q: ip %q: %s", s, v, parseReason(err))
			}
			a.IPs = append(a.IPs, ip)
		case "mac":
			if a.MAC != "" {
				return a, fmt.Errorf("invalid --network %q: mac given twice", s)
			}
			hw, err := net.ParseMAC(v)
			if err != nil {
				return a, fmt.Errorf("invalid --network %q: mac %q is not a MAC address", s, v)
			}
			a.MAC = hw.String()
		case "ifname":
			if a.IfName != "" {
				return a, fmt.Errorf("invalid --network %q: ifname given twice", s)
			}
			a.IfName = v
		default:
			return a, fmt.Errorf("invalid --network %q: unknown key %q (want ip, mac or ifname)", s, k)
		}
	}
	return a, nil
}

type sandboxFlags struct {
	networks []string
	join     string
	host     bool
	pause    bool
	labels   []string
	publish  []string
	aliases  []string
}

func (f *sandboxFlags) spec(name string) (netmgr.SandboxSpec, error) {
	s := netmgr.SandboxSpec{Name: name, Join: f.join, Host: f.host, Pause: f.pause, Aliases: f.aliases}
	for _, n := range f.networks {
		a, err := parseAttach(n)
		if err != nil {
			return s, err
		}
		s.Networks = append(s.Networks, a)
	}
	for _, p := range f.publish {
		pm, err := netmgr.ParsePublish(p)
		if err != nil {
			return s, fmt.Errorf("--publish: %w", err)
		}
		s.Publish = append(s.Publish, pm...)
	}
	if len(f.labels) > 0 {
		s.Labels = map[string]string{}
		for _, l := range f.labels {
			k, v, err := keyValue(l)
			if err != nil {
				return s, fmt.Errorf("invalid --label: %w", err)
			}
			s.Labels[k] = v
		}
	}
	return s, nil
}

func newSandboxCreateCmd(g *globals) *cobra.Command {
	var f sandboxFlags
	c := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a sandbox",
		Args:  nameArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			spec, err := f.spec(args[0])
			if err != nil {
				return err
			}
			if spec.Pause && g.pauseBinary() == "" {
				return errors.New("--pause: no pause binary found next to podctl; give --pause-binary PATH")
			}
			m, done, err := g.manager(cmd.Context())
			if err != nil {
				return err
			}
			defer done()
			s, err := m.CreateSandbox(cmd.Context(), spec)
			if err != nil {
				return err
			}
			if g.output == "json" {
				return printSandbox(g, s)
			}
			return printSandboxes(g, []*netmgr.Sandbox{s})
		},
	}
	fl := c.Flags()
	fl.StringArrayVar(&f.networks, "network", nil, "attach to a network: NET[,ip=IP][,ip=IP6][,mac=MAC][,ifname=IF] (repeatable)")
	fl.StringVar(&f.join, "join", "", "share the network namespace of this sandbox")
	fl.BoolVar(&f.host, "host", false, "use the host's network namespace")
	fl.BoolVar(&f.pause, "pause", false, "start a pause process holding the namespace (see --pause-binary)")
	fl.StringArrayVar(&f.labels, "label", nil, "label KEY=VALUE (repeatable)")
	fl.StringArrayVar(&f.aliases, "alias", nil, "another DNS name of the sandbox on its networks (repeatable)")
	fl.StringArrayVarP(&f.publish, "publish", "p", nil, "publish a port on the host: [HOSTIP:]HOSTPORT:PORT[/tcp|udp], or equal ranges 8000-8010:80-90 (repeatable)")
	return c
}

func newSandboxLsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List sandboxes",
		Args:    nameArgs(),
		RunE: g.withManager(func(ctx context.Context, m *netmgr.Manager, args []string) error {
			sbs, err := m.Sandboxes(ctx)
			if err != nil {
				return err
			}
			return printSandboxes(g, sbs)
		}),
	}
}

func newSandboxInspectCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "inspect NAME",
		Short: "Show a sandbox",
		Args:  nameArgs("NAME"),
		RunE: g.withManager(func(ctx context.Context, m *netmgr.Manager, args []string) error {
			s, err := m.Sandbox(ctx, args[0])
			if err != nil {
				return err
			}
			return printSandbox(g, s)
		}),
	}
}

func newSandboxRmCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "rm NAME...",
		Aliases: []string{"remove"},
		Short:   "Remove sandboxes (a missing one is not an error)",
		Args:    minArgs("NAME"),
		RunE: g.withManager(func(ctx context.Context, m *netmgr.Manager, args []string) error {
			var errs []error
			for _, name := range args {
				errs = append(errs, m.DeleteSandbox(ctx, name))
			}
			return errors.Join(errs...)
		}),
	}
}

// newSandboxAttachCmd adds a running sandbox to one more network (docker network connect).
func newSandboxAttachCmd(g *globals) *cobra.Command {
	var network string
	c := &cobra.Command{
		Use:   "attach NAME --network NET[,ip=IP][,mac=MAC][,ifname=IF]",
		Short: "Attach a sandbox to one more network",
		Args:  nameArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			// Bad input is refused before the Manager (and its state) is opened.
			as, err := parseAttach(network)
			if err != nil {
				return err
			}
			return g.withManager(func(ctx context.Context, m *netmgr.Manager, args []string) error {
				return attachAndPrint(ctx, g, m, args[0], as)
			})(cmd, args)
		},
	}
	c.Flags().StringVar(&network, "network", "", "network to attach to, with optional ip=, mac=, ifname=")
	_ = c.MarkFlagRequired("network")
	return c
}

func attachAndPrint(ctx context.Context, g *globals, m *netmgr.Manager, name string, as netmgr.AttachSpec) error {
	if _, err := m.Attach(ctx, name, as); err != nil {
		return err
	}
	s, err := m.Sandbox(ctx, name)
	if err != nil {
		return err
	}
	return printSandbox(g, s)
}

// newSandboxDetachCmd removes a sandbox from one network (docker network disconnect); a sandbox not on
// that network is not an error.
func newSandboxDetachCmd(g *globals) *cobra.Command {
	var network string
	c := &cobra.Command{
		Use:   "detach NAME --network NET",
		Short: "Detach a sandbox from one network",
		Args:  nameArgs("NAME"),
		RunE: g.withManager(func(ctx context.Context, m *netmgr.Manager, args []string) error {
			return m.Detach(ctx, args[0], network)
		}),
	}
	c.Flags().StringVar(&network, "network", "", "network to detach from")
	_ = c.MarkFlagRequired("network")
	return c
}

func newSandboxExecCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "exec NAME -- CMD [ARG...]",
		Short: "Run a command in a sandbox's network namespace",
		Long: "Run a command in a sandbox's network namespace, with podctl's stdin, stdout and stderr.\n" +
			"podctl exits with the command's exit status (128+N if signal N killed it).",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 2 || (len(args) == 2 && args[1] == "--") {
				return fmt.Errorf("%swant NAME -- CMD [ARG...]", where(cmd))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			name, argv := args[0], args[1:]
			if argv[0] == "--" {
				argv = argv[1:]
			}
			m, done, err := g.manager(cmd.Context())
			if err != nil {
				return err
			}
			s, err := m.Sandbox(cmd.Context(), name)
			if err != nil {
				done()
				return err
			}
			path := s.NetNS
			if s.Mode == netmgr.ModeHost {
				// The recorded path may name the namespace of the process that created the sandbox;
				// the host is this Manager's host namespace.
				path = m.HostNetNS()
			}
			ns, err := sandbox.Open(path)
			done() // nothing of the Manager is needed while the command runs
			if err != nil {
				return fmt.Errorf("exec in sandbox %q: %w", name, err)
			}
			return execIn(ns, argv, g)
		},
	}
	// Everything after NAME belongs to the command, so "--" is optional and CMD's flags are not ours.
	c.Flags().SetInterspersed(false)
	return c
}

// execIn starts argv on a thread inside ns (a forked process inherits the thread's namespace), waits for
// it outside, and turns its exit status into podctl's.
func execIn(ns *sandbox.NetNS, argv []string, g *globals) error {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, g.stdout, g.stderr
	err := ns.Do(cmd.Start)
	ns.Close()
	if err != nil {
		return err
	}
	// SIGINT from a terminal reaches the command through its process group already; pass on the
	// signals that were sent to podctl alone.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGHUP)
	stop := make(chan struct{})
	defer close(stop)
	defer signal.Stop(sigs)
	go func() {
		for {
			select {
			case s := <-sigs:
				_ = cmd.Process.Signal(s)
			case <-stop:
				return
			}
		}
	}()
	err = cmd.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return exitStatus(128 + int(ws.Signal()))
		}
		return exitStatus(ee.ExitCode())
	}
	return err
}
