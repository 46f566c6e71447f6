package integration

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// heavy are the module paths an embedder of the Manager must not link (issue 8, part 4): the
// containerd client, the CRI API, grpc, cobra, libcni and OpenTelemetry. Each is a prefix of import
// paths.
var heavy = []string{
	"github.com/containerd/",
	"k8s.io/cri-api",
	"google.golang.org/grpc",
	"github.com/spf13/cobra",
	"github.com/containernetworking/",
	"go.opentelemetry.io/",
}

// TestEmbedderDeps builds integration/embedder, a program of its own module that imports only the
// Manager and the bridge driver, against this checkout (a replace directive), and fails naming every
// package of containerd, cri-api, grpc, cobra, libcni or OpenTelemetry that `go list -deps` finds in
// it, with the chain of imports that pulls it in. It logs the program's size, stripped and not (the
// figures in the README's Embedding paragraph).
// It needs no network: the module cache that built this repository holds everything (GOFLAGS=-mod=mod,
// and go.sum is this repository's).
func TestEmbedderDeps(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("needs the go command")
	}
	root := RepoRoot()
	dir := copyEmbedder(t, root)

	checkLight(t, dir, "example.com/embedder", "a program that imports only the Manager and the bridge driver",
		"github.com/netmgr/netmgr/netmgr", "github.com/netmgr/netmgr/drivers/bridge")
	// The pod facade too: its containerd Runtime is a package apart (netmgr/pod/containerd).
	checkLight(t, dir, "github.com/netmgr/netmgr/netmgr/pod", "the pod facade (netmgr/pod)", "github.com/netmgr/netmgr/netmgr")

	for _, v := range []struct{ name, ldflags string }{{"not stripped", ""}, {"stripped (-ldflags=-s -w)", "-s -w"}} {
		bin := filepath.Join(t.TempDir(), "embedder")
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags="+v.ldflags, "-o", bin, ".")
		// Static, as make build builds podctl, so that the sizes compare.
		cmd.Dir, cmd.Env = dir, append(embedderEnv(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build of the embedder: %v\n%s", err, out)
		}
		if fi, err := os.Stat(bin); err == nil {
			t.Logf("embedder binary, %s: %.1f MiB", v.name, float64(fi.Size())/(1<<20))
		}
	}
}

// checkLight fails the test naming every package of the heavy modules that pkg, listed in the
// module at dir, links, each with a chain of imports that pulls it in. want are packages pkg must link
// (else the check proves nothing).
func checkLight(t *testing.T, dir, pkg, what string, want ...string) {
	t.Helper()
	deps := goListDeps(t, dir, pkg)
	for _, w := range append([]string{pkg}, want...) {
		if _, ok := deps[w]; !ok {
			t.Fatalf("go list -deps %s lacks %s: the check would prove nothing", pkg, w)
		}
	}
	var bad []string
	for p := range deps {
		for _, h := range heavy {
			if strings.HasPrefix(p, h) {
				bad = append(bad, p)
			}
		}
	}
	if len(bad) > 0 {
		var b strings.Builder
		for _, p := range slices.Sorted(slices.Values(bad)) {
			fmt.Fprintf(&b, "\n  %s (via %s)", p, strings.Join(importChain(deps, pkg, p), " -> "))
		}
		t.Errorf("%s links %d package(s) it must not:%s", what, len(bad), b.String())
	}
}

// copyEmbedder copies integration/embedder to a temporary directory, with its replace directive
// pointing at root and this repository's go.sum beside its own, so that the test writes nothing in
// the checkout and needs no checksum from the network when the repository's requirements change.
func copyEmbedder(t *testing.T, root string) string {
	t.Helper()
	src := filepath.Join(root, "integration", "embedder")
	dir := t.TempDir()
	for _, f := range []string{"main.go", "go.mod"} {
		b, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			t.Fatal(err)
		}
		if f == "go.mod" {
			b = bytes.ReplaceAll(b, []byte("=> ../.."), []byte("=> "+root))
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var sum []byte
	for _, f := range []string{filepath.Join(src, "go.sum"), filepath.Join(root, "go.sum")} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		sum = append(sum, b...)
	}
	if err := os.WriteFile(filepath.Join(dir, "go.sum"), sum, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func embedderEnv() []string {
	return append(os.Environ(), "GOFLAGS=-mod=mod", "GOWORK=off")
}

// goListDeps returns every package pkg links, listed in the module at dir, each with its imports.
func goListDeps(t *testing.T, dir, pkg string) map[string][]string {
	t.Helper()
	if pkg == "example.com/embedder" {
		pkg = "."
	}
	cmd := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}} {{join .Imports \" \"}}", pkg)
	cmd.Dir, cmd.Env = dir, embedderEnv()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps in %s: %v\n%s", dir, err, stderr.String())
	}
	deps := map[string][]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(l)
		if len(f) > 0 {
			deps[f[0]] = f[1:]
		}
	}
	return deps
}

// importChain returns a shortest chain of imports from "from" to "to".
func importChain(deps map[string][]string, from, to string) []string {
	prev := map[string]string{from: ""}
	queue := []string{from}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if p == to {
			var chain []string
			for ; p != ""; p = prev[p] {
				chain = append([]string{p}, chain...)
			}
			return chain
		}
		for _, q := range deps[p] {
			if _, seen := prev[q]; !seen {
				prev[q] = p
				queue = append(queue, q)
			}
		}
	}
	return []string{from, "?", to}
}
