package pod

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"

	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/sandbox/ctdopts"
)

// Defaults of the containerd Runtime.
const (
	DefaultContainerdAddress = "/run/containerd/containerd.sock"
	DefaultNamespace         = "netmgr"
	DefaultDir               = "/var/lib/netmgr/pods"
	DefaultRuntimeName       = "io.containerd.runc.v2"
)

// Labels the containerd Runtime sets on containers besides the pod facade's.
const (
	labelImage  = labelPrefix + "image"
	labelRootFS = labelPrefix + "rootfs" // the lower directory of a local root filesystem's overlay
)

// Containerd is the Runtime for a containerd 2.x daemon. Containers live in one containerd namespace;
// what containerd does not keep (the overlay layer over a local root filesystem, the log file, exec
// FIFOs) lives in a directory per container under the Runtime's directory.
type Containerd struct {
	c           *client.Client
	address     string
	ns          string
	dir         string
	runtime     string
	snapshotter string
	log         *slog.Logger
}

// ContainerdOption configures the containerd Runtime.
type ContainerdOption func(*Containerd)

// WithNamespace sets the containerd namespace of the pods' containers. Default "netmgr".
func WithNamespace(ns string) ContainerdOption { return func(c *Containerd) { c.ns = ns } }

// WithDir sets the directory of per-container files. Default /var/lib/netmgr/pods.
func WithDir(dir string) ContainerdOption { return func(c *Containerd) { c.dir = dir } }

// WithRuntimeName sets containerd's runtime (shim) for new containers. Default io.containerd.runc.v2.
func WithRuntimeName(name string) ContainerdOption { return func(c *Containerd) { c.runtime = name } }

// WithSnapshotter sets the snapshotter that unpacks pulled images. Default: containerd's default.
func WithSnapshotter(name string) ContainerdOption {
	return func(c *Containerd) { c.snapshotter = name }
}

// WithContainerdLogger sets the structured logger. Default: discard.
func WithContainerdLogger(l *slog.Logger) ContainerdOption { return func(c *Containerd) { c.log = l } }

// NewContainerd connects to the containerd daemon at address (a unix socket path) and checks that it
// answers. An unreachable daemon is an error wrapping ErrUnavailable.
func NewContainerd(ctx context.Context, address string, opts ...ContainerdOption) (*Containerd, error) {
	if address == "" {
		address = DefaultContainerdAddress
	}
	r := &Containerd{address: address, ns: DefaultNamespace, dir: DefaultDir, runtime: DefaultRuntimeName}
	for _, o := range opts {
		o(r)
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	sock := strings.TrimPrefix(address, "unix://")
	if _, err := os.Stat(sock); err != nil {
		return nil, fmt.Errorf("%w: cannot reach containerd at %s: %v", ErrUnavailable, address, unwrapPath(err))
	}
	c, err := client.New(address, client.WithDefaultNamespace(r.ns), client.WithTimeout(5*time.Second))
	if err != nil {
		return nil, fmt.Errorf("%w: cannot reach containerd at %s: %v", ErrUnavailable, address, err)
	}
	vctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := c.Version(vctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("%w: cannot reach containerd at %s: %v", ErrUnavailable, address, grpcCause(err))
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
func (r *Containerd) Close() error { return r.c.Close() }

// Client returns the containerd client, for callers that need more than the Runtime interface.
func (r *Containerd) Client() *client.Client { return r.c }

// Namespace returns the containerd namespace the Runtime works in.
func (r *Containerd) Namespace() string { return r.ns }

func (r *Containerd) ctx(ctx context.Context) context.Context {
	return namespaces.WithNamespace(ctx, r.ns)
}

func (r *Containerd) containerDir(id string) string { return filepath.Join(r.dir, r.ns, id) }

// Create implements Runtime.
func (r *Containerd) Create(ctx context.Context, cfg ContainerConfig) (err error) {
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
	if root, ok := LocalRootFS(spec.Image); ok {
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
		img, err := r.image(ctx, spec.Image)
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

// image finds a pulled image or pulls it.
func (r *Containerd) image(ctx context.Context, ref string) (client.Image, error) {
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return nil, fmt.Errorf("%w: image %q: %v (a local root filesystem must be an absolute path or rootfs:/path)", netmgr.ErrInvalid, ref, err)
	}
	img, err := r.c.GetImage(ctx, named.String())
	if err == nil {
		return img, nil
	}
	if !errdefs.IsNotFound(err) {
		return nil, err
	}
	popts := []client.RemoteOpt{client.WithPullUnpack}
	if r.snapshotter != "" {
		popts = append(popts, client.WithPullSnapshotter(r.snapshotter))
	}
	img, err = r.c.Pull(ctx, named.String(), popts...)
	if err != nil {
		return nil, fmt.Errorf("pull image %s: %w", named, err)
	}
	return img, nil
}

func (r *Containerd) removeSnapshot(ctx context.Context, key string) error {
	err := r.c.SnapshotService(r.snapshotterName()).Remove(ctx, key)
	if errdefs.IsNotFound(err) {
		return nil
	}
	return err
}

func (r *Containerd) snapshotterName() string {
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
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return err
}

// Start implements Runtime.
func (r *Containerd) Start(ctx context.Context, id string) error {
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

// Stop implements Runtime. The exited task stays, so Status reports its exit code until Start or
// Delete.
func (r *Containerd) Stop(ctx context.Context, id string, grace time.Duration) error {
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

// Delete implements Runtime.
func (r *Containerd) Delete(ctx context.Context, id string) error {
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

// Exec implements Runtime.
func (r *Containerd) Exec(ctx context.Context, id string, p ExecConfig) (int, error) {
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

// Logs implements Runtime.
func (r *Containerd) Logs(ctx context.Context, id string, w io.Writer, follow bool) error {
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

// Status implements Runtime.
func (r *Containerd) Status(ctx context.Context, id string) (ContainerStatus, error) {
	ctx = r.ctx(ctx)
	ctr, err := r.c.LoadContainer(ctx, id)
	if err != nil {
		return ContainerStatus{}, containerdErr(err)
	}
	return r.status(ctx, ctr)
}

func (r *Containerd) status(ctx context.Context, ctr client.Container) (ContainerStatus, error) {
	info, err := ctr.Info(ctx, client.WithoutRefreshedMetadata)
	if err != nil {
		return ContainerStatus{}, containerdErr(err)
	}
	s := ContainerStatus{
		Name: info.Labels[LabelContainer], ID: info.ID, Pod: info.Labels[LabelPod],
		Image: info.Labels[labelImage], State: StateCreated, Created: info.CreatedAt,
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
		s.State, s.PID = StateRunning, t.Pid()
	case client.Stopped:
		s.State, s.ExitCode, s.ExitedAt = StateStopped, st.ExitStatus, st.ExitTime
	case client.Created:
		s.State = StateCreated
	default:
		s.State = StateUnknown
	}
	return s, nil
}

// List implements Runtime.
func (r *Containerd) List(ctx context.Context, pod string) ([]ContainerStatus, error) {
	ctx = r.ctx(ctx)
	filter := `labels."` + LabelPod + `"`
	if pod != "" {
		filter += "==" + strconv.Quote(pod)
	}
	ctrs, err := r.c.Containers(ctx, filter)
	if err != nil {
		return nil, containerdErr(err)
	}
	out := make([]ContainerStatus, 0, len(ctrs))
	for _, c := range ctrs {
		s, err := r.status(ctx, c)
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
