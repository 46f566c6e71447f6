// Command netmgr-nri is a containerd NRI plugin that gives CRI pods more networks than the one CNI
// sets up, as Multus does for Kubernetes: the pod annotation k8s.v1.cni.cncf.io/networks names netmgr
// networks ("storage,lan2", or JSON: [{"name": "storage", "interface": "st0", "ips": ["10.9.0.5/24"],
// "mac": "02:00:00:00:00:05"}]), and each becomes one more interface in the pod's network namespace
// (net1, net2, ... unless "interface" says otherwise), with its address, MAC and routes but no
// default route: the primary network (netmgr-cni or any CNI) keeps that.
//
// Hooks: RunPodSandbox (after CNI set the namespace up) attaches; a bad annotation fails the pod with
// one line saying what to change, and nothing is left attached. StopPodSandbox (before CNI tears
// down) and RemovePodSandbox detach, idempotently, also when the namespace is gone. Synchronize, at
// every connect, attaches what running pods lack and removes what pods that are gone left. Each pod
// is one netmgr sandbox (an existing-namespace one, named nri-HASH), labelled with the pod's labels,
// its ID, NAMESPACE/NAME, UID and primary IPs (see the Label constants), so that anything selecting
// netmgr sandboxes by label (services) finds CRI pods.
//
// It runs connected to containerd's NRI socket (--nri-socket), reconnecting when containerd
// restarts, or pre-registered: containerd starts it from its plugin_path as NN-netmgr (name and index
// from the file name) and hands it, at Configure, plugin_config_path's NN-netmgr.conf, which holds
// the same flags as the command line, one or more a line (--state-dir=DIR --run-dir=DIR ...); the
// state is opened then. It must run in the host's network
// namespace, where netmgr puts host-side plumbing, with netmgr's state (the same --state-dir,
// --run-dir, --store and --node as podctl and netmgr-cni).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"

	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/store"
	"github.com/netmgr/netmgr/netmgr/store/etcd"

	// Every driver: an annotation may name a network of any of them.
	_ "github.com/netmgr/netmgr/drivers/all"
)

// Version is set at build time with -ldflags "-X main.Version=...".
var Version = "dev"

type options struct {
	socket, name, idx          string
	stateDir, runDir, storeURL string
	node, logFile, logLevel    string
	version                    bool
	preRegistered              bool // started by containerd (NRI_PLUGIN_SOCKET)
	reconnectEvery             time.Duration
	sweepEvery                 time.Duration
}

func flags(o *options, name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.StringVar(&o.socket, "nri-socket", api.DefaultSocketPath, "containerd's NRI socket")
	fs.StringVar(&o.name, "name", "netmgr", "plugin name to register (pre-registered: from the file name NN-netmgr)")
	fs.StringVar(&o.idx, "idx", "50", "plugin index, two digits: the order among NRI plugins")
	fs.StringVar(&o.stateDir, "state-dir", netmgr.DefaultStateDir, "netmgr state directory (networks)")
	fs.StringVar(&o.runDir, "run-dir", netmgr.DefaultRunDir, "netmgr run directory (sandboxes, pins)")
	fs.StringVar(&o.storeURL, "store", "", "state store URL: bolt://PATH or etcd://HOST:PORT[,...][?...] (default: the bbolt file in --state-dir)")
	fs.StringVar(&o.node, "node", "", "this node's name on a shared store (default: the host name)")
	fs.StringVar(&o.logFile, "log-file", "", "write the log (JSON lines) to this file instead of stderr")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.DurationVar(&o.reconnectEvery, "reconnect", time.Second, "wait between attempts to (re)connect to the NRI socket")
	fs.DurationVar(&o.sweepEvery, "sweep", 10*time.Second, "how often to detach pods whose network namespace is gone (stops containerd did not report); 0: never")
	fs.BoolVar(&o.version, "version", false, "print the version and exit")
	return fs
}

func main() {
	o := &options{}
	fs := flags(o, "netmgr-nri")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if o.version {
		fmt.Println("netmgr-nri", Version)
		return
	}
	o.preRegistered = os.Getenv(api.PluginSocketEnvVar) != ""
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "netmgr-nri:", strings.Join(strings.Fields(err.Error()), " "))
		os.Exit(1)
	}
}

func run(o *options) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	log, closeLog, err := o.logger()
	if err != nil {
		return err
	}
	p := &plugin{o: o, log: log, closeLog: closeLog}
	defer func() { p.closeLog() }()
	if !o.preRegistered {
		// Open the state before connecting, so that a wrong flag fails here and not at Configure.
		if err := p.open(ctx, ""); err != nil {
			return err
		}
	}
	defer p.close()
	if o.sweepEvery > 0 {
		go func() {
			t := time.NewTicker(o.sweepEvery)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					p.sweep(ctx)
				}
			}
		}()
	}
	for {
		err := p.serve(ctx, o)
		if o.preRegistered || ctx.Err() != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		log.Warn("NRI connection ended; reconnecting", "socket", o.socket, "error", fmt.Sprint(err), "in", o.reconnectEvery.String())
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(o.reconnectEvery):
		}
	}
}

// serve runs one NRI connection until it ends.
func (p *plugin) serve(ctx context.Context, o *options) error {
	opts := []stub.Option{stub.WithOnClose(func() {})}
	if !o.preRegistered {
		opts = append(opts, stub.WithSocketPath(o.socket))
		if os.Getenv(api.PluginNameEnvVar) == "" {
			opts = append(opts, stub.WithPluginName(o.name))
		}
		if os.Getenv(api.PluginIdxEnvVar) == "" {
			opts = append(opts, stub.WithPluginIdx(o.idx))
		}
	}
	s, err := stub.New(p, opts...)
	if err != nil {
		return fmt.Errorf("create NRI stub: %w", err)
	}
	runErr := make(chan error, 1)
	go func() { runErr <- s.Run(ctx) }()
	select {
	case err := <-runErr:
		return err
	case <-ctx.Done():
		s.Stop()
		<-runErr
		return ctx.Err()
	}
}

// applyConfig parses text as flags (lines starting with # are comments).
func (o *options) applyConfig(text, where string) error {
	var args []string
	for _, l := range strings.Split(text, "\n") {
		if l = strings.TrimSpace(l); l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		args = append(args, strings.Fields(l)...)
	}
	fs := flags(o, where)
	fs.SetOutput(io.Discard)
	// What the command line sets wins: it is parsed after the file.
	if err := fs.Parse(append(args, os.Args[1:]...)); err != nil {
		return fmt.Errorf("%s: %v", where, err)
	}
	return nil
}

func (o *options) logger() (*slog.Logger, func(), error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return nil, nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", o.logLevel)
	}
	w, closeW := io.Writer(os.Stderr), func() {}
	if o.logFile != "" {
		f, err := os.OpenFile(o.logFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return nil, nil, fmt.Errorf("--log-file: %w", err)
		}
		w, closeW = f, func() { f.Close() }
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})), closeW, nil
}

// manager opens netmgr's state as podctl does for the same flags.
func (o *options) manager(ctx context.Context, log *slog.Logger) (*netmgr.Manager, func(), error) {
	opts := []netmgr.Option{netmgr.WithStateDir(o.stateDir), netmgr.WithRunDir(o.runDir), netmgr.WithLogger(log)}
	if o.node != "" {
		opts = append(opts, netmgr.WithNode(o.node))
	}
	var closers []func()
	closeAll := func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	switch {
	case o.storeURL == "":
	case strings.HasPrefix(o.storeURL, "bolt://"):
		path := strings.TrimPrefix(o.storeURL, "bolt://")
		if path == "" {
			return nil, nil, fmt.Errorf("--store %q: no file path", o.storeURL)
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, nil, fmt.Errorf("open store: %w", err)
		}
		b, err := store.OpenBolt(path)
		if err != nil {
			return nil, nil, err
		}
		closers = append(closers, func() { b.Close() })
		opts = append(opts, netmgr.WithStore(b))
	case strings.HasPrefix(o.storeURL, "etcd://"):
		cs, err := etcd.Open(ctx, o.storeURL)
		if err != nil {
			return nil, nil, err
		}
		closers = append(closers, func() { cs.Close() })
		if err := os.MkdirAll(o.runDir, 0o755); err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("create run dir: %w", err)
		}
		rt, err := netmgr.OpenRuntimeStore(ctx, filepath.Join(o.runDir, "runtime.db"))
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		closers = append(closers, func() { rt.Close() })
		opts = append(opts, netmgr.WithStores(cs, rt))
	default:
		return nil, nil, fmt.Errorf("--store %q: unknown scheme (want bolt://PATH or etcd://HOST:PORT[,HOST:PORT...])", o.storeURL)
	}
	m, err := netmgr.New(ctx, opts...)
	if err != nil {
		closeAll()
		return nil, nil, fmt.Errorf("open netmgr state (--state-dir %s, --run-dir %s): %w", o.stateDir, o.runDir, err)
	}
	return m, func() { m.Close(); closeAll() }, nil
}
