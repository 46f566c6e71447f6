package integration

import (
	"strings"
	"testing"

	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr"
)

// repairers are the two ways a crash gets repaired: the next podctl start (any command), or podctl gc.
var repairers = []struct {
	name string
	args []string
}{
	{"next-start", []string{"sandbox", "ls"}},
	{"gc", []string{"gc"}},
}

// TestCrashDuringSandboxCreate kills podctl at each step of a sandbox create and checks that the next
// start or gc leaves kernel and store consistent and the address reusable.
func TestCrashDuringSandboxCreate(t *testing.T) {
	h := newHost(t)
	h.must(t, "network", "create", "crash", "--driver", "bridge", "--subnet", "10.41.0.0/24")
	for _, step := range []string{netmgr.StepSandboxReserved, netmgr.StepSandboxNetNS, netmgr.StepSandboxAttached} {
		for _, r := range repairers {
			t.Run(step+"/"+r.name, func(t *testing.T) {
				h.killAt(t, step, "sandbox", "create", "victim", "--network", "crash,ip=10.41.0.50")
				h.must(t, r.args...)
				h.assertClean(t, "crash")
				// The address is free again: a new sandbox can take it.
				h.must(t, "sandbox", "create", "again", "--network", "crash,ip=10.41.0.50")
				h.must(t, "sandbox", "rm", "again")
				h.assertClean(t, "crash")
			})
		}
	}
}

// TestCrashDuringSandboxDelete kills podctl at each step of a sandbox delete.
func TestCrashDuringSandboxDelete(t *testing.T) {
	h := newHost(t)
	h.must(t, "network", "create", "crash", "--driver", "bridge", "--subnet", "10.42.0.0/24")
	for _, step := range []string{netmgr.StepSandboxDeleting, netmgr.StepSandboxDetached, netmgr.StepSandboxUnpinned} {
		for _, r := range repairers {
			t.Run(step+"/"+r.name, func(t *testing.T) {
				h.must(t, "sandbox", "create", "victim", "--network", "crash,ip=10.42.0.50")
				h.killAt(t, step, "sandbox", "rm", "victim")
				h.must(t, r.args...)
				h.assertClean(t, "crash")
				h.must(t, "sandbox", "create", "again", "--network", "crash,ip=10.42.0.50")
				h.must(t, "sandbox", "rm", "again")
			})
		}
	}
}

// TestCrashDuringNetworkCreateAndDelete kills podctl inside network create and delete; afterwards the
// network is either wholly there or wholly gone (bridge, record and firewall rules agree), and the
// same name and subnet can be used again.
func TestCrashDuringNetworkCreateAndDelete(t *testing.T) {
	h := newHost(t)
	for _, step := range []string{netmgr.StepNetworkReserved, netmgr.StepNetworkCreated} {
		for _, r := range repairers {
			t.Run(step+"/"+r.name, func(t *testing.T) {
				h.killAt(t, step, "network", "create", "flaky", "--driver", "bridge", "--subnet", "10.43.0.0/24")
				h.must(t, r.args...)
				if out := h.must(t, "network", "ls"); strings.Contains(out, "flaky") {
					t.Fatalf("interrupted network create left the network:\n%s", out)
				}
				if testutil.HasLink(t, h.ns, "nm-flaky") {
					t.Fatal("interrupted network create left its bridge")
				}
				h.must(t, "network", "create", "flaky", "--driver", "bridge", "--subnet", "10.43.0.0/24")
				h.must(t, "network", "rm", "flaky")
			})
		}
	}
	for _, step := range []string{netmgr.StepNetworkDeleting, netmgr.StepNetworkRemoved} {
		for _, r := range repairers {
			t.Run(step+"/"+r.name, func(t *testing.T) {
				h.must(t, "network", "create", "flaky", "--driver", "bridge", "--subnet", "10.43.0.0/24")
				h.killAt(t, step, "network", "rm", "flaky")
				h.must(t, r.args...)
				if out := h.must(t, "network", "ls"); strings.Contains(out, "flaky") {
					t.Fatalf("interrupted network delete left the network:\n%s", out)
				}
				if testutil.HasLink(t, h.ns, "nm-flaky") {
					t.Fatal("interrupted network delete left its bridge")
				}
				h.must(t, "network", "create", "flaky", "--driver", "bridge", "--subnet", "10.43.0.0/24")
				h.must(t, "network", "rm", "flaky")
			})
		}
	}
}
