package integration

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/netmgr/netmgr/netmgr/pod/containerd"
)

// podOut runs `podctl pod ARGS...` and returns stdout and stderr apart.
func (ph *podHost) podOut(ctx context.Context, args ...string) (stdout, stderr string, err error) {
	full := append([]string{"--containerd", ph.ctd.Address, "pod", "--containerd-namespace", ph.ctdNS}, args...)
	c := ph.cmd(ctx, full...)
	var o, e bytes.Buffer
	c.Stdout, c.Stderr = &o, &e
	err = c.Run()
	return o.String(), e.String(), err
}

// startRegistry starts a registry in the test host's namespace, stopped at cleanup.
func startRegistry(t *testing.T, ph *podHost, opts RegistryOptions) *Registry {
	t.Helper()
	reg, err := StartRegistry(context.Background(), ph.ns, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("registry log:\n%s", lastLines(reg.Log(), 20))
		}
		if err := reg.Stop(); err != nil {
			t.Errorf("stop registry: %v", err)
		}
	})
	return reg
}

const imagePod = `apiVersion: v1
kind: Pod
metadata: {name: NAME}
spec:
  containers:
  - name: main
    image: IMAGE
    imagePullPolicy: POLICY
`

func imageManifest(ph *podHost, t *testing.T, name, image, policy string) string {
	return ph.manifest(t, name, strings.NewReplacer("NAME", name, "IMAGE", image, "POLICY", policy).Replace(imagePod))
}

// assertNoImages checks that containerd holds no image, no content being written and no snapshot of
// the test's namespace: what a failed pull must leave.
func (ph *podHost) assertNoImages(t *testing.T) {
	t.Helper()
	ctx := namespaces.WithNamespace(context.Background(), ph.ctdNS)
	rt, err := containerd.New(ctx, ph.ctd.Address, containerd.WithNamespace(ph.ctdNS))
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	if imgs, err := rt.Client().ListImages(ctx); err != nil || len(imgs) != 0 {
		t.Errorf("images left: %d (%v)", len(imgs), err)
	}
	if st, err := rt.Client().ContentStore().ListStatuses(ctx); err != nil || len(st) != 0 {
		t.Errorf("content ingests left: %v (%v)", st, err)
	}
	n := 0
	_ = rt.Client().ContentStore().Walk(ctx, func(content.Info) error { n++; return nil })
	if n != 0 {
		t.Logf("content blobs kept: %d (containerd's GC takes them)", n)
	}
}

// TestPodImagePull runs pods from images pulled by reference from a real registry (Debian's
// docker-registry on 127.0.0.1 in the test's namespace, where podctl pulls from): the pull policies,
// plain HTTP only for a named registry, the progress lines, and the failures (unknown image, Never
// with a missing image, a registry that refuses, one that is not there, one that does not answer),
// each one line that leaves nothing behind.
func TestPodImagePull(t *testing.T) {
	ph := newPodHost(t)
	ctx := context.Background()
	reg := startRegistry(t, ph, RegistryOptions{})
	img, err := BusyboxImage("sh", "-c", "echo from-image-cmd; exec sleep 3600")
	if err != nil {
		t.Fatal(err)
	}
	ref, err := reg.Push(ctx, "busybox:test", img)
	if err != nil {
		t.Fatal(err)
	}
	insecure := []string{"--insecure-registry", reg.Host}
	ph.must(t, "network", "create", "img", "--driver", "bridge", "--subnet", "10.43.0.0/24")

	fails := func(what, wantMsg string, maxTook time.Duration, args ...string) {
		t.Helper()
		t0 := time.Now()
		out, stderr, err := ph.podOut(ctx, args...)
		took := time.Since(t0)
		if err == nil {
			t.Fatalf("%s: succeeded: %s", what, out)
		}
		msg := strings.TrimSpace(stderr)
		if strings.Count(msg, "\n") != 0 || !strings.Contains(msg, wantMsg) {
			t.Errorf("%s: want one line with %q, got:\n%s", what, wantMsg, msg)
		}
		if took > maxTook {
			t.Errorf("%s: took %s, want at most %s", what, took, maxTook)
		}
		t.Logf("%s (%s): %s", what, took.Round(time.Millisecond), msg)
		ph.assertPodsClean(t, "img")
		ph.assertNoImages(t)
	}

	// Failures first, while containerd has no image at all.
	fails("https to a plain-HTTP registry", "allow it with --insecure-registry "+reg.Host, 30*time.Second,
		"run", "-f", imageManifest(ph, t, "p1", ref, "IfNotPresent"), "--network", "img")
	fails("unknown image", "no such image in registry "+reg.Host, 30*time.Second,
		append(insecure, "run", "-f", imageManifest(ph, t, "p1", reg.Host+"/nosuch:test", "IfNotPresent"), "--network", "img")...)
	fails("Never and a missing image", "imagePullPolicy is Never", 30*time.Second,
		append(insecure, "run", "-f", imageManifest(ph, t, "p1", ref, "Never"), "--network", "img")...)
	refusing := startRegistry(t, ph, RegistryOptions{RefuseAll: true})
	fails("a registry that refuses", "pull refused", 30*time.Second,
		"--insecure-registry", refusing.Host, "run", "-f", imageManifest(ph, t, "p1", refusing.Host+"/busybox:test", "Always"), "--network", "img")
	// Nothing listens: refused connection.
	var free string
	_ = ph.ns.Do(func() error {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err == nil {
			free = l.Addr().String()
			l.Close()
		}
		return err
	})
	fails("no registry there", "registry unreachable", 30*time.Second,
		"--insecure-registry", free, "run", "-f", imageManifest(ph, t, "p1", free+"/busybox:test", "Always"), "--network", "img")
	// A registry that accepts connections and never answers fails within --registry-timeout.
	var silent net.Listener
	if err := ph.ns.Do(func() (err error) { silent, err = net.Listen("tcp", "127.0.0.1:0"); return err }); err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	var held []net.Conn
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	s := silent.Addr().String()
	fails("a registry that does not answer", "registry unreachable: "+s+" did not answer in time", 20*time.Second,
		"--insecure-registry", s, "--registry-timeout", "2s", "run", "-f", imageManifest(ph, t, "p1", s+"/busybox:test", "Always"), "--network", "img")

	// The pull: progress lines (plain, as a terminal gets them), the image's own command runs.
	_, stderr, err := ph.podOut(ctx, append(insecure, "--progress", "plain", "run", "-f", imageManifest(ph, t, "p1", ref, "IfNotPresent"), "--network", "img")...)
	if err != nil {
		t.Fatalf("run pulled image: %v: %s", err, stderr)
	}
	if !strings.Contains(stderr, "pulling "+ref) || !strings.Contains(stderr, "  layer sha256:") || !strings.Contains(stderr, " done") {
		t.Errorf("progress lines: %q", stderr)
	}
	t.Logf("progress:\n%s", stderr)
	p1 := ph.inspect(t, "p1")
	if len(p1.Containers) != 1 || p1.Containers[0].State != "running" || len(p1.IPs) != 1 {
		t.Fatalf("p1: %+v", p1)
	}
	eventually(t, 10*time.Second, "the image's command runs", func() error {
		if out, err := ph.pod(ctx, "logs", "p1", "main"); err != nil || !strings.Contains(out, "from-image-cmd") {
			return fmt.Errorf("log %q (%v)", out, err)
		}
		return nil
	})

	// Not a terminal: quiet.
	_, stderr, err = ph.podOut(ctx, append(insecure, "run", "-f", imageManifest(ph, t, "p2", ref, "Always"), "--network", "img")...)
	if err != nil || stderr != "" {
		t.Fatalf("run p2 (Always, not a terminal): %v: stderr %q", err, stderr)
	}

	// IfNotPresent with the image present pulls nothing: it runs with the registry gone, and Always
	// does not.
	if err := reg.Stop(); err != nil {
		t.Fatal(err)
	}
	_, stderr, err = ph.podOut(ctx, append(insecure, "--progress", "plain", "run", "-f", imageManifest(ph, t, "p3", ref, "IfNotPresent"), "--network", "img")...)
	if err != nil || stderr != "" {
		t.Fatalf("run p3 (IfNotPresent, registry gone): %v: stderr %q", err, stderr)
	}
	_, stderr, err = ph.podOut(ctx, append(insecure, "run", "-f", imageManifest(ph, t, "p4", ref, "Always"), "--network", "img")...)
	if err == nil || !strings.Contains(stderr, "unreachable") {
		t.Fatalf("run p4 (Always, registry gone): %v: stderr %q", err, stderr)
	}
	if _, _, err := ph.podOut(ctx, "inspect", "p4"); err == nil {
		t.Errorf("p4 exists after a failed pull")
	}
	for _, p := range []string{"p1", "p2", "p3"} {
		if c := ph.inspect(t, p).Containers; len(c) != 1 || c[0].State != "running" {
			t.Errorf("%s: %+v", p, c)
		}
	}
	ph.mustPod(t, "rm", "p1", "p2", "p3")
	if ps := ph.pods(t); len(ps) != 0 {
		t.Errorf("pods left: %+v", ps)
	}
	ph.assertClean(t, "img")
}
