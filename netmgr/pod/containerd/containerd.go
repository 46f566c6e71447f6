// Package containerd is the pod facade's Runtime for a containerd 2.x daemon. It is a package of its
// own so that a program using package pod (or only the Manager) with another runtime does not link
// containerd's client, grpc and protobuf.
package containerd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"

	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/pod"
	"github.com/netmgr/netmgr/sandbox/ctdopts"
)

var _ pod.Runtime = (*Runtime)(nil)

// Defaults of the containerd Runtime.
const (
	DefaultAddress     = "/run/containerd/containerd.sock"
	DefaultNamespace   = "netmgr"
	DefaultDir         = "/var/lib/netmgr/pods"
	DefaultRuntimeName = "io.containerd.runc.v2"
)

// Labels the containerd Runtime sets on containers besides the pod facade's.
const (
	labelImage  = "netmgr.io/image"
	labelRootFS = "netmgr.io/rootfs" // the lower directory of a local root filesystem's overlay
)

// Runtime is the pod.Runtime for a containerd 2.x daemon. Containers live in one containerd namespace;
// what containerd does not keep (the overlay layer over a local root filesystem, the log file, exec
// FIFOs) lives in a directory per container under the Runtime's directory.
type Runtime struct {
	c           *client.Client
	address     string
	ns          string
	dir         string
	runtime     string
	snapshotter string
	log         *slog.Logger
	insecure    []string
	regTimeout  time.Duration
	progress    func(PullProgress)
	regDial     func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Option configures the containerd Runtime.
type Option func(*Runtime)

// WithNamespace sets the containerd namespace of the pods' containers. Default "netmgr".
func WithNamespace(ns string) Option { return func(c *Runtime) { c.ns = ns } }

// WithDir sets the directory of per-container files. Default /var/lib/netmgr/pods.
func WithDir(dir string) Option { return func(c *Runtime) { c.dir = dir } }

// WithRuntimeName sets containerd's runtime (shim) for new containers. Default io.containerd.runc.v2.
func WithRuntimeName(name string) Option { return func(c *Runtime) { c.runtime = name } }

// WithSnapshotter sets the snapshotter that unpacks pulled images. Default: containerd's default.
func WithSnapshotter(name string) Option {
	return func(c *Runtime) { c.snapshotter = name }
}

// WithLogger sets the structured logger. Default: discard.
func WithLogger(l *slog.Logger) Option { return func(c *Runtime) { c.log = l } }

// New connects to the containerd daemon at address (a unix socket path) and checks that it
// answers. An unreachable daemon is an error wrapping pod.ErrUnavailable.
func New(ctx context.Context, address string, opts ...Option) (*Runtime, error) {
	if address == "" {
		address = DefaultAddress
	}
	r := &Runtime{address: address, ns: DefaultNamespace, dir: DefaultDir, runtime: DefaultRuntimeName}
	for _, o := range opts {
		o(r)
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	sock := strings.TrimPrefix(address, "unix://")
	if _, err := os.Stat(sock); err != nil {
		return nil, fmt.Errorf("%w: cannot reach containerd at %s: %v", pod.ErrUnavailable, address, unwrapPath(err))
	}
	c, err := client.New(address, client.WithDefaultNamespace(r.ns), client.WithTimeout(5*time.Second))
	if err != nil {
		return nil, fmt.Errorf("%w: cannot reach containerd at %s: %v", pod.ErrUnavailable, address, err)
	}
	vctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := c.Version(vctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("%w: cannot reach containerd at %s: %v", pod.ErrUnavailable, address, grpcCause(err))
	}
	r.c = c
	return r, nil
}

// grpcCause shortens gRPC's wording of a failed dial to its cause.
func grpcCause(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, "dial unix "); i >= 0 {
		return strings.TrimRight(s[i:], `"`)
	}
	return s
}

// Close closes the connection to containerd. Containers keep running.
func (r *Runtime) Close() error { return r.c.Close() }

// Client returns the containerd client, for callers that need more than the Runtime interface.
func (r *Runtime) Client() *client.Client { return r.c }

// Namespace returns the containerd namespace the Runtime works in.
func (r *Runtime) Namespace() string { return r.ns }

func (r *Runtime) ctx(ctx context.Context) context.Context {
	return namespaces.WithNamespace(ctx, r.ns)
}

func (r *Runtime) containerDir(id string) string { return filepath.Join(r.dir, r.ns, id) }

// Create implements pod.Runtime.
func (r *Runtime) Create(ctx context.Context, cfg pod.ContainerConfig) (err error) {
	ctx = r.ctx(ctx)
	dir := r.containerDir(cfg.ID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()
	labels := map[string]string{labelImage: cfg.Spec.Image}
	for k, v := range cfg.Labels {
		labels[k] = v
	}
	spec := cfg.Spec
	var copts []client.NewContainerOpts
	var sopts []oci.SpecOpts
	var snapshot string
	if root, ok := pod.LocalRootFS(spec.Image); ok {
		if strings.ContainsAny(root, ",:") {
			return fmt.Errorf("%w: root filesystem %q: an overlay lower directory cannot contain ',' or ':'", netmgr.ErrInvalid, root)
		}
		labels[labelRootFS] = root
		for _, d := range []string{"upper", "work"} {
			if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
				return err
			}
		}
		sopts = append(sopts, oci.WithDefaultPathEnv,
			oci.WithProcessArgs(append(append([]string{}, spec.Command...), spec.Args...)...))
	} else {
		img, err := r.image(ctx, spec)
		if err != nil {
			return err
		}
		snapshot = cfg.ID
		copts = append(copts, client.WithImage(img))
		if r.snapshotter != "" {
			copts = append(copts, client.WithSnapshotter(r.snapshotter))
		}
		copts = append(copts, client.WithNewSnapshot(snapshot, img))
		sopts = append(sopts, oci.WithImageConfig(img))
		switch {
		case len(spec.Command) > 0:
			sopts = append(sopts, oci.WithProcessArgs(append(append([]string{}, spec.Command...), spec.Args...)...))
		case len(spec.Args) > 0:
			sopts = append(sopts, oci.WithImageConfigArgs(img, spec.Args))
		}
	}
	if len(spec.Env) > 0 {
		sopts = append(sopts, oci.WithEnv(spec.Env))
	}
	if cfg.NetNS != "" {
		sopts = append(sopts, ctdopts.WithNetNS(cfg.NetNS))
	}
	if cfg.ResolvConf != "" {
		sopts = append(sopts, ctdopts.WithResolvConf(cfg.ResolvConf))
	}
	if cfg.Hosts != "" {
		sopts = append(sopts, ctdopts.WithHostsFile(cfg.Hosts))
	}
	if cfg.PausePID != 0 {
		sopts = append(sopts, ctdopts.WithPauseNamespaces(cfg.PausePID))
	} else if cfg.Hostname != "" {
		sopts = append(sopts, oci.WithHostname(cfg.Hostname))
	}
	copts = append(copts,
		client.WithContainerLabels(labels),
		client.WithRuntime(r.runtime, nil),
		client.WithNewSpec(sopts...))
	if _, err := r.c.NewContainer(ctx, cfg.ID, copts...); err != nil {
		if snapshot != "" && !errdefs.IsAlreadyExists(err) {
			_ = r.removeSnapshot(ctx, snapshot)
		}
		return containerdErr(err)
	}
	r.log.Debug("container created", "container", cfg.ID)
	return nil
}

// image finds the image of a container, pulling it if it is missing and its pull policy allows.
// Always is not pulled again here: pod.Manager.Run has just pulled it (EnsureImage).
func (r *Runtime) image(ctx context.Context, spec pod.ContainerSpec) (client.Image, error) {
	policy := pod.EffectivePullPolicy(spec.Image, spec.ImagePullPolicy)
	if policy == pod.PullAlways {
		policy = pod.PullIfNotPresent
	}
	return r.ensureImage(ctx, spec.Image, policy)
}

func (r *Runtime) removeSnapshot(ctx context.Context, key string) error {
	err := r.c.SnapshotService(r.snapshotterName()).Remove(ctx, key)
	if errdefs.IsNotFound(err) {
		return nil
	}
	return err
}

func (r *Runtime) snapshotterName() string {
	if r.snapshotter != "" {
		return r.snapshotter
	}
	return "overlayfs"
}

// containerdErr maps containerd's error kinds to netmgr's sentinels, keeping the message.
func containerdErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errdefs.IsNotFound(err):
		return fmt.Errorf("%w: %w", netmgr.ErrNotFound, err)
	case errdefs.IsAlreadyExists(err):
		return fmt.Errorf("%w: %w", netmgr.ErrExists, err)
	case errdefs.IsInvalidArgument(err):
		return fmt.Errorf("%w: %w", netmgr.ErrInvalid, err)
	case errdefs.IsUnavailable(err):
		return fmt.Errorf("%w: %w", pod.ErrUnavailable, err)
	}
	return err
}

// Start implements pod.Runtime.
func (r *Runtime) Start(ctx context.Context, id string) error {
	ctx = r.ctx(ctx)
	ctr, err := r.c.LoadContainer(ctx, id)
	if err != nil {
		return containerdErr(err)
	}
	if t, err := ctr.Task(ctx, nil); err == nil {
		st, err := t.Status(ctx)
		if err == nil && st.Status == client.Running {
			return nil
		}
		if _, err := t.Delete(ctx, client.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("delete the exited task: %w", err)
		}
	} else if !errdefs.IsNotFound(err) {
		return containerdErr(err)
	}
	labels, err := ctr.Labels(ctx)
	if err != nil {
		return containerdErr(err)
	}
	dir := r.containerDir(id)
	var topts []client.NewTaskOpts
	if root := labels[labelRootFS]; root != "" {
		if _, err := os.Stat(root); err != nil {
			return fmt.Errorf("%w: root filesystem %s: %w", netmgr.ErrNotFound, root, unwrapPath(err))
		}
		topts = append(topts, client.WithRootFS([]mount.Mount{{
			Type:    "overlay",
			Source:  "overlay",
			Options: []string{"lowerdir=" + root, "upperdir=" + filepath.Join(dir, "upper"), "workdir=" + filepath.Join(dir, "work")},
		}}))
	}
	t, err := ctr.NewTask(ctx, cio.LogFile(filepath.Join(dir, "log")), topts...)
	if err != nil {
		return containerdErr(err)
	}
	if err := t.Start(ctx); err != nil {
		_, _ = t.Delete(ctx, client.WithProcessKill)
		return containerdErr(err)
	}
	r.log.Debug("container started", "container", id, "pid", t.Pid())
	return nil
}

// Stop implements pod.Runtime. The exited task stays, so Status reports its exit code until Start or
// Delete.
func (r *Runtime) Stop(ctx context.Context, id string, grace time.Duration) error {
	ctx = r.ctx(ctx)
	ctr, err := r.c.LoadContainer(ctx, id)
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return containerdErr(err)
	}
	t, err := ctr.Task(ctx, nil)
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return containerdErr(err)
	}
	return stopTask(ctx, t, grace)
}

func stopTask(ctx context.Context, t client.Task, grace time.Duration) error {
	st, err := t.Status(ctx)
	if err != nil {
		return containerdErr(err)
	}
	if st.Status == client.Stopped {
		return nil
	}
	exited, err := t.Wait(ctx)
	if err != nil {
		return containerdErr(err)
	}
	sig := syscall.SIGTERM
	if grace <= 0 {
		sig = syscall.SIGKILL
	}
	if err := t.Kill(ctx, sig, client.WithKillAll); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("kill: %w", err)
	}
	if sig == syscall.SIGTERM {
		select {
		case <-exited:
			return nil
		case <-time.After(grace):
		case <-ctx.Done():
			return ctx.Err()
		}
		if err := t.Kill(ctx, syscall.SIGKILL, client.WithKillAll); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("kill: %w", err)
		}
	}
	select {
	case <-exited:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Delete implements pod.Runtime.
func (r *Runtime) Delete(ctx context.Context, id string) error {
	ctx = r.ctx(ctx)
	var errs []error
	ctr, err := r.c.LoadContainer(ctx, id)
	switch {
	case errdefs.IsNotFound(err):
	case err != nil:
		return containerdErr(err)
	default:
		if t, err := ctr.Task(ctx, nil); err == nil {
			if err := stopTask(ctx, t, 0); err != nil {
				errs = append(errs, err)
			}
			if _, err := t.Delete(ctx, client.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("delete task: %w", err))
			}
		} else if !errdefs.IsNotFound(err) {
			errs = append(errs, containerdErr(err))
		}
		if len(errs) > 0 {
			return errors.Join(errs...)
		}
		if err := ctr.Delete(ctx, client.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("delete container: %w", err)
		}
	}
	if err := os.RemoveAll(r.containerDir(id)); err != nil {
		return err
	}
	r.log.Debug("container deleted", "container", id)
	return nil
}

// Exec implements pod.Runtime.
func (r *Runtime) Exec(ctx context.Context, id string, p pod.ExecConfig) (int, error) {
	ctx = r.ctx(ctx)
	ctr, err := r.c.LoadContainer(ctx, id)
	if err != nil {
		return -1, containerdErr(err)
	}
	t, err := ctr.Task(ctx, nil)
	if errdefs.IsNotFound(err) {
		return -1, fmt.Errorf("%w: container %s is not running", netmgr.ErrInvalid, id)
	}
	if err != nil {
		return -1, containerdErr(err)
	}
	spec, err := ctr.Spec(ctx)
	if err != nil {
		return -1, containerdErr(err)
	}
	ps := *spec.Process
	ps.Args = p.Args
	ps.Env = append(append([]string{}, ps.Env...), p.Env...)
	ps.Terminal = false
	fifos := filepath.Join(r.containerDir(id), "fifo")
	if err := os.MkdirAll(fifos, 0o700); err != nil {
		return -1, err
	}
	stdout, stderr := p.Stdout, p.Stderr
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	var copts []cio.Opt
	if p.Stdin != nil {
		copts = append(copts, cio.WithStreams(p.Stdin, stdout, stderr))
	} else {
		copts = append(copts, cio.WithStreams(nil, stdout, stderr))
	}
	copts = append(copts, cio.WithFIFODir(fifos))
	execID := "exec-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	proc, err := t.Exec(ctx, execID, &ps, cio.NewCreator(copts...))
	if err != nil {
		return -1, containerdErr(err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_, _ = proc.Delete(dctx, client.WithProcessKill)
	}()
	exited, err := proc.Wait(ctx)
	if err != nil {
		return -1, containerdErr(err)
	}
	if err := proc.Start(ctx); err != nil {
		return -1, fmt.Errorf("start %q: %w", p.Args[0], containerdErr(err))
	}
	var st client.ExitStatus
	select {
	case st = <-exited:
	case <-ctx.Done():
		_ = proc.Kill(context.WithoutCancel(ctx), syscall.SIGKILL)
		st = <-exited
	}
	proc.IO().Wait()
	code, _, err := st.Result()
	if err != nil {
		return -1, err
	}
	return int(code), nil
}

// Logs implements pod.Runtime.
func (r *Runtime) Logs(ctx context.Context, id string, w io.Writer, follow bool) error {
	if _, err := r.c.LoadContainer(r.ctx(ctx), id); err != nil {
		return containerdErr(err)
	}
	f, err := os.Open(filepath.Join(r.containerDir(id), "log"))
	if errors.Is(err, os.ErrNotExist) && !follow {
		return nil // never started
	}
	for errors.Is(err, os.ErrNotExist) {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(100 * time.Millisecond):
		}
		f, err = os.Open(filepath.Join(r.containerDir(id), "log"))
	}
	if err != nil {
		return err
	}
	defer f.Close()
	for {
		if _, err := io.Copy(w, f); err != nil {
			return err
		}
		if !follow {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Status implements pod.Runtime.
func (r *Runtime) Status(ctx context.Context, id string) (pod.ContainerStatus, error) {
	ctx = r.ctx(ctx)
	ctr, err := r.c.LoadContainer(ctx, id)
	if err != nil {
		return pod.ContainerStatus{}, containerdErr(err)
	}
	return r.status(ctx, ctr)
}

func (r *Runtime) status(ctx context.Context, ctr client.Container) (pod.ContainerStatus, error) {
	return r.statusWith(ctx, ctr, nil)
}

// statusWith reports a container; procs, if not nil, holds every task of the namespace by container
// ID (List reads them in one call instead of two per container).
func (r *Runtime) statusWith(ctx context.Context, ctr client.Container, procs map[string]*task.Process) (pod.ContainerStatus, error) {
	info, err := ctr.Info(ctx, client.WithoutRefreshedMetadata)
	if err != nil {
		return pod.ContainerStatus{}, containerdErr(err)
	}
	s := pod.ContainerStatus{
		Name: info.Labels[pod.LabelContainer], ID: info.ID, Pod: info.Labels[pod.LabelPod],
		Image: info.Labels[labelImage], State: pod.StateCreated, Created: info.CreatedAt,
	}
	restartRecord(&s, info.Labels)
	s.Labels = info.Labels
	if procs != nil {
		p, ok := procs[info.ID]
		if !ok {
			return s, nil
		}
		switch p.Status {
		case task.Status_RUNNING, task.Status_PAUSED, task.Status_PAUSING:
			s.State, s.PID = pod.StateRunning, p.Pid
		case task.Status_STOPPED:
			s.State, s.ExitCode = pod.StateStopped, p.ExitStatus
			if p.ExitedAt != nil {
				s.ExitedAt = p.ExitedAt.AsTime()
			}
		case task.Status_CREATED:
			s.State = pod.StateCreated
		default:
			s.State = pod.StateUnknown
		}
		return s, nil
	}
	t, err := ctr.Task(ctx, nil)
	if errdefs.IsNotFound(err) {
		return s, nil
	}
	if err != nil {
		return s, containerdErr(err)
	}
	st, err := t.Status(ctx)
	if errdefs.IsNotFound(err) {
		return s, nil
	}
	if err != nil {
		return s, containerdErr(err)
	}
	switch st.Status {
	case client.Running, client.Paused, client.Pausing:
		s.State, s.PID = pod.StateRunning, t.Pid()
	case client.Stopped:
		s.State, s.ExitCode, s.ExitedAt = pod.StateStopped, st.ExitStatus, st.ExitTime
	case client.Created:
		s.State = pod.StateCreated
	default:
		s.State = pod.StateUnknown
	}
	return s, nil
}

// List implements pod.Runtime.
func (r *Runtime) List(ctx context.Context, podName string) ([]pod.ContainerStatus, error) {
	ctx = r.ctx(ctx)
	filter := `labels."` + pod.LabelPod + `"`
	if podName != "" {
		filter += "==" + strconv.Quote(podName)
	}
	ctrs, err := r.c.Containers(ctx, filter)
	if err != nil {
		return nil, containerdErr(err)
	}
	procs := map[string]*task.Process{}
	if len(ctrs) > 0 {
		ts, err := r.c.TaskService().List(ctx, &tasks.ListTasksRequest{})
		if err != nil {
			return nil, containerdErr(err)
		}
		for _, p := range ts.Tasks {
			procs[p.ID] = p
		}
	}
	out := make([]pod.ContainerStatus, 0, len(ctrs))
	for _, c := range ctrs {
		s, err := r.statusWith(ctx, c, procs)
		if errdefs.IsNotFound(err) || errors.Is(err, netmgr.ErrNotFound) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// unwrapPath drops the *PathError wrapper whose text repeats the path.
func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
