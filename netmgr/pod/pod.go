package pod

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/netmgr/netmgr/netmgr"
)

// Manager runs pods: netmgr sandboxes for their network and a Runtime for their containers.
type Manager struct {
	nm    *netmgr.Manager
	rt    Runtime
	log   *slog.Logger
	pause bool
	grace time.Duration

	domain     string
	hostResolv string
}

// Option configures a Manager.
type Option func(*Manager)

// WithLogger sets the structured logger. Default: discard.
func WithLogger(l *slog.Logger) Option { return func(m *Manager) { m.log = l } }

// WithPause chooses whether pod sandboxes get a pause process holding UTS and IPC namespaces that all
// the pod's containers join (default true; it needs the netmgr Manager's pause binary). Without it
// each container has UTS and IPC namespaces of its own, each with the pod's hostname.
func WithPause(on bool) Option { return func(m *Manager) { m.pause = on } }

// WithStopGrace sets how long Restart waits after SIGTERM before SIGKILL. Default 10s.
func WithStopGrace(d time.Duration) Option { return func(m *Manager) { m.grace = d } }

// New returns a pod Manager. It does not own nm or rt: closing them is the caller's job.
func New(nm *netmgr.Manager, rt Runtime, opts ...Option) *Manager {
	m := &Manager{nm: nm, rt: rt, pause: true, grace: 10 * time.Second, domain: "cluster.local", hostResolv: "/etc/resolv.conf"}
	for _, o := range opts {
		o(m)
	}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	return m
}

// Pod is a pod as the Manager reports it.
type Pod struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels,omitempty"`
	// Sandbox is nil for the remains of a pod whose sandbox is gone (an interrupted run or remove);
	// Remove clears them.
	Sandbox    *netmgr.Sandbox   `json:"sandbox"`
	Containers []ContainerStatus `json:"containers"`
	// Timing is set by Run only.
	Timing *Timing `json:"timing,omitempty"`
}

// IPs returns the pod's addresses, one per attachment and family.
func (p *Pod) IPs() []string {
	var out []string
	if p.Sandbox == nil {
		return nil
	}
	for _, a := range p.Sandbox.Attachments {
		if a.IPv4.IsValid() {
			out = append(out, a.IPv4.Addr().String())
		}
		if a.IPv6.IsValid() {
			out = append(out, a.IPv6.Addr().String())
		}
	}
	return out
}

// Timing splits the time Run took.
type Timing struct {
	// Network is the sandbox: namespace, attachments, addresses, pause process.
	Network time.Duration `json:"network_ns"`
	// Containers is creating and starting every container.
	Containers time.Duration `json:"containers_ns"`
}

// Error is the structured error of every Manager operation.
type Error struct {
	Op  string // "run", "remove", "exec", ...
	Pod string
	Err error
}

func (e *Error) Error() string { return fmt.Sprintf("%s pod %q: %v", e.Op, e.Pod, e.Err) }
func (e *Error) Unwrap() error { return e.Err }

func podErr(op, name string, err error) error {
	if err == nil {
		return nil
	}
	return &Error{Op: op, Pod: name, Err: err}
}

// Run creates the pod's sandbox, then creates and starts its containers in order. If any step fails,
// everything made so far is removed again and the error says why.
func (m *Manager) Run(ctx context.Context, spec Spec) (*Pod, error) {
	p, err := m.run(ctx, spec)
	return p, podErr("run", spec.Name, err)
}

func (m *Manager) run(ctx context.Context, spec Spec) (_ *Pod, err error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	for _, c := range spec.Containers {
		if p, ok := LocalRootFS(c.Image); ok {
			fi, err := os.Stat(p)
			if err != nil {
				return nil, fmt.Errorf("%w: container %q: root filesystem %s: %w", netmgr.ErrNotFound, c.Name, p, unwrapPath(err))
			}
			if !fi.IsDir() {
				return nil, fmt.Errorf("%w: container %q: root filesystem %s is not a directory", netmgr.ErrInvalid, c.Name, p)
			}
		}
	}
	if sb, err := m.nm.Sandbox(ctx, spec.Name); err == nil {
		if sb.Labels[LabelPod] == spec.Name {
			return nil, fmt.Errorf("%w: a pod named %q exists", netmgr.ErrExists, spec.Name)
		}
		return nil, fmt.Errorf("%w: a sandbox named %q exists (not a pod)", netmgr.ErrExists, spec.Name)
	} else if !errors.Is(err, netmgr.ErrNotFound) {
		return nil, err
	}
	left, err := m.rt.List(ctx, spec.Name)
	if err != nil {
		return nil, err
	}
	if len(left) > 0 {
		return nil, fmt.Errorf("%w: containers of an earlier pod %q are left (an interrupted run or remove); remove them first (pod rm %s)", netmgr.ErrExists, spec.Name, spec.Name)
	}
	// Images first: a pull that fails leaves nothing to roll back.
	if err := m.pullImages(ctx, spec); err != nil {
		return nil, err
	}

	labels := map[string]string{LabelPod: spec.Name}
	names := make([]string, len(spec.Containers))
	for i, c := range spec.Containers {
		names[i] = c.Name
	}
	labels[LabelContainers] = strings.Join(names, ",")
	if spec.RestartPolicy != "" && spec.RestartPolicy != RestartNever {
		labels[LabelRestartPolicy] = string(spec.RestartPolicy)
	}
	for _, c := range spec.Containers {
		if c.Readiness != nil {
			labels[LabelReady] = "false" // until the keeper's first probe passes
		}
	}
	for k, v := range spec.Labels {
		labels[k] = v
	}
	hostname := spec.Hostname
	if hostname == "" {
		hostname = spec.Name
	}
	sbSpec := netmgr.SandboxSpec{Name: spec.Name, Networks: spec.Networks, Labels: labels, Pause: m.pause, Publish: spec.publish()}
	if m.pause {
		sbSpec.Hostname = hostname
	}
	if hostname != spec.Name && len(spec.Networks) > 0 {
		// The hostname is one more DNS name of the pod on its networks.
		sbSpec.Aliases = []string{hostname}
	}
	t0 := time.Now()
	sb, err := m.nm.CreateSandbox(ctx, sbSpec)
	if err != nil {
		return nil, err
	}
	t1 := time.Now()
	var made []string
	defer func() {
		if err == nil {
			return
		}
		// Roll back with a context of our own: the caller's may be what was cancelled.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		var errs []error
		for _, id := range made {
			errs = append(errs, m.rt.Delete(cctx, id))
		}
		errs = append(errs, m.nm.DeleteSandbox(cctx, spec.Name), os.RemoveAll(m.filesDir(spec.Name)))
		if rerr := errors.Join(errs...); rerr != nil {
			err = errors.Join(err, fmt.Errorf("roll back: %w", rerr))
		} else {
			m.log.Info("pod rolled back", "pod", spec.Name)
		}
	}()
	resolv, hosts, err := m.writeDNSFiles(ctx, &spec, sb, hostname)
	if err != nil {
		return nil, fmt.Errorf("write resolv.conf and hosts: %w", err)
	}
	for _, c := range spec.Containers {
		cfg := ContainerConfig{
			ID: ContainerID(spec.Name, c.Name), Pod: spec.Name, Spec: c, NetNS: sb.NetNS,
			Labels:     map[string]string{LabelPod: spec.Name, LabelContainer: c.Name},
			ResolvConf: resolv, Hosts: hosts,
		}
		if c.Readiness != nil || c.Liveness != nil {
			b, err := json.Marshal(Probes{Readiness: c.Readiness, Liveness: c.Liveness})
			if err != nil {
				return nil, err
			}
			cfg.Labels[LabelProbes] = string(b)
		}
		if sb.PausePID != 0 {
			cfg.PausePID = sb.PausePID
		} else {
			cfg.Hostname = hostname
		}
		if err := m.rt.Create(ctx, cfg); err != nil {
			return nil, fmt.Errorf("create container %q: %w", c.Name, err)
		}
		made = append(made, cfg.ID)
		if err := m.rt.Start(ctx, cfg.ID); err != nil {
			return nil, fmt.Errorf("start container %q: %w", c.Name, err)
		}
	}
	t2 := time.Now()
	m.log.Info("pod running", "pod", spec.Name, "network", t1.Sub(t0), "containers", t2.Sub(t1))
	p, err := m.pod(ctx, spec.Name, sb)
	if err != nil {
		return nil, err
	}
	p.Timing = &Timing{Network: t1.Sub(t0), Containers: t2.Sub(t1)}
	return p, nil
}

// unwrapPath drops the *PathError wrapper whose text repeats the path.
func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// Pod returns one pod. A pod's remains without a sandbox are reported too (Sandbox nil).
func (m *Manager) Pod(ctx context.Context, name string) (*Pod, error) {
	sb, err := m.nm.Sandbox(ctx, name)
	switch {
	case errors.Is(err, netmgr.ErrNotFound):
		sb = nil
	case err != nil:
		return nil, podErr("inspect", name, err)
	case sb.Labels[LabelPod] != name:
		return nil, podErr("inspect", name, fmt.Errorf("%w: %q is a sandbox, not a pod", netmgr.ErrNotFound, name))
	}
	p, err := m.pod(ctx, name, sb)
	if err == nil && p.Sandbox == nil && len(p.Containers) == 0 {
		err = fmt.Errorf("%w: no pod named %q", netmgr.ErrNotFound, name)
	}
	if err != nil {
		return nil, podErr("inspect", name, err)
	}
	return p, nil
}

func (m *Manager) pod(ctx context.Context, name string, sb *netmgr.Sandbox) (*Pod, error) {
	cs, err := m.rt.List(ctx, name)
	if err != nil {
		return nil, err
	}
	return m.podOf(name, sb, cs), nil
}

// podOf makes the pod of a sandbox (nil: its remains) and its containers as the runtime listed them.
func (m *Manager) podOf(name string, sb *netmgr.Sandbox, cs []ContainerStatus) *Pod {
	p := &Pod{Name: name, Sandbox: sb, Containers: cs}
	if sb == nil {
		return p
	}
	p.Labels = map[string]string{}
	for k, v := range sb.Labels {
		if !strings.HasPrefix(k, labelPrefix) {
			p.Labels[k] = v
		}
	}
	// Order as in the manifest; a container the runtime lost is shown as such.
	byName := map[string]ContainerStatus{}
	for _, c := range cs {
		byName[c.Name] = c
	}
	p.Containers = p.Containers[:0]
	for _, n := range strings.Split(sb.Labels[LabelContainers], ",") {
		if n == "" {
			continue
		}
		c, ok := byName[n]
		if !ok {
			c = ContainerStatus{Name: n, ID: ContainerID(name, n), Pod: name, State: StateUnknown}
		}
		delete(byName, n)
		p.Containers = append(p.Containers, c)
	}
	for _, c := range cs {
		if _, extra := byName[c.Name]; extra {
			p.Containers = append(p.Containers, c)
		}
	}
	return p
}

// Pods returns every pod, sorted by name.
func (m *Manager) Pods(ctx context.Context) ([]*Pod, error) {
	sbs, err := m.nm.Sandboxes(ctx)
	if err != nil {
		return nil, err
	}
	all, err := m.rt.List(ctx, "")
	if err != nil {
		return nil, err
	}
	// One listing of the runtime for every pod.
	byPod := map[string][]ContainerStatus{}
	for _, c := range all {
		byPod[c.Pod] = append(byPod[c.Pod], c)
	}
	var out []*Pod
	for _, sb := range sbs {
		if sb.Labels[LabelPod] != sb.Name {
			continue
		}
		out = append(out, m.podOf(sb.Name, sb, byPod[sb.Name]))
		delete(byPod, sb.Name)
	}
	for name, cs := range byPod {
		out = append(out, m.podOf(name, nil, cs))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// container finds a container of a pod.
func (m *Manager) container(ctx context.Context, pod, name string) (ContainerStatus, error) {
	p, err := m.Pod(ctx, pod)
	if err != nil {
		return ContainerStatus{}, err
	}
	var names []string
	for _, c := range p.Containers {
		if c.Name == name {
			return c, nil
		}
		names = append(names, c.Name)
	}
	return ContainerStatus{}, fmt.Errorf("%w: pod %q has no container %q (it has %s)", netmgr.ErrNotFound, pod, name, strings.Join(names, ", "))
}

// Exec runs a process in a running container of the pod and returns its exit status.
func (m *Manager) Exec(ctx context.Context, pod, container string, p ExecConfig) (int, error) {
	if len(p.Args) == 0 {
		return -1, podErr("exec", pod, fmt.Errorf("%w: no command", netmgr.ErrInvalid))
	}
	c, err := m.container(ctx, pod, container)
	if err != nil {
		return -1, err
	}
	code, err := m.rt.Exec(ctx, c.ID, p)
	return code, podErr("exec", pod, err)
}

// Logs copies a container's output to w; with follow it goes on until ctx is done.
func (m *Manager) Logs(ctx context.Context, pod, container string, w io.Writer, follow bool) error {
	c, err := m.container(ctx, pod, container)
	if err != nil {
		return err
	}
	return podErr("logs", pod, m.rt.Logs(ctx, c.ID, w, follow))
}

// Restart stops one container (SIGTERM, then SIGKILL after the stop grace) and starts it again. The pod
// keeps its sandbox, so its IP and its other containers are untouched.
func (m *Manager) Restart(ctx context.Context, pod, container string) error {
	c, err := m.container(ctx, pod, container)
	if err != nil {
		return err
	}
	if err := m.rt.Stop(ctx, c.ID, m.grace); err != nil {
		return podErr("restart", pod, fmt.Errorf("stop container %q: %w", container, err))
	}
	if err := m.rt.Start(ctx, c.ID); err != nil {
		return podErr("restart", pod, fmt.Errorf("start container %q: %w", container, err))
	}
	m.log.Info("container restarted", "pod", pod, "container", container)
	return nil
}

// Remove kills and removes the pod's containers, then its sandbox (attachments, addresses,
// namespace). It is idempotent: removing a pod that does not exist, or finishing an interrupted
// remove, succeeds.
func (m *Manager) Remove(ctx context.Context, name string) error {
	return podErr("remove", name, m.remove(ctx, name))
}

func (m *Manager) remove(ctx context.Context, name string) error {
	sb, err := m.nm.Sandbox(ctx, name)
	switch {
	case errors.Is(err, netmgr.ErrNotFound):
		sb = nil
	case err != nil:
		return err
	case sb.Labels[LabelPod] != name:
		return fmt.Errorf("%w: %q is a sandbox, not a pod (use sandbox rm)", netmgr.ErrInvalid, name)
	}
	cs, err := m.rt.List(ctx, name)
	if err != nil {
		return err
	}
	var errs []error
	for _, c := range cs {
		if err := m.rt.Delete(ctx, c.ID); err != nil {
			errs = append(errs, fmt.Errorf("container %q: %w", c.Name, err))
		}
	}
	if len(errs) > 0 {
		// Keep the sandbox while a container may still be in it; a second remove retries.
		return errors.Join(errs...)
	}
	if sb != nil {
		if err := m.nm.DeleteSandbox(ctx, name); err != nil {
			return err
		}
	}
	if err := os.RemoveAll(m.filesDir(name)); err != nil {
		return err
	}
	m.log.Info("pod removed", "pod", name)
	return nil
}
