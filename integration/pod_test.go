package integration

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr/pod"
	"github.com/netmgr/netmgr/netmgr/pod/containerd"
	"github.com/netmgr/netmgr/sandbox"
)

const webPod = `apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  containers:
  - name: httpd
    image: rootfs:ROOTFS
    command: [sh, -c, 'echo "hello from $(hostname)" > /www/index.html && exec httpd -f -p 8080 -h /www']
    ports: [{containerPort: 8080}]
  - name: client
    image: ROOTFS
    command: [sh, -c]
    args: ['while true; do wget -qO- http://127.0.0.1:8080/ && echo "$GREETING"; sleep 0.3; done']
    env: [{name: GREETING, value: fetched}]
`

const peerPod = `apiVersion: v1
kind: Pod
metadata: {name: peer}
spec:
  containers:
  - name: fetch
    image: ROOTFS
    command: [sleep, "3600"]
`

// eventually retries f every 100ms until it returns nil or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %s: %v", what, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestPods runs two pods on a bridge network against a real containerd: the containers of one pod
// talk over 127.0.0.1 and share one hostname, pods talk by pod IP, restarting a container keeps the
// pod's IP and its peer keeps reaching it, and removing the pods leaves nothing behind.
func TestPods(t *testing.T) {
	ph := newPodHost(t)
	ctx := context.Background()
	ph.must(t, "network", "create", "pods", "--driver", "bridge", "--subnet", "10.41.0.0/24")

	ph.mustPod(t, "run", "-f", ph.manifest(t, "web", webPod), "--network", "pods")
	ph.mustPod(t, "run", "-f", ph.manifest(t, "peer", peerPod), "--network", "pods")
	web := ph.inspect(t, "web")
	if len(web.Attachments) != 1 || web.Attachments[0].Network != "pods" || !strings.HasPrefix(web.Attachments[0].IPv4, "10.41.0.") {
		t.Fatalf("web attachments: %+v", web.Attachments)
	}
	if web.NetNS == "" || web.Labels["app"] != "web" || len(web.IPs) != 1 {
		t.Fatalf("web: %+v", web)
	}
	if len(web.Containers) != 2 || web.Containers[0].Name != "httpd" || web.Containers[1].Name != "client" {
		t.Fatalf("web containers: %+v", web.Containers)
	}
	for _, c := range web.Containers {
		if c.State != "running" || c.PID == 0 {
			t.Fatalf("container %s: %+v", c.Name, c)
		}
	}
	webIP := web.IPs[0]

	// Containers of one pod: the client reaches the server over 127.0.0.1 (its log shows the page)
	// and both have the pod's hostname from the pause process's UTS namespace.
	eventually(t, 10*time.Second, "client fetches over 127.0.0.1", func() error {
		out, err := ph.pod(ctx, "logs", "web", "client")
		if err != nil || !strings.Contains(out, "hello from web\nfetched") {
			return fmt.Errorf("client log %q (%v)", out, err)
		}
		return nil
	})
	for _, c := range []string{"httpd", "client"} {
		if out := ph.mustPod(t, "exec", "web", c, "--", "hostname"); strings.TrimSpace(out) != "web" {
			t.Errorf("hostname in %s: %q, want web", c, out)
		}
		if out := ph.mustPod(t, "exec", "web", c, "--", "sh", "-c", "echo $GREETING"); c == "client" && strings.TrimSpace(out) != "fetched" {
			t.Errorf("env in client: %q", out)
		}
	}
	// The exec exit status is passed on.
	if _, err := ph.pod(ctx, "exec", "web", "client", "--", "sh", "-c", "exit 3"); err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("exec exit 3: %v", err)
	}

	// Pods talk by pod IP.
	fetch := func() error {
		out, err := ph.pod(ctx, "exec", "peer", "fetch", "--", "timeout", "5", "wget", "-qO-", "http://"+webIP+":8080/")
		if err != nil || strings.TrimSpace(out) != "hello from web" {
			return fmt.Errorf("peer fetch: %q (%v)", out, err)
		}
		return nil
	}
	eventually(t, 10*time.Second, "peer fetches from web's pod IP", fetch)

	// Restarting the server keeps the pod's IP; the peer reaches it again, and so does the sidecar.
	oldPID := web.Containers[0].PID
	ph.mustPod(t, "restart", "web", "httpd", "--time", "1")
	web2 := ph.inspect(t, "web")
	if web2.IPs[0] != webIP || web2.NetNS != web.NetNS {
		t.Fatalf("after restart: IPs %v netns %s, before %s %s", web2.IPs, web2.NetNS, webIP, web.NetNS)
	}
	if c := web2.Containers[0]; c.State != "running" || c.PID == oldPID {
		t.Fatalf("httpd after restart: %+v (old pid %d)", c, oldPID)
	}
	if web2.Containers[1].PID != web.Containers[1].PID {
		t.Errorf("client restarted too: pid %d -> %d", web.Containers[1].PID, web2.Containers[1].PID)
	}
	eventually(t, 10*time.Second, "peer fetches from web after the restart", fetch)
	before := strings.Count(ph.mustPod(t, "logs", "web", "client"), "fetched")
	eventually(t, 10*time.Second, "client fetches after the restart", func() error {
		if n := strings.Count(ph.mustPod(t, "logs", "web", "client"), "fetched"); n <= before {
			return fmt.Errorf("%d fetches logged, %d before", n, before)
		}
		return nil
	})

	// Table output names both pods with their IPs.
	ls := ph.mustPod(t, "ls")
	if !strings.Contains(ls, "web") || !strings.Contains(ls, webIP) || !strings.Contains(ls, "peer") {
		t.Errorf("pod ls:\n%s", ls)
	}

	ph.mustPod(t, "rm", "web", "peer")
	ph.mustPod(t, "rm", "web") // idempotent
	// A zombie has exited and holds no namespace; its new parent (init) reaps it in its own time.
	if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", web.PausePID)); web.PausePID != 0 && err == nil && !strings.Contains(string(st), ") Z ") {
		t.Errorf("pause process %d still running: %s", web.PausePID, st)
	}
	ph.assertPodsClean(t, "pods")
	ph.must(t, "network", "rm", "pods")
}

const okPod = `apiVersion: v1
kind: Pod
metadata: {name: NAME}
spec:
  containers:
  - name: main
    image: ROOTFS
    command: [sleep, "3600"]
`

// TestPodBadInput: each bad input is one clear error, and nothing is left behind.
func TestPodBadInput(t *testing.T) {
	ph := newPodHost(t)
	ctx := context.Background()
	ph.must(t, "network", "create", "bad", "--driver", "bridge", "--subnet", "10.42.0.0/24")
	named := func(name string) string { return strings.ReplaceAll(okPod, "NAME", name) }

	for _, tc := range []struct {
		name string
		args []string
		yaml string
		want string
	}{
		{"unknown network", []string{"--network", "nope"}, named("a"), `no network named "nope"`},
		{"missing root filesystem", nil, strings.ReplaceAll(named("b"), "ROOTFS", "/nonexistent/rootfs"), "root filesystem /nonexistent/rootfs: no such file or directory"},
		{"malformed manifest", nil, "apiVersion: v1\nkind: Pod\nmetadata: {name: [\n", "manifest"},
		{"not a pod", nil, "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n", `kind is "Deployment", want Pod`},
		{"misspelt field", nil, strings.Replace(named("m1"), "command:", "comand:", 1), `unknown field "spec.containers[0].comand"`},
		{"unsupported field", nil, strings.Replace(named("m2"), "command:", "resources: {limits: {memory: 64Mi}}\n    command:", 1), "spec.containers[0].resources is not supported"},
		{"container fails to start", []string{"--network", "bad"}, named("c") + `  - name: broken
    image: ROOTFS
    command: [/no/such/program]
`, `start container "broken"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"run", "-f", ph.manifest(t, "m", tc.yaml)}, tc.args...)
			_, err := ph.pod(ctx, args...)
			if err == nil {
				t.Fatalf("pod run succeeded, want an error containing %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
			if n := strings.Count(strings.TrimSpace(err.Error()), "\n"); n > 0 {
				t.Errorf("error is %d lines, want one", n+1)
			}
			ph.assertPodsClean(t, "bad")
		})
	}

	t.Run("duplicate pod name", func(t *testing.T) {
		m := ph.manifest(t, "dup", named("dup"))
		ph.mustPod(t, "run", "-f", m, "--network", "bad")
		first := ph.inspect(t, "dup")
		_, err := ph.pod(ctx, "run", "-f", m, "--network", "bad")
		if err == nil || !strings.Contains(err.Error(), `a pod named "dup" exists`) {
			t.Fatalf("second run: %v", err)
		}
		if again := ph.inspect(t, "dup"); again.IPs[0] != first.IPs[0] || again.Containers[0].PID != first.Containers[0].PID {
			t.Errorf("the first pod changed: %+v -> %+v", first, again)
		}
		// A sandbox of the same name that is not a pod is refused too, and left alone.
		ph.must(t, "sandbox", "create", "plain")
		if _, err := ph.pod(ctx, "run", "-f", ph.manifest(t, "plain", named("plain"))); err == nil || !strings.Contains(err.Error(), `a sandbox named "plain" exists (not a pod)`) {
			t.Errorf("pod over a sandbox: %v", err)
		}
		if _, err := ph.pod(ctx, "rm", "plain"); err == nil || !strings.Contains(err.Error(), "not a pod") {
			t.Errorf("pod rm of a sandbox: %v", err)
		}
		ph.must(t, "sandbox", "rm", "plain")
		ph.mustPod(t, "rm", "dup")
		ph.assertPodsClean(t, "bad")
	})

	t.Run("unknown pod or container", func(t *testing.T) {
		for _, args := range [][]string{{"inspect", "ghost"}, {"logs", "ghost", "x"}, {"exec", "ghost", "x", "--", "true"}, {"restart", "ghost", "x"}} {
			if _, err := ph.pod(ctx, args...); err == nil || !strings.Contains(err.Error(), `no pod named "ghost"`) {
				t.Errorf("%v: %v", args, err)
			}
		}
		ph.mustPod(t, "run", "-f", ph.manifest(t, "one", named("one")))
		if _, err := ph.pod(ctx, "exec", "one", "nope", "--", "true"); err == nil || !strings.Contains(err.Error(), `pod "one" has no container "nope" (it has main)`) {
			t.Errorf("exec in unknown container: %v", err)
		}
		ph.mustPod(t, "rm", "one", "ghost")
		ph.assertPodsClean(t, "bad")
	})

	t.Run("containerd not reachable", func(t *testing.T) {
		_, err := ph.podctl(ctx, "--containerd", "/nonexistent/containerd.sock", "pod", "run", "-f", ph.manifest(t, "e", named("e")), "--network", "bad")
		if err == nil || !strings.Contains(err.Error(), "cannot reach containerd at /nonexistent/containerd.sock") || !strings.Contains(err.Error(), "make containerd") {
			t.Fatalf("error %v: want a clear one with how to start containerd", err)
		}
		ph.assertPodsClean(t, "bad")
	})
	ph.must(t, "network", "rm", "bad")
}

// httpGet fetches http://addr/ from a socket made in ns.
func httpGet(ns *sandbox.NetNS, addr string) (string, error) {
	var c net.Conn
	err := ns.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", addr, 2*time.Second)
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	fmt.Fprintf(c, "GET / HTTP/1.0\r\nHost: pod\r\n\r\n")
	b, err := io.ReadAll(c)
	return string(b), err
}

// TestPodHostPort: a container's ports[].hostPort is published on the host through netmgr, reachable
// from outside the host, and gone with the pod.
func TestPodHostPort(t *testing.T) {
	ph := newPodHost(t)
	ph.must(t, "network", "create", "pub", "--driver", "bridge", "--subnet", "10.43.0.0/24")
	out := testutil.NewOutside(t, ph.host.ns)
	ph.mustPod(t, "run", "--network", "pub", "-f", ph.manifest(t, "srv", `apiVersion: v1
kind: Pod
metadata: {name: srv}
spec:
  containers:
  - name: httpd
    image: ROOTFS
    command: [sh, -c, 'echo published > /www/index.html && exec httpd -f -p 8080 -h /www']
    ports: [{containerPort: 8080, hostPort: 18090}]
`))
	target := net.JoinHostPort(out.HostIP.String(), "18090")
	eventually(t, 10*time.Second, "outside fetches through the host port", func() error {
		body, err := httpGet(out.NS, target)
		if err != nil || !strings.HasSuffix(body, "published\n") {
			return fmt.Errorf("%q (%v)", body, err)
		}
		return nil
	})
	ph.mustPod(t, "rm", "srv")
	if _, err := httpGet(out.NS, target); err == nil {
		t.Errorf("host port %s still forwarded after pod rm", target)
	}
	ph.assertPodsClean(t, "pub")
	ph.must(t, "network", "rm", "pub")
}

// TestPodRemains: containers whose sandbox is gone (a run or remove interrupted between the two) are
// listed as an incomplete pod, block a new pod of that name, and go with pod rm.
func TestPodRemains(t *testing.T) {
	ph := newPodHost(t)
	ctx := context.Background()
	rt, err := containerd.New(ctx, ph.ctd.Address, containerd.WithNamespace(ph.ctdNS), containerd.WithDir(filepath.Join(ph.stateDir, "pods")))
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	id := pod.ContainerID("left", "main")
	err = rt.Create(ctx, pod.ContainerConfig{ID: id, Pod: "left",
		Spec:   pod.ContainerSpec{Name: "main", Image: ph.rootfs, Command: []string{"sleep", "3600"}},
		Labels: map[string]string{pod.LabelPod: "left", pod.LabelContainer: "main"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	if ls := ph.mustPod(t, "ls"); !strings.Contains(ls, "left") || !strings.Contains(ls, "Incomplete") {
		t.Errorf("pod ls does not show the remains:\n%s", ls)
	}
	_, err = ph.pod(ctx, "run", "-f", ph.manifest(t, "left", strings.ReplaceAll(okPod, "NAME", "left")))
	if err == nil || !strings.Contains(err.Error(), "pod rm left") {
		t.Errorf("run over remains: %v", err)
	}
	ph.mustPod(t, "rm", "left")
	ph.assertPodsClean(t)
}
