package integration

import (
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/netmgr/netmgr/drivers/routed"
	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr"
)

// assertRoutedClean is assertClean for a routed network: besides the records, pins and locks, no
// host end of a routed veth and no host route or neighbour of subnet (but its unreachable route)
// is left in the host namespace.
func (h *host) assertRoutedClean(t *testing.T, network, subnet string) {
	t.Helper()
	h.assertClean(t, network)
	testutil.WaitNoLinks(t, h.ns, routed.LocalPrefix)
	hh, err := h.ns.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer hh.Close()
	routes, _ := hh.RouteList(nil, netlink.FAMILY_V4)
	for _, r := range routes {
		if r.Dst != nil && strings.HasPrefix(r.Dst.String(), strings.TrimSuffix(subnet, "0/24")) && r.Dst.String() != subnet {
			t.Errorf("route left: %v", r)
		}
	}
}

// TestCrashRoutedSandbox kills podctl at each step of a sandbox create and of its delete on a routed
// network; the next start or gc leaves kernel and store clean, and the address can be taken again.
func TestCrashRoutedSandbox(t *testing.T) {
	h := newHost(t)
	const subnet = "10.46.0.0/24"
	h.must(t, "network", "create", "rcrash", "--driver", "routed", "--subnet", subnet)
	for _, step := range []string{netmgr.StepSandboxReserved, netmgr.StepSandboxNetNS, netmgr.StepSandboxAttached} {
		for _, r := range repairers {
			t.Run("create/"+step+"/"+r.name, func(t *testing.T) {
				h.killAt(t, step, "sandbox", "create", "victim", "--network", "rcrash,ip=10.46.0.50")
				h.must(t, r.args...)
				h.assertRoutedClean(t, "rcrash", subnet)
				h.must(t, "sandbox", "create", "again", "--network", "rcrash,ip=10.46.0.50")
				h.must(t, "sandbox", "rm", "again")
				h.assertRoutedClean(t, "rcrash", subnet)
			})
		}
	}
	for _, step := range []string{netmgr.StepSandboxDeleting, netmgr.StepSandboxDetached, netmgr.StepSandboxUnpinned} {
		for _, r := range repairers {
			t.Run("delete/"+step+"/"+r.name, func(t *testing.T) {
				h.must(t, "sandbox", "create", "victim", "--network", "rcrash,ip=10.46.0.50")
				h.killAt(t, step, "sandbox", "rm", "victim")
				h.must(t, r.args...)
				h.assertRoutedClean(t, "rcrash", subnet)
				h.must(t, "sandbox", "create", "again", "--network", "rcrash,ip=10.46.0.50")
				h.must(t, "sandbox", "rm", "again")
			})
		}
	}
}

// TestCrashRoutedNetwork kills podctl inside a routed network's create and delete: afterwards the
// network is wholly there or wholly gone (no unreachable route without its record), and the name and
// subnet can be used again.
func TestCrashRoutedNetwork(t *testing.T) {
	h := newHost(t)
	const subnet = "10.47.0.0/24"
	hasRoute := func(t *testing.T) bool {
		hh, err := h.ns.NewHandle()
		if err != nil {
			t.Fatal(err)
		}
		defer hh.Close()
		routes, _ := hh.RouteList(nil, netlink.FAMILY_V4)
		for _, r := range routes {
			if r.Dst != nil && r.Dst.String() == subnet {
				return true
			}
		}
		return false
	}
	for _, c := range []struct {
		steps  []string
		before []string
		args   []string
	}{
		{[]string{netmgr.StepNetworkReserved, netmgr.StepNetworkCreated}, nil, []string{"network", "create", "rflaky", "--driver", "routed", "--subnet", subnet}},
		{[]string{netmgr.StepNetworkDeleting, netmgr.StepNetworkRemoved}, []string{"network", "create", "rflaky", "--driver", "routed", "--subnet", subnet}, []string{"network", "rm", "rflaky"}},
	} {
		for _, step := range c.steps {
			for _, r := range repairers {
				t.Run(c.args[1]+"/"+step+"/"+r.name, func(t *testing.T) {
					if c.before != nil {
						h.must(t, c.before...)
					}
					h.killAt(t, step, c.args...)
					h.must(t, r.args...)
					listed := strings.Contains(h.must(t, "network", "ls"), "rflaky")
					if listed != hasRoute(t) {
						t.Fatalf("network listed %v, its unreachable route present %v: not whole", listed, hasRoute(t))
					}
					if listed {
						h.must(t, "network", "rm", "rflaky")
					}
					if hasRoute(t) {
						t.Fatal("the network's route outlived it")
					}
					h.must(t, "network", "create", "rflaky", "--driver", "routed", "--subnet", subnet)
					h.must(t, "network", "rm", "rflaky")
				})
			}
		}
	}
}
