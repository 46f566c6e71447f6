package main

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"strings"
	"syscall"

	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/sandbox"
)

// DEL hands the destruction of the container's interfaces to a detached child, because deleting an
// interface waits for an RCU grace period (15-20 ms here) while everything else a DEL does takes a few.
// First netmgr deletes the record: it sets the host end (or the macvlan) down, which cuts the container
// off, and then frees the address. Only once that succeeded, DEL renames the interfaces out of the way
// (so the runtime may ADD the same name again at once) and sets them down; a DEL that fails leaves them
// as the record still describes them. Before DEL returns, nothing the container held can clash. The
// child then deletes the renamed interfaces (a veth takes its host end along); if the runtime removes
// the namespace first, the kernel does it. Whatever a killed child leaves is gone with the namespace,
// and its host ends are removed by GC.

// reapEnv makes netmgr-cni a reaper: it deletes the comma-separated interfaces in the network
// namespace open as its fd 3, then exits.
const reapEnv = "NETMGR_CNI_REAP"

// retiredPrefix starts the names of retired interfaces; the reaper deletes nothing else.
const retiredPrefix = "nmgone"

// retire renames the sandbox's interfaces in its namespace to throwaway names and sets them down. It
// returns the namespace, open (nil when it is gone), and the new names.
func retire(sb *netmgr.Sandbox) (*os.File, []string) {
	ns, err := sandbox.Open(sb.NetNS)
	if err != nil {
		return nil, nil
	}
	defer ns.Close()
	h, err := ns.NewHandle()
	if err != nil {
		return nil, nil
	}
	defer h.Close()
	var names []string
	for _, at := range sb.Attachments {
		l, err := h.LinkByName(at.Interface)
		if err != nil {
			continue
		}
		var b [5]byte
		_, _ = rand.Read(b[:])
		name := retiredPrefix + hex.EncodeToString(b[:])[:9]
		// A link must be down to be renamed; failing either, netmgr's delete deals with it as before.
		if h.LinkSetDown(l) != nil || h.LinkSetName(l, name) != nil {
			continue
		}
		names = append(names, name)
	}
	if len(names) == 0 {
		return nil, nil
	}
	f, err := os.Open(sb.NetNS)
	if err != nil {
		return nil, nil
	}
	return f, names
}

// spawnReaper starts the detached child that deletes names in ns; it does not wait for it.
func spawnReaper(ns *os.File, names []string) {
	defer ns.Close()
	self, err := os.Executable()
	if err != nil {
		return
	}
	cmd := exec.Command(self)
	cmd.Env = []string{reapEnv + "=" + strings.Join(names, ",")}
	cmd.ExtraFiles = []*os.File{ns}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	// No stdio: the runtime reads the plugin's stdout until every holder closes it.
	if cmd.Start() == nil {
		_ = cmd.Process.Release()
	}
}

// reap is the reaper's whole life.
func reap(names string) int {
	ns, err := sandbox.Open("/proc/self/fd/3")
	if err != nil {
		return 1
	}
	defer ns.Close()
	h, err := ns.NewHandle()
	if err != nil {
		return 1
	}
	defer h.Close()
	for _, n := range strings.Split(names, ",") {
		if !strings.HasPrefix(n, retiredPrefix) {
			continue
		}
		if l, err := h.LinkByName(n); err == nil {
			_ = h.LinkDel(l)
		}
	}
	return 0
}
