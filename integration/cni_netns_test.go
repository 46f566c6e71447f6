package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/netmgr/netmgr/sandbox"
)

// nsPluginDir returns a CNI plugin directory whose every plugin (each executable of dirs, the first
// of a name winning) is a wrapper that runs the real one inside ns with nsenter. go-cni attaches a
// pod's networks in goroutines of its own, so its plugin processes fork from whatever thread those
// run on: running the calls on a thread inside ns (cniHost.do) is not enough, and a plugin forked
// from another thread ran in the machine's root namespace, where netmgr-cni made its bridge and
// firewall table (found after a CI run: nm-xcni, table inet netmgr and iptables-nft FORWARD jumps in
// the root namespace). With the wrappers no plugin can run anywhere but ns.
func nsPluginDir(t *testing.T, ns *sandbox.NetNS, dirs ...string) string {
	t.Helper()
	out := t.TempDir()
	for _, d := range dirs {
		ents, err := os.ReadDir(d)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			real := filepath.Join(d, e.Name())
			fi, err := os.Stat(real)
			if err != nil || !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
				continue
			}
			w := filepath.Join(out, e.Name())
			if _, err := os.Stat(w); err == nil {
				continue
			}
			script := fmt.Sprintf("#!/bin/sh\nexec nsenter --net=%s %s \"$@\"\n", ns.Path(), real)
			if err := os.WriteFile(w, []byte(script), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	return out
}
