package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestFaultChecks checks the checker of TestFaultInjection: a clean host passes every check, and each
// kind of damage, made by hand, is reported by exactly the check meant for it (and gone once undone).
func TestFaultChecks(t *testing.T) {
	h := newHost(t)
	f := newFaultRun(t, h, faultConfig{seed: 1, par: 1})
	h.must(t, "network", "create", "k1", "--driver", "bridge", "--subnet", "10.60.0.0/26")
	h.must(t, "network", "create", "k6", "--driver", "bridge", "--subnet", "10.61.0.0/24", "--subnet", "fd00:61::/64")
	h.must(t, "sandbox", "create", "a", "--network", "k1", "--publish", "18080:80", "--pause")
	h.must(t, "sandbox", "create", "b", "--network", "k6", "--network", "k1", "--publish", "18081:81/udp")

	var a, b faultSandbox
	st := f.mustCheck(t, "clean host")
	for _, s := range st.sandboxes {
		switch s.Name {
		case "a":
			a = s
		case "b":
			b = s
		}
	}
	if a.PausePID == 0 || len(a.Attachments) != 1 || len(b.Attachments) != 2 || b.Attachments[0].IPv6 == "" {
		t.Fatalf("unexpected sandboxes: %+v %+v", a, b)
	}
	if len(st.elems) != 3 { // a: tcp any4; b: udp any4 and any6 (its first network is dual-stack)
		t.Fatalf("port elements %v, want 3", st.elems)
	}
	aIf := a.Attachments[0].HostInterface
	aIP := strings.Split(a.Attachments[0].IPv4, "/")[0]
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	inHost := func(args ...string) { t.Helper(); run(append([]string{"nsenter", "--net=" + h.ns.Path()}, args...)...) }
	inA := func(args ...string) { t.Helper(); run(append([]string{"nsenter", "--net=" + a.NetNS}, args...)...) }
	file := func(rel string) string { return filepath.Join(h.runDir, rel) }
	touch := func(rel string) {
		t.Helper()
		if err := os.WriteFile(file(rel), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	rm := func(rel string) {
		t.Helper()
		if err := os.Remove(file(rel)); err != nil {
			t.Fatal(err)
		}
	}
	var stray *exec.Cmd

	cases := []struct {
		name       string
		damage     func()
		undo       func()
		check, msg string // the one check that must fail, and a part of its message
	}{
		{"stray veth", func() { inHost("ip", "link", "add", "nmv0000000dead", "type", "veth", "peer", "name", "tmppeer0") },
			func() { inHost("ip", "link", "del", "nmv0000000dead") }, "veth-leak", "nmv0000000dead"},
		{"stray bridge", func() { inHost("ip", "link", "add", "nm-stray", "type", "bridge") },
			func() { inHost("ip", "link", "del", "nm-stray") }, "bridge-leak", "nm-stray"},
		{"host end off its bridge", func() { inHost("ip", "link", "set", aIf, "nomaster") },
			func() { inHost("ip", "link", "set", aIf, "master", "nm-k1") }, "host-link", "has master"},
		{"host end down", func() { inHost("ip", "link", "set", aIf, "down") },
			func() { inHost("ip", "link", "set", aIf, "up") }, "host-link", "is down"},
		{"bridge without netmgr's alias", func() { inHost("ip", "link", "set", "nm-k1", "alias", "someone-else") },
			func() { inHost("ip", "link", "set", "nm-k1", "alias", "netmgr:"+f.networkID(t, "k1")) }, "host-link", "alias"},
		{"gateway address gone", func() { inHost("ip", "addr", "del", "10.60.0.1/26", "dev", "nm-k1") },
			func() { inHost("ip", "addr", "add", "10.60.0.1/26", "dev", "nm-k1") }, "host-link", "lacks gateway"},
		{"stray pin file", func() { touch("netns/ghost") }, func() { rm("netns/ghost") }, "pin-leak", "ghost"},
		{"stray lock file", func() { touch("locks/sandbox-ghost.lock") }, func() { rm("locks/sandbox-ghost.lock") }, "lock-leak", "sandbox-ghost"},
		{"stray network lock file", func() { touch("locks/network-ghost.lock") }, func() { rm("locks/network-ghost.lock") }, "lock-leak", "network-ghost"},
		{"stray pause file", func() { touch("pause/ghost") }, func() { rm("pause/ghost") }, "pause-file-leak", "ghost"},
		{"stray pause process", func() {
			stray = exec.Command(pauseBin())
			if err := stray.Start(); err != nil {
				t.Fatal(err)
			}
		}, func() { _ = stray.Process.Kill(); _ = stray.Wait() }, "pause-leak", "without a sandbox"},
		{"stray nft element", func() {
			inHost("nft", "add", "element", "inet", "netmgr_ports", "any4", "{ tcp . 19999 : 10.60.0.50 . 80 }")
		}, func() { inHost("nft", "delete", "element", "inet", "netmgr_ports", "any4", "{ tcp . 19999 }") }, "nft-leak", "19999"},
		{"nft element gone", func() { inHost("nft", "delete", "element", "inet", "netmgr_ports", "any4", "{ tcp . 18080 }") },
			func() { h.must(t, "gc") }, "nft-missing", aIP + ":80"},
		{"firewall rules gone", func() { inHost("nft", "delete", "table", "inet", "netmgr") },
			func() { h.must(t, "gc") }, "fw-rules", "no inet netmgr rule"},
		{"unrecorded address in a sandbox", func() { inA("ip", "addr", "add", "10.99.0.5/24", "dev", "eth0") },
			func() { inA("ip", "addr", "del", "10.99.0.5/24", "dev", "eth0") }, "sandbox-netns", "10.99.0.5/24"},
		{"recorded address gone", func() { inA("ip", "addr", "flush", "dev", "eth0", "scope", "global") },
			func() { inA("ip", "addr", "add", a.Attachments[0].IPv4, "dev", "eth0") }, "sandbox-netns", "recorded [" + a.Attachments[0].IPv4 + "]"},
		{"unrecorded interface in a sandbox", func() { inA("ip", "link", "add", "x0", "type", "veth", "peer", "name", "x1") },
			func() { inA("ip", "link", "del", "x0") }, "sandbox-netns", "interface x0 is not in the record"},
		{"interface renamed in a sandbox", func() {
			inA("ip", "link", "set", "eth0", "down")
			inA("ip", "link", "set", "eth0", "name", "eth9")
		}, func() {
			inA("ip", "link", "set", "eth9", "name", "eth0")
			inA("ip", "link", "set", "eth0", "up")
		}, "sandbox-netns", "interface eth0 (network k1) is missing"},
	}
	for _, c := range cases {
		c.damage()
		_, probs := f.check()
		var other []string
		found := false
		for _, p := range probs {
			if p.check == c.check && strings.Contains(p.msg, c.msg) {
				found = true
			} else if p.check != c.check {
				other = append(other, p.check+": "+p.msg)
			}
		}
		if !found {
			t.Errorf("%s: check %s did not report %q; problems: %v", c.name, c.check, c.msg, probs)
		}
		if len(other) > 0 {
			t.Errorf("%s: other checks failed too: %v", c.name, other)
		}
		if c.undo != nil {
			c.undo()
			f.mustCheck(t, "after undoing "+c.name)
		}
	}

	// Damage that is not undone: a pin unmounted by hand (the kernel then destroys the namespace and
	// its veths, so the host ends go too), then a pause process killed.
	unmountPin(t, b.NetNS)
	waitLinkCount(t, h, "nmv", 1)
	_, probs := f.check()
	if names := checkNames(probs); names != "host-link pin-missing" {
		t.Errorf("unmounted pin: checks %q failed, want host-link and pin-missing: %v", names, probs)
	}
	_ = syscall.Kill(a.PausePID, syscall.SIGKILL)
	waitGone(t, a.PausePID)
	_, probs = f.check()
	if names := checkNames(probs); names != "host-link pause-missing pin-missing" {
		t.Errorf("killed pause: checks %q failed, want pause-missing (and those from before): %v", names, probs)
	}

	// What cannot be made by hand (podctl refuses it) is checked on a made-up snapshot.
	fake := &faultState{
		networks: []faultNetwork{{Name: "n", Driver: "macvlan", Sandboxes: []string{"x"}}},
		sandboxes: []faultSandbox{
			{Name: "x", Mode: "host", Attachments: []faultAttachment{{Network: "n", Interface: "eth0", IPv4: "10.1.0.2/24"}}},
			{Name: "y", Mode: "host", Attachments: []faultAttachment{{Network: "n", Interface: "eth0", IPv4: "10.1.0.2/24"}, {Network: "gone", Interface: "eth1"}}},
		},
	}
	got := map[string][]string{}
	for _, p := range fake.compare() {
		got[p.check] = append(got[p.check], p.msg)
	}
	if len(got) != 2 || len(got["dup-ip"]) != 1 || len(got["records"]) != 2 {
		t.Errorf("made-up snapshot: %v, want one dup-ip (10.1.0.2) and two records problems (y on a missing network, n's list)", got)
	}
}

// mustCheck runs every check and fails the test on any problem.
func (f *faultRun) mustCheck(t *testing.T, when string) *faultState {
	t.Helper()
	st, probs := f.check()
	if len(probs) > 0 {
		t.Fatalf("%s: %d problem(s): %v", when, len(probs), probs)
	}
	return st
}

func (f *faultRun) networkID(t *testing.T, name string) string {
	t.Helper()
	st, err := f.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range st.networks {
		if n.Name == name {
			return n.ID
		}
	}
	t.Fatalf("no network %s", name)
	return ""
}

func checkNames(probs []faultProblem) string {
	m := map[string]bool{}
	for _, p := range probs {
		m[p.check] = true
	}
	var l []string
	for k := range m {
		l = append(l, k)
	}
	sort.Strings(l)
	return strings.Join(l, " ")
}

func unmountPin(t *testing.T, path string) {
	t.Helper()
	if err := syscall.Unmount(path, syscall.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
}

// waitGone waits until pid is no live process (a zombie counts as gone: it holds nothing).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	for i := 0; i < 200; i++ {
		alive := false
		for _, p := range pausePIDs() {
			if p == pid {
				alive = true
			}
		}
		if !alive {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("process %d still running", pid)
}
