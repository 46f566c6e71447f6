//go:build podctl_pod

package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPodUsageErrors: the pod commands refuse bad input, and an unreachable containerd, before touching
// any state, with one line on stderr that says what to do. No privileges needed.
func TestPodUsageErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("apiVersion: v1\nkind: Pod\nmetadata: {name: [\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	good := filepath.Join(dir, "good.yaml")
	if err := os.WriteFile(good, []byte("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: /srv/rootfs, command: [sh]}]}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state")
	dirs := []string{"--state-dir", state, "--run-dir", filepath.Join(dir, "run"), "--containerd", filepath.Join(dir, "no.sock")}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"pod"}, "pod: missing command"},
		{[]string{"pod", "run"}, "-f POD.yaml is required"},
		{[]string{"pod", "run", "-f", filepath.Join(dir, "missing.yaml")}, "read manifest: open " + dir + "/missing.yaml: no such file or directory"},
		{[]string{"pod", "run", "-f", bad}, "bad.yaml: manifest: invalid argument"},
		{[]string{"pod", "run", "-f", good, "--network", "n,foo=bar"}, `unknown key "foo"`},
		{[]string{"pod", "run", "-f", good}, "cannot reach containerd at " + dir + "/no.sock: no such file or directory; start one with `make containerd`"},
		{[]string{"pod", "ls"}, "cannot reach containerd"},
		{[]string{"pod", "inspect"}, "pod inspect: want NAME"},
		{[]string{"pod", "exec", "p", "c"}, "pod exec: want NAME CONTAINER -- CMD"},
		{[]string{"pod", "exec", "p", "c", "--"}, "pod exec: want NAME CONTAINER -- CMD"},
		{[]string{"pod", "logs", "p"}, "pod logs: want NAME CONTAINER"},
		{[]string{"pod", "restart", "p", "c", "-t", "-1"}, "--time -1"},
		{[]string{"pod", "rm"}, "pod rm: want at least one NAME"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(append(append([]string{}, dirs...), tc.args...), &stdout, &stderr)
		msg := stderr.String()
		if code != 1 || !strings.Contains(msg, tc.want) || strings.Count(msg, "\n") != 1 {
			t.Errorf("podctl %v: status %d, stderr %q; want status 1 and one line containing %q", tc.args, code, msg, tc.want)
		}
	}
	if _, err := os.Stat(state); err == nil {
		t.Errorf("a refused pod command created the state dir")
	}
}
