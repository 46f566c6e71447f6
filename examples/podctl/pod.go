//go:build podctl_pod

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/pod"
	"github.com/netmgr/netmgr/netmgr/pod/containerd"
	"github.com/netmgr/netmgr/netmgr/pod/kube"
)

// rememberArgs is needed by the lean build only, which hands its arguments on to this one.
func rememberArgs([]string) {}

// ctdNamespace is the pod commands' --containerd-namespace; it is not a global flag because only they
// talk to containerd.
var ctdNamespace string

func newPodCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "pod", Short: "Run pods: a sandbox and its containers on containerd"}
	groupCmd(c)
	pf := c.PersistentFlags()
	pf.StringVar(&ctdNamespace, "containerd-namespace", containerd.DefaultNamespace, "containerd namespace of the pods' containers")
	addPullFlags(pf)
	c.AddCommand(newPodRunCmd(g), newPodLsCmd(g), newPodInspectCmd(g), newPodExecCmd(g), newPodLogsCmd(g),
		newPodRestartCmd(g), newPodRmCmd(g))
	return c
}

// containerdAddress is --containerd, else $CONTAINERD_ADDRESS, else containerd's default socket.
func (g *globals) containerdAddress() string {
	if g.containerd != "" {
		return g.containerd
	}
	if a := os.Getenv("CONTAINERD_ADDRESS"); a != "" {
		return a
	}
	return containerd.DefaultAddress
}

// pods opens a netmgr Manager and a containerd runtime and returns the pod Manager over both. The
// runtime is opened first, so that an unreachable containerd changes nothing.
func (g *globals) pods(ctx context.Context, opts ...pod.Option) (*pod.Manager, func(), error) {
	addr := g.containerdAddress()
	copts := []containerd.Option{containerd.WithNamespace(ctdNamespace), containerd.WithDir(filepath.Join(g.stateDir, "pods"))}
	popts, err := g.pullOptions()
	if err != nil {
		return nil, nil, err
	}
	copts = append(copts, popts...)
	var log *slog.Logger
	if g.debug {
		log = slog.New(slog.NewTextHandler(g.stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
		copts = append(copts, containerd.WithLogger(log))
		opts = append(opts, pod.WithLogger(log))
	}
	rt, err := containerd.New(ctx, addr, copts...)
	if err != nil {
		if errors.Is(err, pod.ErrUnavailable) {
			return nil, nil, fmt.Errorf("%w; start one with `make containerd` and `PATH=$PWD/bin:$PATH bin/containerd --address %s`, or give --containerd ADDR", err, addr)
		}
		return nil, nil, err
	}
	m, done, err := g.manager(ctx)
	if err != nil {
		rt.Close()
		return nil, nil, err
	}
	opts = append([]pod.Option{pod.WithPause(g.pauseBinary() != "")}, opts...)
	return pod.New(m, rt, opts...), func() { done(); rt.Close() }, nil
}

func newPodRunCmd(g *globals) *cobra.Command {
	var file string
	var networks []string
	c := &cobra.Command{
		Use:   "run -f POD.yaml [--network NET]...",
		Short: "Run a pod from a Kubernetes v1 Pod manifest",
		Long: "Run a pod from a Kubernetes v1 Pod manifest, read with Kubernetes' own types: metadata.name, labels\n" +
			"and annotations; spec.hostname, spec.restartPolicy and spec.containers[] with name, image,\n" +
			"imagePullPolicy, command, args, env and ports. A misspelt field is an error naming it, and any other\n" +
			"field is refused by name rather than dropped. An image that is an absolute path or rootfs:/path is\n" +
			"a local root filesystem; anything else is an image reference, pulled before anything is created as\n" +
			"imagePullPolicy says (Always, IfNotPresent, Never; Kubernetes' default when unset), over HTTPS\n" +
			"unless its registry is named with --insecure-registry. If a pull fails, nothing is made; if a\n" +
			"container fails to start, the pod is removed again.",
		Args: nameArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			if file == "" {
				return errors.New("pod run: -f POD.yaml is required")
			}
			var data []byte
			var err error
			if file == "-" {
				data, err = io.ReadAll(os.Stdin)
			} else {
				data, err = os.ReadFile(file)
			}
			if err != nil {
				return fmt.Errorf("read manifest: %w", err)
			}
			spec, err := kube.ParsePod(data)
			if err != nil {
				return fmt.Errorf("%s: %w", file, err)
			}
			if err := g.needKeeper(spec); err != nil {
				return err
			}
			for _, n := range networks {
				a, err := parseAttach(n)
				if err != nil {
					return err
				}
				spec.Networks = append(spec.Networks, a)
			}
			pm, done, err := g.pods(cmd.Context())
			if err != nil {
				return err
			}
			defer done()
			p, err := pm.Run(cmd.Context(), *spec)
			if err != nil {
				return err
			}
			if g.output == "json" {
				return writeJSON(g.stdout, toPodJSON(p))
			}
			return printPods(g, []*pod.Pod{p})
		},
	}
	c.Flags().StringVarP(&file, "file", "f", "", "the Pod manifest (YAML or JSON; - for stdin)")
	c.Flags().StringArrayVar(&networks, "network", nil, "attach the pod to a network: NET[,ip=IP][,mac=MAC][,ifname=IF] (repeatable)")
	return c
}

func newPodLsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List pods",
		Args:    nameArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			pm, done, err := g.pods(cmd.Context())
			if err != nil {
				return err
			}
			defer done()
			ps, err := pm.Pods(cmd.Context())
			if err != nil {
				return err
			}
			return printPods(g, ps)
		},
	}
}

func newPodInspectCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "inspect NAME",
		Short: "Show a pod: its sandbox and its containers",
		Args:  nameArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			pm, done, err := g.pods(cmd.Context())
			if err != nil {
				return err
			}
			defer done()
			p, err := pm.Pod(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return printPod(g, p)
		},
	}
}

func newPodExecCmd(g *globals) *cobra.Command {
	var interactive bool
	c := &cobra.Command{
		Use:   "exec NAME CONTAINER -- CMD [ARG...]",
		Short: "Run a command in a running container of a pod",
		Long:  "Run a command in a running container of a pod. podctl exits with the command's exit status.",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 3 || (len(args) == 3 && args[2] == "--") {
				return fmt.Errorf("%swant NAME CONTAINER -- CMD [ARG...]", where(cmd))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			name, ctr, argv := args[0], args[1], args[2:]
			if argv[0] == "--" {
				argv = argv[1:]
			}
			pm, done, err := g.pods(cmd.Context())
			if err != nil {
				return err
			}
			defer done()
			p := pod.ExecConfig{Args: argv, Stdout: g.stdout, Stderr: g.stderr}
			if interactive {
				p.Stdin = os.Stdin
			}
			code, err := pm.Exec(cmd.Context(), name, ctr, p)
			if err != nil {
				return err
			}
			if code != 0 {
				return exitStatus(code)
			}
			return nil
		},
	}
	c.Flags().BoolVarP(&interactive, "interactive", "i", false, "pass podctl's standard input to the command")
	c.Flags().SetInterspersed(false)
	return c
}

func newPodLogsCmd(g *globals) *cobra.Command {
	var follow bool
	c := &cobra.Command{
		Use:   "logs NAME CONTAINER",
		Short: "Print a container's output (stdout and stderr, across restarts)",
		Args:  nameArgs("NAME", "CONTAINER"),
		RunE: func(cmd *cobra.Command, args []string) error {
			pm, done, err := g.pods(cmd.Context())
			if err != nil {
				return err
			}
			defer done()
			return pm.Logs(cmd.Context(), args[0], args[1], g.stdout, follow)
		},
	}
	c.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output until interrupted")
	return c
}

func newPodRestartCmd(g *globals) *cobra.Command {
	var grace int
	c := &cobra.Command{
		Use:   "restart NAME CONTAINER",
		Short: "Restart one container of a pod; the pod keeps its sandbox and IP",
		Args:  nameArgs("NAME", "CONTAINER"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if grace < 0 {
				return fmt.Errorf("pod restart: --time %d: want seconds >= 0", grace)
			}
			pm, done, err := g.pods(cmd.Context(), pod.WithStopGrace(time.Duration(grace)*time.Second))
			if err != nil {
				return err
			}
			defer done()
			if err := pm.Restart(cmd.Context(), args[0], args[1]); err != nil {
				return err
			}
			p, err := pm.Pod(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if g.output == "json" {
				return writeJSON(g.stdout, toPodJSON(p))
			}
			return printPods(g, []*pod.Pod{p})
		},
	}
	c.Flags().IntVarP(&grace, "time", "t", 10, "seconds to wait after SIGTERM before SIGKILL")
	return c
}

func newPodRmCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "rm NAME...",
		Aliases: []string{"remove"},
		Short:   "Kill and remove pods: containers, tasks, sandbox, addresses (a missing pod is not an error)",
		Args:    minArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			pm, done, err := g.pods(cmd.Context())
			if err != nil {
				return err
			}
			defer done()
			var errs []error
			removed := []string{}
			for _, name := range args {
				if err := pm.Remove(cmd.Context(), name); err != nil {
					errs = append(errs, err)
				} else {
					removed = append(removed, name)
				}
			}
			if g.output == "json" {
				if err := writeJSON(g.stdout, map[string][]string{"removed": removed}); err != nil {
					errs = append(errs, err)
				}
			}
			return errors.Join(errs...)
		},
	}
}

// podJSON is a pod as podctl prints it: the sandbox's fields as `sandbox inspect` prints them (name,
// netns, attachments, ...), the pod's own labels, and its containers with their state.
type podJSON struct {
	sandboxJSON
	Labels        map[string]string     `json:"labels"`
	RestartPolicy pod.RestartPolicy     `json:"restart_policy"`
	Ready         *bool                 `json:"ready,omitempty"`
	ReadySince    time.Time             `json:"ready_since,omitzero"`
	IPs           []string              `json:"ips"`
	Containers    []pod.ContainerStatus `json:"containers"`
	Timing        *timingJSON           `json:"timing,omitempty"`
}

type timingJSON struct {
	NetworkMS    float64 `json:"network_ms"`
	ContainersMS float64 `json:"containers_ms"`
}

func toPodJSON(p *pod.Pod) podJSON {
	sb := p.Sandbox
	if sb == nil {
		sb = &netmgr.Sandbox{Name: p.Name}
	}
	out := podJSON{sandboxJSON: toJSON(sb), Labels: p.Labels, RestartPolicy: p.RestartPolicy(), IPs: p.IPs(), Containers: p.Containers}
	if out.Labels == nil {
		out.Labels = map[string]string{}
	}
	out.Ready, out.ReadySince = p.Ready(), p.ReadySince()
	if out.IPs == nil {
		out.IPs = []string{}
	}
	if out.Containers == nil {
		out.Containers = []pod.ContainerStatus{}
	}
	if p.Timing != nil {
		out.Timing = &timingJSON{NetworkMS: ms(p.Timing.Network), ContainersMS: ms(p.Timing.Containers)}
	}
	return out
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// podStatus summarises a pod: "Running" when every container runs, else how many do.
func podStatus(p *pod.Pod) string {
	if p.Sandbox == nil {
		return "Incomplete (pod rm removes it)"
	}
	running := 0
	for _, c := range p.Containers {
		if c.State == pod.StateRunning {
			running++
		}
	}
	if running == len(p.Containers) && running > 0 {
		return "Running"
	}
	return fmt.Sprintf("%d/%d running", running, len(p.Containers))
}

func printPods(g *globals, ps []*pod.Pod) error {
	if g.output == "json" {
		out := make([]podJSON, 0, len(ps))
		for _, p := range ps {
			out = append(out, toPodJSON(p))
		}
		return writeJSON(g.stdout, out)
	}
	tw := newTable(g.stdout)
	fmt.Fprintln(tw, "NAME\tSTATUS\tIPS\tCONTAINERS")
	for _, p := range ps {
		var cs []string
		for _, c := range p.Containers {
			cs = append(cs, c.Name+"="+string(c.State))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.Name, podStatus(p), list(p.IPs()), list(cs))
	}
	return tw.Flush()
}

func printPod(g *globals, p *pod.Pod) error {
	if g.output == "json" {
		return writeJSON(g.stdout, toPodJSON(p))
	}
	tw := newTable(g.stdout)
	fmt.Fprintf(tw, "Name:\t%s\n", p.Name)
	fmt.Fprintf(tw, "Status:\t%s\n", podStatus(p))
	fmt.Fprintf(tw, "Labels:\t%s\n", orDash(kvList(p.Labels)))
	fmt.Fprintf(tw, "Restart policy:\t%s\n", p.RestartPolicy())
	if r := p.Ready(); r != nil {
		fmt.Fprintf(tw, "Ready:\t%t\n", *r)
	}
	fmt.Fprintf(tw, "IPs:\t%s\n", list(p.IPs()))
	if p.Sandbox != nil {
		fmt.Fprintf(tw, "NetNS:\t%s\n", p.Sandbox.NetNS)
		if p.Sandbox.PausePID != 0 {
			fmt.Fprintf(tw, "Pause PID:\t%d\n", p.Sandbox.PausePID)
		}
		fmt.Fprintf(tw, "Networks:\t%s\n", addresses(p.Sandbox))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(g.stdout)
	tw = newTable(g.stdout)
	fmt.Fprintln(tw, "CONTAINER\tSTATE\tPID\tEXIT\tRESTARTS\tLAST EXIT\tREASON\tIMAGE")
	for _, c := range p.Containers {
		pid, exit, last := "-", "-", "-"
		if c.PID != 0 {
			pid = fmt.Sprint(c.PID)
		}
		if c.State == pod.StateStopped {
			exit = fmt.Sprint(c.ExitCode)
		}
		if c.LastExitCode != nil {
			last = fmt.Sprint(*c.LastExitCode)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", c.Name, c.State, pid, exit, c.Restarts, last, orDash(c.Reason), strings.TrimPrefix(c.Image, "rootfs:"))
	}
	return tw.Flush()
}
