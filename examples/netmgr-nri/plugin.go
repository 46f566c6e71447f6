package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/nri/pkg/api"

	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/sandbox"
)

// Labels netmgr-nri puts on each pod's sandbox record, beside the pod's own labels.
const (
	LabelPodID     = "nri.netmgr.io/pod-id"   // the CRI pod sandbox ID
	LabelPod       = "nri.netmgr.io/pod"      // NAMESPACE/NAME
	LabelPodUID    = "nri.netmgr.io/pod-uid"  // the pod's UID
	LabelPrimaryIP = "nri.netmgr.io/pod-ips"  // the pod's primary (CNI) addresses, comma separated
	LabelNetworks  = "nri.netmgr.io/networks" // the extra networks attached, comma separated
	// LabelPrimary names the netmgr-cni sandboxes (comma separated) that carry the pod's labels for it.
	LabelPrimary   = "nri.netmgr.io/primary"
	cniLabelPrefix = "cni.netmgr.io/"             // netmgr-cni's labels, never copied from a pod
	cniContainerID = "cni.netmgr.io/container-id" // on netmgr-cni's record: the CNI container ID, CRI's pod sandbox ID
	sandboxPrefix  = "nri-"                       // every netmgr-nri sandbox's name starts so
	hookSlowWarn   = 500 * time.Millisecond       // a hook slower than this is logged as a warning
	hookCallBudget = 1500 * time.Millisecond      // what a hook may spend of NRI's 2 s request timeout
	busyRetryUntil = 1000 * time.Millisecond      // how long a hook waits out ErrBusy
	syncCallBudget = 30 * time.Second             // Synchronize's budget (NRI's registration timeout governs it)
	nsNetwork      = "network"                    // the runtime-spec namespace type of a pod's netns
	hostNetworkMsg = "hostNetwork pods have no network namespace of their own"
)

// plugin is the NRI plugin: one Manager for the process's lifetime, every hook under one mutex (NRI
// delivers one event at a time per runtime anyway).
type plugin struct {
	o      *options
	m      *netmgr.Manager
	closeM func()
	log    *slog.Logger
	// closeLog closes log's file, if it has one.
	closeLog func()
	mu       sync.Mutex
}

// open opens netmgr's state once, after applying config (the runtime's plugin configuration: flags).
func (p *plugin) open(ctx context.Context, config string) error {
	if p.m != nil {
		return nil
	}
	if strings.TrimSpace(config) != "" {
		logFile, logLevel := p.o.logFile, p.o.logLevel
		if err := p.o.applyConfig(config, "NRI plugin configuration"); err != nil {
			return err
		}
		if p.o.logFile != logFile || p.o.logLevel != logLevel {
			log, closeLog, err := p.o.logger()
			if err != nil {
				return err
			}
			p.closeLog()
			p.log, p.closeLog = log, closeLog
		}
	}
	m, closeM, err := p.o.manager(ctx, p.log)
	if err != nil {
		return err
	}
	p.m, p.closeM = m, closeM
	return nil
}

func (p *plugin) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closeM != nil {
		p.closeM()
		p.m, p.closeM = nil, nil
	}
}

// Configure opens the state (pre-registered: with the configuration containerd hands over) and
// subscribes to the pod events netmgr-nri handles.
func (p *plugin) Configure(ctx context.Context, config, runtime, version string) (api.EventMask, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.open(ctx, config); err != nil {
		return 0, err
	}
	p.log.Info("configured", "runtime", runtime, "runtime_version", version, "state_dir", p.o.stateDir, "run_dir", p.o.runDir)
	return api.MustParseEventMask("runpodsandbox", "stoppodsandbox", "removepodsandbox"), nil
}

// sandboxName is the netmgr sandbox of a CRI pod.
func sandboxName(podID string) string {
	sum := sha256.Sum256([]byte(podID))
	return sandboxPrefix + hex.EncodeToString(sum[:16])
}

// podNetNS is the path of the pod's network namespace, "" for a hostNetwork pod.
func podNetNS(pod *api.PodSandbox) string {
	for _, ns := range pod.GetLinux().GetNamespaces() {
		if ns.GetType() == nsNetwork {
			return ns.GetPath()
		}
	}
	return ""
}

func podRef(pod *api.PodSandbox) string { return pod.GetNamespace() + "/" + pod.GetName() }

// podLabels are the pod's own labels that netmgr-nri copies onto netmgr records.
func podLabels(pod *api.PodSandbox) map[string]string {
	l := map[string]string{}
	for k, v := range pod.GetLabels() {
		// netmgr-cni's GC deletes sandboxes by its labels: a pod's label must not pass for one.
		if !strings.HasPrefix(k, cniLabelPrefix) {
			l[k] = v
		}
	}
	return l
}

// labels are the labels of the pod's netmgr-nri record: netmgr-nri's own, and the pod's own unless
// primary names the netmgr-cni records that carry them. A pod's labels are on one record only: the
// service endpoints take every labelled sandbox with an address for one endpoint, and a Kubernetes
// service reaches a pod by its primary address, not over its extra networks.
func labels(pod *api.PodSandbox, nets []extraNetwork, primary []string) map[string]string {
	l := map[string]string{}
	if len(primary) == 0 {
		l = podLabels(pod)
	} else {
		l[LabelPrimary] = strings.Join(primary, ",")
	}
	var names []string
	for _, n := range nets {
		names = append(names, n.Network)
	}
	l[LabelPodID] = pod.GetId()
	l[LabelPod] = podRef(pod)
	l[LabelPodUID] = pod.GetUid()
	l[LabelPrimaryIP] = strings.Join(pod.GetIps(), ",")
	l[LabelNetworks] = strings.Join(names, ",")
	return l
}

// isPrimary reports whether s is netmgr-cni's record of the pod's primary network.
func isPrimary(s *netmgr.Sandbox, podID string) bool {
	return podID != "" && s.Labels[cniContainerID] == podID && !strings.HasPrefix(s.Name, sandboxPrefix)
}

// primaryLabels are the labels of netmgr-cni's record s of the pod: netmgr-cni's own (its GC and
// CHECK read them), the pod's labels and LabelPod.
func primaryLabels(s *netmgr.Sandbox, pod *api.PodSandbox) map[string]string {
	l := podLabels(pod)
	for k, v := range s.Labels {
		if strings.HasPrefix(k, cniLabelPrefix) {
			l[k] = v
		}
	}
	l[LabelPod] = podRef(pod)
	return l
}

// labelPrimary puts the pod's labels on netmgr-cni's records of it (CRI passes no labels to CNI),
// so that the service endpoints find the pod at its primary address, and returns their names. A
// record it cannot label is logged and left out: the pod's own record then keeps the labels.
func (p *plugin) labelPrimary(ctx context.Context, pod *api.PodSandbox, sbs []*netmgr.Sandbox) []string {
	var names []string
	for _, s := range sbs {
		if !isPrimary(s, pod.GetId()) {
			continue
		}
		want := primaryLabels(s, pod)
		if !maps.Equal(s.Labels, want) {
			err := retryBusy(ctx, func() error { return p.m.SetLabels(ctx, s.Name, want) })
			if err != nil {
				if !errors.Is(err, netmgr.ErrNotFound) {
					p.log.Warn("label primary sandbox", "pod", podRef(pod), "sandbox", s.Name, "error", err.Error())
				}
				continue
			}
		}
		names = append(names, s.Name)
	}
	slices.Sort(names)
	return names
}

// timed runs a hook, logs its duration (the "ms" field; the integration test and bench/nri read it)
// and bounds it by hookCallBudget.
func (p *plugin) timed(ctx context.Context, hook string, pod *api.PodSandbox, fn func(context.Context) error) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, hookCallBudget)
	defer cancel()
	start := time.Now()
	err := fn(ctx)
	d := time.Since(start)
	level := slog.LevelInfo
	if err != nil || d > hookSlowWarn {
		level = slog.LevelWarn
	}
	attrs := []any{"hook", hook, "pod", podRef(pod), "pod_id", pod.GetId(), "ms", float64(d.Microseconds()) / 1000}
	if err != nil {
		attrs = append(attrs, "error", err.Error())
	}
	p.log.Log(ctx, level, "hook", attrs...)
	return err
}

// RunPodSandbox attaches the extra networks the pod's annotation names, after CNI set up its primary
// network. A bad annotation fails the pod, and nothing of it is left attached.
func (p *plugin) RunPodSandbox(ctx context.Context, pod *api.PodSandbox) error {
	return p.timed(ctx, "RunPodSandbox", pod, func(ctx context.Context) error {
		nets, err := parseNetworks(pod.GetAnnotations()[NetworksAnnotation], pod.GetNamespace())
		if err != nil {
			return p.podError(pod, err)
		}
		netns := podNetNS(pod)
		if netns == "" {
			if len(nets) > 0 {
				return p.podError(pod, errors.New(hostNetworkMsg+": drop the annotation or hostNetwork"))
			}
			return nil
		}
		sbs, err := p.m.Sandboxes(ctx)
		if err != nil {
			return fmt.Errorf("netmgr-nri: list netmgr sandboxes: %w", err)
		}
		primary := p.labelPrimary(ctx, pod, sbs)
		if err := p.ensure(ctx, pod, nets, netns, primary); err != nil {
			return p.podError(pod, p.explain(ctx, nets, err))
		}
		return nil
	})
}

// StopPodSandbox detaches everything, before CRI tears down the primary network and removes the
// namespace.
func (p *plugin) StopPodSandbox(ctx context.Context, pod *api.PodSandbox) error {
	return p.timed(ctx, "StopPodSandbox", pod, func(ctx context.Context) error {
		return p.remove(ctx, pod.GetId(), netmgr.NamespaceGoing())
	})
}

// RemovePodSandbox is StopPodSandbox again (idempotent), for a pod whose stop this plugin missed.
func (p *plugin) RemovePodSandbox(ctx context.Context, pod *api.PodSandbox) error {
	return p.timed(ctx, "RemovePodSandbox", pod, func(ctx context.Context) error {
		return p.remove(ctx, pod.GetId())
	})
}

// Synchronize reconciles with the pods the runtime has, at every (re)connect: pods that run get what
// their annotation names and lack; netmgr-nri sandboxes of pods that are gone, or whose namespace is,
// are removed.
func (p *plugin) Synchronize(ctx context.Context, pods []*api.PodSandbox, _ []*api.Container) ([]*api.ContainerUpdate, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, syncCallBudget)
	defer cancel()
	start := time.Now()
	sbs, err := p.m.Sandboxes(ctx)
	if err != nil {
		return nil, fmt.Errorf("netmgr-nri: list netmgr sandboxes: %w", err)
	}
	have := map[string]*netmgr.Sandbox{}
	for _, s := range sbs {
		have[s.Name] = s
	}
	keep := map[string]bool{}
	var attached, removed, failed int
	for _, pod := range pods {
		netns := podNetNS(pod)
		if netns == "" || !nsAlive(netns) {
			continue
		}
		nets, err := parseNetworks(pod.GetAnnotations()[NetworksAnnotation], pod.GetNamespace())
		if err != nil {
			// Such a pod failed its RunPodSandbox; the runtime still lists it until it is removed.
			p.log.Warn("synchronize: bad annotation", "pod", podRef(pod), "error", err.Error())
			nets = nil
		}
		name := sandboxName(pod.GetId())
		keep[name] = true
		primary := p.labelPrimary(ctx, pod, sbs)
		if s := have[name]; s != nil && s.NetNS == netns && complete(s, nets) && maps.Equal(s.Labels, labels(pod, nets, primary)) {
			continue
		}
		if err := p.ensure(ctx, pod, nets, netns, primary); err != nil {
			failed++
			p.log.Warn("synchronize: attach", "pod", podRef(pod), "error", err.Error())
			continue
		}
		attached++
	}
	for _, s := range sbs {
		if !strings.HasPrefix(s.Name, sandboxPrefix) || s.Labels[LabelPodID] == "" || keep[s.Name] {
			continue
		}
		if err := retryBusy(ctx, func() error { return p.m.DeleteSandbox(ctx, s.Name) }); err != nil {
			failed++
			p.log.Warn("synchronize: detach", "pod", s.Labels[LabelPod], "error", err.Error())
			continue
		}
		removed++
	}
	p.log.Info("synchronize", "pods", len(pods), "completed", attached, "removed", removed, "failed", failed,
		"ms", float64(time.Since(start).Microseconds())/1000)
	return nil, nil
}

// sweep removes the records of pods whose network namespace is gone: CRI removes it at
// StopPodSandbox, so this catches every stop the plugin was not told of. containerd 2.2 keeps what it
// told NRI plugins in memory only: after a restart of containerd it sends no StopPodSandbox or
// RemovePodSandbox for pods that were running before, and nothing would detach them otherwise.
func (p *plugin) sweep(ctx context.Context) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.m == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, syncCallBudget)
	defer cancel()
	sbs, err := p.m.Sandboxes(ctx)
	if err != nil {
		p.log.Warn("sweep: list netmgr sandboxes", "error", err.Error())
		return
	}
	for _, s := range sbs {
		if !strings.HasPrefix(s.Name, sandboxPrefix) || s.Labels[LabelPodID] == "" || nsAlive(s.NetNS) {
			continue
		}
		if err := retryBusy(ctx, func() error { return p.m.DeleteSandbox(ctx, s.Name) }); err != nil {
			p.log.Warn("sweep: detach", "pod", s.Labels[LabelPod], "error", err.Error())
			continue
		}
		p.log.Info("sweep: detached pod whose namespace is gone", "pod", s.Labels[LabelPod], "pod_id", s.Labels[LabelPodID])
	}
}

// complete reports whether the sandbox is attached to every network of nets.
func complete(s *netmgr.Sandbox, nets []extraNetwork) bool {
	for _, n := range nets {
		if !slices.ContainsFunc(s.Attachments, func(a netmgr.Attachment) bool { return a.Network == n.Network }) {
			return false
		}
	}
	return true
}

// nsAlive reports whether path is (still) a network namespace.
func nsAlive(path string) bool {
	ns, err := sandbox.Open(path)
	if err != nil {
		return false
	}
	ns.Close()
	return true
}

// ensure makes the pod's sandbox record (its labels, its extra networks) exist: created with every
// attachment at once, which netmgr undoes entirely on failure, or, for a pod recorded already (a
// reconnect), completed with what it lacks.
func (p *plugin) ensure(ctx context.Context, pod *api.PodSandbox, nets []extraNetwork, netns string, primary []string) error {
	name := sandboxName(pod.GetId())
	spec := netmgr.SandboxSpec{Name: name, NetNS: netns, Labels: labels(pod, nets, primary)}
	for _, n := range nets {
		spec.Networks = append(spec.Networks, netmgr.AttachSpec{Network: n.Network, IfName: n.IfName, IPs: n.IPs, MAC: n.MAC})
	}
	err := retryBusy(ctx, func() error { _, err := p.m.CreateSandbox(ctx, spec); return err })
	if !errors.Is(err, netmgr.ErrExists) {
		return err
	}
	sb, gerr := p.m.Sandbox(ctx, name)
	if gerr != nil {
		return err // the ErrExists was about something else (an address, an interface)
	}
	if sb.NetNS != netns {
		// A record of an earlier life of the pod ID (not expected from CRI): start over.
		if err := retryBusy(ctx, func() error { return p.m.DeleteSandbox(ctx, name) }); err != nil {
			return err
		}
		return retryBusy(ctx, func() error { _, err := p.m.CreateSandbox(ctx, spec); return err })
	}
	if !maps.Equal(sb.Labels, spec.Labels) {
		// Its primary record appeared or went, or an earlier version of netmgr-nri wrote it.
		if err := retryBusy(ctx, func() error { return p.m.SetLabels(ctx, name, spec.Labels) }); err != nil {
			return err
		}
	}
	for _, as := range spec.Networks {
		if slices.ContainsFunc(sb.Attachments, func(a netmgr.Attachment) bool { return a.Network == as.Network }) {
			continue
		}
		if err := retryBusy(ctx, func() error { _, err := p.m.Attach(ctx, name, as); return err }); err != nil {
			return err
		}
		p.log.Info("attached missing network", "pod", podRef(pod), "network", as.Network, "interface", as.IfName)
	}
	return nil
}

// remove deletes the pod's sandbox record and its attachments; a pod never recorded is not an error.
func (p *plugin) remove(ctx context.Context, podID string, opts ...netmgr.DeleteOption) error {
	err := retryBusy(ctx, func() error { return p.m.DeleteSandbox(ctx, sandboxName(podID), opts...) })
	if err != nil {
		return fmt.Errorf("netmgr-nri: detach pod %s: %w", podID, err)
	}
	return nil
}

// podError is the one line a kubelet user sees in the pod's events.
func (p *plugin) podError(pod *api.PodSandbox, err error) error {
	v := pod.GetAnnotations()[NetworksAnnotation]
	if len(v) > 200 {
		v = v[:200] + "..."
	}
	return fmt.Errorf("netmgr-nri: pod %s: annotation %s=%q: %s", podRef(pod), NetworksAnnotation, v, strings.Join(strings.Fields(err.Error()), " "))
}

// explain turns a failed attach into what to change: which entry names a network that does not exist
// or an address outside its subnets. Other errors (an address taken, a full network) are netmgr's own
// words. It runs only after a failure, so that the common path pays nothing for it.
func (p *plugin) explain(ctx context.Context, nets []extraNetwork, cause error) error {
	ctx = context.WithoutCancel(ctx)
	for i, n := range nets {
		nw, err := p.m.Network(ctx, n.Network)
		if errors.Is(err, netmgr.ErrNotFound) {
			return fmt.Errorf("entry %d: network %q does not exist on this node: create it (podctl network create %s --driver bridge --subnet CIDR) or fix the annotation",
				i+1, n.Network, n.Network)
		}
		if err != nil {
			continue
		}
		for _, ip := range n.IPs {
			if !slices.ContainsFunc(nw.Subnets, func(s netip.Prefix) bool { return s.Contains(ip) }) {
				return fmt.Errorf("entry %d: address %s is outside network %q's subnets %v", i+1, ip, n.Network, nw.Subnets)
			}
		}
	}
	var me *netmgr.Error
	if errors.As(cause, &me) {
		cause = me.Err // the sandbox's name is netmgr-nri's business, not the user's
	}
	if errors.Is(cause, netmgr.ErrExists) && slices.ContainsFunc(nets, func(n extraNetwork) bool { return len(n.IPs) > 0 }) {
		return fmt.Errorf("%w (another pod or sandbox holds it: give a free address in \"ips\", or leave \"ips\" out)", cause)
	}
	return cause
}

// retryBusy retries op while another process holds an object it needs (netmgr-cni adding the same
// pod's primary network to a network this pod joins, say), for up to busyRetryUntil.
func retryBusy(ctx context.Context, op func() error) error {
	wait := 2 * time.Millisecond
	deadline := time.Now().Add(busyRetryUntil)
	for {
		err := op()
		if !errors.Is(err, netmgr.ErrBusy) || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait = min(2*wait, 50*time.Millisecond)
	}
}
