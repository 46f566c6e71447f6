package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"
)

const probedPod = `apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  restartPolicy: Always
  containers:
  - name: httpd
    image: ROOTFS
    command: [sh, -c, 'touch /tmp/ready && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www']
    ports: [{name: http, containerPort: 8080}]
    readinessProbe: {exec: {command: [test, -f, /tmp/ready]}, periodSeconds: 1, failureThreshold: 1}
    livenessProbe: {httpGet: {path: /index.html, port: http}, periodSeconds: 1, failureThreshold: 2}
  - name: side
    image: ROOTFS
    command: [sleep, "3600"]
    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1, failureThreshold: 1}
`

type probedJSON struct {
	IPs        []string        `json:"ips"`
	Ready      *bool           `json:"ready"`
	ReadySince time.Time       `json:"ready_since"`
	Containers []keptContainer `json:"containers"`
}

func (ph *podHost) probed(t *testing.T) probedJSON {
	t.Helper()
	var p probedJSON
	if err := json.Unmarshal([]byte(ph.mustPod(t, "-o", "json", "inspect", "web")), &p); err != nil {
		t.Fatal(err)
	}
	return p
}

// waitReady waits until the pod's recorded readiness is want and returns how long after since the
// keeper recorded it (its ready_since: what it took the keeper, without this test's polling).
func (ph *podHost) waitReady(t *testing.T, want bool, since time.Time, within time.Duration) time.Duration {
	t.Helper()
	var p probedJSON
	eventually(t, within+20*time.Second, fmt.Sprintf("ready=%t", want), func() error {
		if p = ph.probed(t); p.Ready == nil || *p.Ready != want {
			return fmt.Errorf("ready %v", p.Ready)
		}
		return nil
	})
	took := p.ReadySince.Sub(since)
	if took > within {
		t.Errorf("readiness became %t %s after the change, want at most %s (one period plus 1 s)", want, took.Round(time.Millisecond), within)
	}
	return took
}

// TestPodProbes: the agent's keeper runs exec, tcpSocket and httpGet probes from the pod's namespace.
// The pod's readiness, recorded on its sandbox (netmgr.io/ready, what a services controller reads),
// is false until the probes pass, flips within one period plus 1 s when a readiness probe fails and
// back when it passes; a failing liveness probe restarts the container, which bumps its restart
// count, and the pod keeps its IP.
func TestPodProbes(t *testing.T) {
	ph := newPodHost(t)
	ctx := context.Background()
	ph.must(t, "network", "create", "probe", "--driver", "bridge", "--subnet", "10.45.0.0/24")
	ph.startAgent(t, "--restart-backoff", "500ms", "--stop-grace", "1s")
	ph.mustPod(t, "run", "-f", ph.manifest(t, "web", probedPod), "--network", "probe")
	first := ph.probed(t)
	if first.Ready == nil {
		t.Fatalf("no readiness recorded: %+v", first)
	}
	ph.waitReady(t, true, time.Now(), 10*time.Second)

	// Readiness: the file goes, the pod is unready within a period plus 1 s; it comes back, ready.
	// Measured from when the exec that changed it returned to when the keeper recorded the change.
	ph.mustPod(t, "exec", "web", "httpd", "--", "rm", "/tmp/ready")
	t.Logf("unready after %s", ph.waitReady(t, false, time.Now(), 2*time.Second))
	ph.mustPod(t, "exec", "web", "httpd", "--", "touch", "/tmp/ready")
	t.Logf("ready again after %s", ph.waitReady(t, true, time.Now(), 2*time.Second))

	// Liveness: the page goes, two failed GETs stop httpd, the keeper restarts it (the command
	// writes the page again), the restart count goes up, the IP stays.
	ph.mustPod(t, "exec", "web", "httpd", "--", "rm", "/www/index.html")
	eventually(t, 30*time.Second, "httpd restarted after failed liveness probes", func() error {
		p := ph.probed(t)
		if c := p.Containers[0]; c.Restarts < 1 || c.State != "running" {
			return fmt.Errorf("httpd %+v", c)
		}
		return nil
	})
	ph.waitReady(t, true, time.Now(), 30*time.Second)
	p := ph.probed(t)
	if p.IPs[0] != first.IPs[0] {
		t.Errorf("IP changed: %v -> %v", first.IPs, p.IPs)
	}
	if c := p.Containers[1]; c.Restarts != 0 || c.State != "running" {
		t.Errorf("side restarted: %+v", c)
	}
	if _, err := ph.pod(ctx, "rm", "web"); err != nil {
		t.Fatal(err)
	}
	ph.assertPodsClean(t, "probe")
}
