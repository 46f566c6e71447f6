// Command netmgr-cni is a CNI plugin (spec 1.1: ADD, DEL, CHECK, VERSION, STATUS, GC) that attaches
// containers with netmgr's drivers, IPAM and state, so that runtimes speaking CNI — containerd's CRI
// plugin, CRI-O, nerdctl, Kubernetes — use netmgr networks without code changes.
//
// A minimal network configuration list:
//
//	{"cniVersion": "1.1.0", "name": "pods", "plugins": [
//	  {"type": "netmgr-cni", "driver": "bridge", "subnets": ["10.250.0.0/24"],
//	   "capabilities": {"ips": true, "mac": true, "portMappings": true}}]}
//
// The network (here "pods") is created on the first ADD from driver, subnets, gateways, options,
// internal and mtu, and every later command checks the recorded network against the configuration.
// State lives in stateDir (default /var/lib/netmgr, podctl's too) and runDir (default /run/netmgr). Each
// attachment is one netmgr sandbox named after (network, container ID, interface) and labelled with
// them, in the namespace the runtime passes (netmgr never removes that namespace).
//
// # Several interfaces in one container
//
// A container may be added several times with different interface names (eth0, eth1, ...), on one
// network or several, as Multus and nerdctl do for multi-network pods. An attachment adds a default
// route only for a family the namespace has none of, so the first attachment's route stays the
// container's; the results of the others list no default route and name no gateway for that family.
// DEL of the attachment that holds the default route takes it along, and netmgr-cni does not move it
// to another interface: routes of the remaining interfaces are the runtime's to decide.
//
// # Errors
//
// Failures are CNI errors on stdout: 7 for the configuration (with the offending value), 8 for the
// container's netns, 11 to try again, 100 for a full network, 101 for an address, host port or
// interface another holds, 102 for an attachment that exists already in another netns or with other
// addresses, MAC or port mappings than a repeated ADD asks for, 103 for CHECK finding the attachment
// changed, 50 for STATUS, and 999 for anything else, a corrupt state file or a panic included.
//
// # Threading
//
// The plugin works in its own network namespace, the runtime's, for the host side; it enters the
// container's namespace only through netlink handles bound to it.
//
// # Privileges
//
// Root, or CAP_NET_ADMIN and CAP_SYS_ADMIN, like every CNI plugin that creates interfaces.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	// Every driver: a configuration's "driver" may name any of them.
	_ "github.com/netmgr/netmgr/drivers/all"
)

// Version is set at build time with -ldflags "-X main.Version=...".
var Version = "dev"

// supported are the spec versions whose results carry interface indexes; GC and STATUS need 1.1.0.
var supported = version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

func main() {
	if names := os.Getenv(reapEnv); names != "" {
		os.Exit(reap(names))
	}
	// A plugin lives for milliseconds: collecting garbage would only cost time. The limit keeps a GC
	// over a very large state bounded.
	debug.SetGCPercent(-1)
	debug.SetMemoryLimit(256 << 20)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	p := &plugin{ctx: ctx}
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    guard(types.ErrInternal, p.cmdAdd),
		Del:    guard(types.ErrInternal, p.cmdDel),
		Check:  guard(types.ErrInternal, p.cmdCheck),
		GC:     guard(types.ErrInternal, p.cmdGC),
		Status: guard(types.ErrPluginNotAvailable, p.cmdStatus),
	}, supported, "CNI plugin netmgr-cni "+Version+" (netmgr drivers, IPAM and state)")
}

// guard runs a command so that whatever goes wrong ends as the spec wants it, CNI error JSON on
// stdout and exit status 1, never a Go trace: a panic (bbolt asserts on a corrupt state file) or a
// memory fault (a truncated state file is mapped into memory) becomes error code with a one-line
// message. STATUS answers code 50, "plugin not available", as for every other failure of its own.
func guard(code uint, cmd func(*skel.CmdArgs) error) func(*skel.CmdArgs) error {
	return func(args *skel.CmdArgs) (err error) {
		defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
		defer func() {
			if r := recover(); r != nil {
				what := fmt.Sprint(r)
				if f, ok := r.(interface{ Addr() uintptr }); ok && f.Addr() != 0 {
					what = fmt.Sprintf("memory fault at %#x (a truncated state file?)", f.Addr())
				}
				msg := "netmgr-cni internal error: " + strings.Join(strings.Fields(what), " ")
				if code == types.ErrPluginNotAvailable {
					msg = "plugin not available: " + msg
				}
				err = types.NewError(code, msg, "")
			}
		}()
		return cmd(args)
	}
}
