// Command podctl is the example command line of netmgr: it creates networks and sandboxes, runs
// commands inside sandboxes and repairs state, talking to the library directly (there is no daemon).
// Each invocation is one process; several may run at once, the library's file locks keep them apart.
//
// Every error is printed as one line, "podctl: <error>", on stderr, and the exit status is 1; `sandbox
// exec` exits with the status of the command it ran.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	// Every driver: `network create --driver D` offers all of them.
	_ "github.com/netmgr/netmgr/drivers/all"
	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/store"
)

// version is set at build time: go build -ldflags "-X main.version=v1.2.3".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// exitStatus is returned by a command that wants podctl to exit with that status and print nothing
// (sandbox exec passing on its command's status).
type exitStatus int

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

func run(args []string, stdout, stderr io.Writer) int {
	g := &globals{stdout: stdout, stderr: stderr}
	defer g.stopSignals()
	root := newRootCmd(g, args)
	root.SetArgs(args)
	rememberArgs(args)
	err := root.ExecuteContext(context.Background())
	var st exitStatus
	switch {
	case err == nil:
		return 0
	case errors.As(err, &st):
		return int(st)
	default:
		fmt.Fprintf(stderr, "podctl: %s\n", oneLine(err))
		return 1
	}
}

// oneLine flattens a multi-line error (errors.Join, cobra's hints) into one line.
func oneLine(err error) string {
	var parts []string
	for _, l := range strings.Split(err.Error(), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, "; ")
}

// globals holds the persistent flags.
type globals struct {
	stateDir   string
	runDir     string
	storeURL   string
	node       string
	containerd string
	pauseBin   string
	output     string
	debug      bool

	// clusterStore and runtimeStore are open while a Manager on a cluster store is; offlineErr is set
	// when the cluster store did not answer and clusterStore stands in for it (see offline).
	clusterStore, runtimeStore store.Store
	offlineErr                 error

	stdout io.Writer
	stderr io.Writer
	// stop ends the SIGINT and SIGTERM handling that watchSignals started, if it did.
	stop context.CancelFunc
}

// noSignals annotates a command that needs no cancellation on SIGINT or SIGTERM (version): it does not
// pay for the signal handling, whose set-up starts a goroutine on a thread of its own, about a tenth
// of podctl's start-up (bench/startup).
const noSignals = "podctl/no-signals"

// watchSignals makes SIGINT and SIGTERM cancel cmd's context, so that an operation in progress rolls
// back and the Manager's locks are released, unless cmd is annotated noSignals.
func (g *globals) watchSignals(cmd *cobra.Command) {
	if cmd.Annotations[noSignals] != "" || g.stop != nil {
		return
	}
	ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
	cmd.SetContext(ctx)
	g.stop = stop
}

func (g *globals) stopSignals() {
	if g.stop != nil {
		g.stop()
	}
}

// topCommand builds one of podctl's top-level commands.
type topCommand struct {
	name string
	make func(*globals) *cobra.Command
}

var topCommands = []topCommand{
	{"network", newNetworkCmd}, {"sandbox", newSandboxCmd}, {"pod", newPodCmd}, {"agent", newAgentCmd},
	{"node", newNodeCmd}, {"service", newServiceCmd}, {"gc", newGCCmd}, {"version", newVersionCmd},
}

// commandIn returns the top-level command args name: its first argument that is neither a flag nor
// the value of one ("--state-dir DIR"; takesValue tells which flags, "--name" or "-x", take one), or ""
// when there is none.
func commandIn(args []string, takesValue func(flag string) bool) string {
	for i := 0; i < len(args); i++ {
		switch a := args[i]; {
		case a == "--":
			return ""
		case strings.HasPrefix(a, "--") && !strings.Contains(a, "="), strings.HasPrefix(a, "-") && len(a) == 2:
			if takesValue(a) {
				i++
			}
		case strings.HasPrefix(a, "-"): // --name=value, -xvalue
		default:
			return a
		}
	}
	return ""
}

// newRootCmd builds the command tree for args. A process runs one command, so when args name one of
// the top-level commands only that one's subtree is built, and cobra's completion command is left
// out: building all of them took about a twentieth of podctl's start-up (bench/startup). Anything
// else (help, completion, a mistyped command, which gets suggestions) builds the whole tree.
func newRootCmd(g *globals, args []string) *cobra.Command {
	stdout, stderr := g.stdout, g.stderr
	root := &cobra.Command{
		Use:           "podctl",
		Short:         "Manage netmgr networks and sandboxes",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			if g.output != "table" && g.output != "json" {
				return fmt.Errorf("invalid output format %q: want table or json", g.output)
			}
			g.watchSignals(cmd)
			return g.absPaths()
		},
	}
	groupCmd(root)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return fmt.Errorf("%s%w", where(cmd), err)
	})
	pf := root.PersistentFlags()
	pf.StringVar(&g.stateDir, "state-dir", netmgr.DefaultStateDir, "directory of persistent state")
	pf.StringVar(&g.runDir, "run-dir", netmgr.DefaultRunDir, "directory of runtime state (namespace pins, locks)")
	pf.StringVar(&g.storeURL, "store", "", "state store URL: bolt://PATH, or a cluster's etcd://HOST:PORT[,HOST:PORT...][?prefix=/x&cacert=F&cert=F&key=F] (default: the bbolt file in --state-dir)")
	pf.StringVar(&g.node, "node", "", "name of this node in a store several hosts share (default: the host name)")
	pf.StringVar(&g.containerd, "containerd", "", "containerd socket address")
	pf.StringVar(&g.pauseBin, "pause-binary", "", "pause binary for sandboxes created with --pause (default: pause next to podctl)")
	pf.StringVarP(&g.output, "output", "o", "table", "output format: table or json")
	pf.BoolVar(&g.debug, "debug", false, "log debug messages to stderr")

	name := commandIn(args, func(flag string) bool {
		f := pf.Lookup(strings.TrimPrefix(flag, "--"))
		if !strings.HasPrefix(flag, "--") {
			f = pf.ShorthandLookup(flag[1:])
		}
		return f != nil && f.NoOptDefVal == ""
	})
	if i := slices.IndexFunc(topCommands, func(c topCommand) bool { return c.name == name }); i >= 0 {
		root.AddCommand(topCommands[i].make(g))
		root.CompletionOptions.DisableDefaultCmd = true
		return root
	}
	for _, c := range topCommands {
		root.AddCommand(c.make(g))
	}
	return root
}

// absPaths makes --state-dir, --run-dir and a bolt:// path absolute: the library records paths under
// them (a sandbox's netns pin), and a relative one means another file to a podctl run elsewhere.
func (g *globals) absPaths() error {
	for _, p := range []*string{&g.stateDir, &g.runDir} {
		if *p == "" {
			continue
		}
		abs, err := filepath.Abs(*p)
		if err != nil {
			return err
		}
		*p = abs
	}
	if path, ok := strings.CutPrefix(g.storeURL, "bolt://"); ok && path != "" {
		abs, err := filepath.Abs(path)
		if err != nil {
			return err
		}
		g.storeURL = "bolt://" + abs
	}
	return nil
}

// groupCmd makes a command that only holds subcommands fail on a missing or unknown subcommand,
// instead of printing its help and exiting 0.
func groupCmd(c *cobra.Command) {
	c.SuggestionsMinimumDistance = 2
	c.Args = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return nil
		}
		msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
		if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
			msg += fmt.Sprintf(" (did you mean %s?)", strings.Join(s, ", "))
		}
		return errors.New(msg)
	}
	c.RunE = func(cmd *cobra.Command, args []string) error {
		return fmt.Errorf("%smissing command (see %s --help)", where(cmd), cmd.CommandPath())
	}
}

// where prefixes a usage error with the subcommand it is about ("network create: "); main adds "podctl: ".
func where(cmd *cobra.Command) string {
	if !cmd.HasParent() {
		return ""
	}
	return strings.TrimPrefix(cmd.CommandPath(), cmd.Root().Name()+" ") + ": "
}

// nameArgs requires exactly n positional arguments, named in the message.
func nameArgs(names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != len(names) {
			if len(names) == 0 {
				return fmt.Errorf("%sunexpected argument %q", where(cmd), args[0])
			}
			return fmt.Errorf("%swant %s, got %d argument(s)", where(cmd), strings.Join(names, " "), len(args))
		}
		return nil
	}
}

// minArgs requires at least one positional argument.
func minArgs(name string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return fmt.Errorf("%swant at least one %s", where(cmd), name)
		}
		return nil
	}
}

// manager opens a Manager as the global flags say and returns a function that closes it.
// withManager makes a command's RunE that opens the Manager, runs fn and closes the Manager.
func (g *globals) withManager(fn func(ctx context.Context, m *netmgr.Manager, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		m, done, err := g.manager(cmd.Context())
		if err != nil {
			return err
		}
		defer done()
		return fn(cmd.Context(), m, args)
	}
}

func (g *globals) manager(ctx context.Context) (*netmgr.Manager, func(), error) {
	opts := []netmgr.Option{netmgr.WithStateDir(g.stateDir), netmgr.WithRunDir(g.runDir), netmgr.WithLogger(g.logger())}
	if g.node != "" {
		opts = append(opts, netmgr.WithNode(g.node))
	}
	if pb := g.pauseBinary(); pb != "" {
		opts = append(opts, netmgr.WithPauseBinary(pb))
	}
	var st store.Store
	switch {
	case g.storeURL == "":
	case strings.HasPrefix(g.storeURL, "bolt://"):
		path := strings.TrimPrefix(g.storeURL, "bolt://")
		if path == "" {
			return nil, nil, fmt.Errorf("invalid store URL %q: no file path", g.storeURL)
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, nil, fmt.Errorf("open store: %w", err)
		}
		b, err := store.OpenBolt(path)
		if err != nil {
			return nil, nil, err
		}
		st = b
		opts = append(opts, netmgr.WithStore(b))
	default:
		// A cluster store (etcd://): networks there, this node's runtime state in its own run dir, so
		// that a sandbox on a joined network needs nothing but local state.
		if !strings.HasPrefix(g.storeURL, "etcd://") {
			return nil, nil, fmt.Errorf("store URL %q: unknown scheme (want bolt://PATH or etcd://HOST:PORT[,HOST:PORT...])", g.storeURL)
		}
		cs, err := g.openClusterStore(ctx)
		if err != nil {
			off, ok := g.offline(err)
			if !ok {
				return nil, nil, err
			}
			g.offlineErr = err
			g.logger().Warn("working from this node's own state: sandboxes on networks it joined work, anything else needs the cluster store", "error", err)
			cs = off
		}
		if err := os.MkdirAll(g.runDir, 0o755); err != nil {
			cs.Close()
			return nil, nil, fmt.Errorf("create run dir: %w", err)
		}
		rt, err := netmgr.OpenRuntimeStore(ctx, filepath.Join(g.runDir, "runtime.db"))
		if err != nil {
			cs.Close()
			return nil, nil, err
		}
		st, g.clusterStore, g.runtimeStore = cs, cs, rt
		opts = append(opts, netmgr.WithStores(cs, rt))
	}
	m, err := netmgr.New(ctx, opts...)
	if err != nil {
		g.closeStores(st)
		return nil, nil, err
	}
	return m, func() {
		m.Close()
		g.closeStores(st)
	}, nil
}

func (g *globals) closeStores(st store.Store) {
	if st != nil {
		st.Close()
	}
	if g.runtimeStore != nil {
		g.runtimeStore.Close()
	}
}

// logger prints warnings (a repair of an interrupted operation, a long wait for another one) on stderr,
// one line each and without timestamps; --debug adds everything else.
func (g *globals) logger() *slog.Logger { return g.leveledLogger(slog.LevelWarn) }

func (g *globals) leveledLogger(level slog.Level) *slog.Logger {
	if g.debug {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(g.stderr, &slog.HandlerOptions{Level: level, ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
		if len(groups) == 0 && a.Key == slog.TimeKey && !g.debug {
			return slog.Attr{}
		}
		return a
	}}))
}

// pauseBinary is --pause-binary, else a pause binary next to the podctl executable, else "".
func (g *globals) pauseBinary() string {
	if g.pauseBin != "" {
		return g.pauseBin
	}
	exe, err := os.Executable()
	if err != nil {
		return ""
	}
	p := filepath.Join(filepath.Dir(exe), "pause")
	if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
		return p
	}
	return ""
}

func newVersionCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:         "version",
		Short:       "Print the version",
		Args:        nameArgs(),
		Annotations: map[string]string{noSignals: "true"},
		RunE: func(cmd *cobra.Command, args []string) error {
			if g.output == "json" {
				return writeJSON(g.stdout, map[string]string{"version": version, "go": runtime.Version()})
			}
			fmt.Fprintf(g.stdout, "podctl %s (%s %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return nil
		},
	}
}

func newGCCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "gc",
		Short: "Repair interrupted operations and remove leaked namespaces, addresses and interfaces",
		Args:  nameArgs(),
		RunE: g.withManager(func(ctx context.Context, m *netmgr.Manager, args []string) error {
			rep, rerr := m.Recover(ctx)
			if rep != nil {
				if err := printReport(g, rep); err != nil {
					return errors.Join(rerr, err)
				}
			}
			return rerr
		}),
	}
}
