package keeper

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/netmgr/netmgr/netmgr/pod"
	"github.com/netmgr/netmgr/sandbox"
)

// prober runs one probe of one run of a container (its PID): a new run gets a new prober, whose
// initial delay counts from then.
type prober struct {
	pod, id  string
	pid      uint32
	liveness bool
	p        pod.Probe
	netns    string
	host     string
	cancel   context.CancelFunc
}

func proberKey(id string, liveness bool) string {
	if liveness {
		return id + "/liveness"
	}
	return id + "/readiness"
}

// syncProbes starts the probers of p's running containers and stops those of containers that no
// longer run (as they are). Called with k.mu held.
func (k *Keeper) syncProbes(ctx context.Context, p *pod.Pod, seen map[string]bool) {
	if p.Sandbox == nil {
		return
	}
	host := "127.0.0.1"
	if ips := p.IPs(); len(ips) > 0 {
		host = ips[0]
	}
	var probed []string
	for _, c := range p.Containers {
		ps, ok := pod.ProbesOf(c)
		if !ok {
			continue
		}
		if ps.Readiness != nil {
			probed = append(probed, c.ID)
		}
		for _, kind := range []struct {
			probe    *pod.Probe
			liveness bool
		}{{ps.Readiness, false}, {ps.Liveness, true}} {
			if kind.probe == nil {
				continue
			}
			key := proberKey(c.ID, kind.liveness)
			old := k.probers[key]
			if c.State != pod.StateRunning {
				if old != nil {
					old.cancel()
					delete(k.probers, key)
				}
				if !kind.liveness {
					k.ready[c.ID] = false
				}
				continue
			}
			seen[key] = true
			if old != nil && old.pid == c.PID {
				continue
			}
			if old != nil {
				old.cancel()
			}
			if !kind.liveness {
				k.ready[c.ID] = false // a new run is not ready until its probe passes
			}
			pctx, cancel := context.WithCancel(ctx)
			pr := &prober{pod: p.Name, id: c.ID, pid: c.PID, liveness: kind.liveness, p: kind.probe.WithDefaults(),
				netns: p.Sandbox.NetNS, host: host, cancel: cancel}
			if pr.p.Host != "" {
				pr.host = pr.p.Host
			}
			k.probers[key] = pr
			go k.runProber(pctx, pr)
		}
	}
	if len(probed) > 0 {
		k.probed[p.Name] = probed
	} else {
		delete(k.probed, p.Name)
	}
}

// stopProbers stops the probers not seen in the last sync. Called with k.mu held.
func (k *Keeper) stopProbers(seen map[string]bool, pods map[string]bool) {
	for key, pr := range k.probers {
		if !seen[key] {
			pr.cancel()
			delete(k.probers, key)
		}
	}
	for name := range k.probed {
		if !pods[name] {
			delete(k.probed, name)
			delete(k.written, name)
		}
	}
}

func (k *Keeper) runProber(ctx context.Context, pr *prober) {
	select {
	case <-ctx.Done():
		return
	case <-time.After(pr.p.InitialDelay):
	}
	t := time.NewTicker(pr.p.Period)
	defer t.Stop()
	fails, oks := 0, 0
	for {
		err := k.probe(ctx, pr)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			fails, oks = 0, oks+1
		} else {
			fails, oks = fails+1, 0
			k.log.Debug("probe failed", "container", pr.id, "liveness", pr.liveness, "err", err)
		}
		switch {
		case pr.liveness && fails >= pr.p.FailureThreshold:
			k.log.Info("liveness probe failed: stopping the container", "container", pr.id, "failures", fails, "err", err)
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), k.opts.StopGrace+10*time.Second)
			if serr := k.rt.Stop(sctx, pr.id, k.opts.StopGrace); serr != nil {
				k.log.Warn("stop after a failed liveness probe", "container", pr.id, "err", serr)
			}
			cancel()
			return // the next run gets a prober of its own
		case !pr.liveness && fails >= pr.p.FailureThreshold:
			k.setReady(ctx, pr, false)
		case !pr.liveness && oks >= pr.p.SuccessThreshold:
			k.setReady(ctx, pr, true)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// setReady records one container's readiness and, if the pod's changed, writes it on the sandbox.
func (k *Keeper) setReady(ctx context.Context, pr *prober, ready bool) {
	k.mu.Lock()
	if cur := k.probers[proberKey(pr.id, false)]; cur != pr {
		k.mu.Unlock()
		return // superseded
	}
	k.ready[pr.id] = ready
	k.mu.Unlock()
	k.writeReady(ctx, pr.pod)
}

// writeReady writes the pod's readiness (every container with a readiness probe passes it) on its
// sandbox when it differs from what was written.
func (k *Keeper) writeReady(ctx context.Context, podName string) {
	k.wmu.Lock()
	defer k.wmu.Unlock()
	k.mu.Lock()
	probed, ok := k.probed[podName]
	ready := ok
	for _, id := range probed {
		ready = ready && k.ready[id]
	}
	last, written := k.written[podName]
	k.mu.Unlock()
	if !ok || (written && last == ready) || k.nm == nil {
		return
	}
	if _, err := k.nm.SetSandboxLabels(ctx, podName, map[string]string{
		pod.LabelReady: strconv.FormatBool(ready), pod.LabelReadySince: time.Now().UTC().Format(time.RFC3339Nano),
	}); err != nil {
		k.log.Warn("record readiness", "pod", podName, "err", err)
		return
	}
	k.log.Info("pod readiness", "pod", podName, "ready", ready)
	k.mu.Lock()
	k.written[podName] = ready
	k.mu.Unlock()
}

// probe runs a probe once, from the pod's network namespace.
func (k *Keeper) probe(ctx context.Context, pr *prober) error {
	ctx, cancel := context.WithTimeout(ctx, pr.p.Timeout)
	defer cancel()
	if len(pr.p.Exec) > 0 {
		code, err := k.rt.Exec(ctx, pr.id, pod.ExecConfig{Args: pr.p.Exec})
		if err != nil {
			return err
		}
		if code != 0 {
			return fmt.Errorf("exit status %d", code)
		}
		return nil
	}
	ns, err := sandbox.Open(pr.netns)
	if err != nil {
		return err
	}
	defer ns.Close()
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := ns.Do(func() (err error) {
			var d net.Dialer
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	if pr.p.TCPPort != 0 {
		c, err := dial(ctx, "tcp", net.JoinHostPort(pr.host, strconv.Itoa(int(pr.p.TCPPort))))
		if err != nil {
			return err
		}
		return c.Close()
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(pr.host, strconv.Itoa(int(pr.p.HTTPPort)))+pr.p.HTTPPath, nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", "netmgr-probe/1")
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode >= 400 {
		return fmt.Errorf("HTTP %s", resp.Status)
	}
	return nil
}
