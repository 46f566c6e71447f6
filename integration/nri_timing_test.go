package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	gocni "github.com/containerd/go-cni"
	"github.com/containernetworking/cni/libcni"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestNRIHookTiming times netmgr-nri's hooks as containerd calls them, from the plugin's own log:
// RunPodSandbox with one and with three extra networks, StopPodSandbox and RemovePodSandbox, for
// NETMGR_NRI_PODS pods of each kind (default 10; bench/nri/run.sh runs 50), beside a CNI ADD and DEL
// of the same attachment (one more bridge interface in the pod's namespace, netmgr IPAM) through
// go-cni and netmgr-cni, as a Multus-style delegate would make it. It reports p50 and p99 (and
// NETMGR_NRI_BENCH_OUT gets the table); it asserts only that every hook and call succeeded, never a
// time (NRI itself fails a pod whose hook exceeds its 2 s timeout).
func TestNRIHookTiming(t *testing.T) {
	n := 10
	if v := os.Getenv("NETMGR_NRI_PODS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			t.Fatalf("NETMGR_NRI_PODS=%q: want a positive number", v)
		}
	}
	c := newCRIHost(t, "nripods", "10.253.0.0/24", withNRI(nil))
	for i, net := range []string{"x1", "x2", "x3"} {
		c.must(t, "network", "create", net, "--driver", "bridge", "--subnet", fmt.Sprintf("10.%d.0.0/24", 240+i))
	}
	plug := c.startNRIPlugin()

	// The CNI side: netmgr-cni on a bridge network of its own, through go-cni from a thread in the
	// test host namespace (go-cni forks the plugin from the calling thread).
	old := libcni.CacheDir
	libcni.CacheDir = t.TempDir()
	t.Cleanup(func() { libcni.CacheDir = old })
	cni, err := gocni.New(gocni.WithPluginDir([]string{nsPluginDir(t, c.ns, buildCNIPlugin(t), debianCNI)}), gocni.WithMinNetworkCount(1), gocni.WithInterfacePrefix("cni"))
	if err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "xcni", "plugins": [
  {"type": "netmgr-cni", "driver": "bridge", "subnets": ["10.243.0.0/24"], "stateDir": %q, "runDir": %q}]}`, c.stateDir, c.runDir)
	if err := cni.Load(gocni.WithConfListBytes([]byte(conf))); err != nil {
		t.Fatal(err)
	}
	inHost := func(fn func() error) error {
		return c.ns.Do(fn)
	}

	type pod struct{ name, id, netns string }
	var ones, threes []*pod
	run := func(name, ann string) *pod {
		ctx, cancel := c.ctx()
		defer cancel()
		cfg := c.sandboxConfig(name)
		cfg.Annotations = map[string]string{nriAnnotation: ann}
		r, err := c.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg})
		if err != nil {
			t.Fatalf("RunPodSandbox %s: %v", name, err)
		}
		c.ids = append(c.ids, r.PodSandboxId)
		return &pod{name: name, id: r.PodSandboxId}
	}
	start := time.Now()
	for i := range n {
		ones = append(ones, run(fmt.Sprintf("one-%d", i), "x1"))
		threes = append(threes, run(fmt.Sprintf("three-%d", i), "x1,x2,x3"))
	}
	recs := c.nriSandboxes()
	for _, p := range append(append([]*pod{}, ones...), threes...) {
		s, ok := recs[p.id]
		want := 1
		if strings.HasPrefix(p.name, "three-") {
			want = 3
		}
		if !ok || len(s.Attachments) != want {
			t.Fatalf("pod %s: netmgr-nri record %+v, want %d attachments", p.name, s, want)
		}
		p.netns = s.NetNS
	}
	var cniAdd, cniDel []float64
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	for _, p := range ones {
		err := inHost(func() error {
			t0 := time.Now()
			_, err := cni.Setup(context.Background(), p.id, p.netns)
			cniAdd = append(cniAdd, ms(time.Since(t0)))
			return err
		})
		if err != nil {
			t.Fatalf("CNI ADD into %s: %v", p.name, err)
		}
	}
	for _, p := range ones {
		err := inHost(func() error {
			t0 := time.Now()
			err := cni.Remove(context.Background(), p.id, p.netns)
			cniDel = append(cniDel, ms(time.Since(t0)))
			return err
		})
		if err != nil {
			t.Fatalf("CNI DEL from %s: %v", p.name, err)
		}
	}
	for _, p := range append(append([]*pod{}, ones...), threes...) {
		ctx, cancel := c.ctx()
		if _, err := c.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.id}); err != nil {
			t.Fatalf("StopPodSandbox %s: %v", p.name, err)
		}
		if _, err := c.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.id}); err != nil {
			t.Fatalf("RemovePodSandbox %s: %v", p.name, err)
		}
		cancel()
	}
	took := time.Since(start)
	if got := c.nriSandboxes(); len(got) != 0 {
		t.Errorf("netmgr-nri sandboxes left: %d", len(got))
	}

	// The hooks' own times, from the plugin's log, by kind of pod.
	byKind := func(hook, prefix string) []float64 {
		var out []float64
		for _, e := range plug.entries("hook") {
			if e.Hook == hook && strings.HasPrefix(e.Pod, "default/"+prefix) {
				if e.Error != "" {
					t.Errorf("%s of %s failed: %s", hook, e.Pod, e.Error)
				}
				out = append(out, e.Ms)
			}
		}
		return sortedCopy(out)
	}
	var b strings.Builder
	host, _ := os.Hostname()
	fmt.Fprintf(&b, "netmgr-nri hook times, %s UTC, host %s, %d pods of each kind, run took %s\n", time.Now().UTC().Format("2006-01-02 15:04"), host, n, took.Round(time.Second))
	fmt.Fprintf(&b, "containerd %s with CRI and NRI (request timeout 2000 ms), netmgr-cni primary network, bridge networks\n\n", "v2 (go.mod)")
	fmt.Fprintf(&b, "%-46s %4s %8s %8s %8s\n", "what", "N", "p50 ms", "p99 ms", "max ms")
	row := func(what string, v []float64) {
		if len(v) == 0 {
			fmt.Fprintf(&b, "%-46s %4d\n", what, 0)
			return
		}
		fmt.Fprintf(&b, "%-46s %4d %8.2f %8.2f %8.2f\n", what, len(v), percentile(v, 0.5), percentile(v, 0.99), v[len(v)-1])
	}
	row("NRI RunPodSandbox, 1 extra network", byKind("RunPodSandbox", "one-"))
	row("NRI RunPodSandbox, 3 extra networks", byKind("RunPodSandbox", "three-"))
	row("NRI StopPodSandbox, 1 extra network", byKind("StopPodSandbox", "one-"))
	row("NRI StopPodSandbox, 3 extra networks", byKind("StopPodSandbox", "three-"))
	row("NRI RemovePodSandbox (after stop)", byKind("RemovePodSandbox", ""))
	row("CNI ADD, same attachment (go-cni, netmgr-cni)", sortedCopy(cniAdd))
	row("CNI DEL, same attachment (go-cni, netmgr-cni)", sortedCopy(cniDel))
	fmt.Fprintf(&b, "\nhook times are the plugin's own (from its log: entry to return, in the plugin process);\n")
	fmt.Fprintf(&b, "CNI times are go-cni Setup/Remove in the test (one plugin process per call, as containerd calls CNI)\n")
	t.Log("\n" + b.String())
	if out := os.Getenv("NETMGR_NRI_BENCH_OUT"); out != "" {
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(out, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func sortedCopy(v []float64) []float64 {
	out := slices.Clone(v)
	slices.Sort(out)
	return out
}
