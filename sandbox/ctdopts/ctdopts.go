// Package ctdopts gives containerd spec options that make a container join a netmgr sandbox. It is a
// package of its own so that users of package sandbox do not link containerd.
package ctdopts

import (
	"strconv"

	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/netmgr/netmgr/sandbox"
)

// WithNetNS joins the network namespace pinned at path (a sandbox's NetNS).
func WithNetNS(path string) oci.SpecOpts {
	return oci.WithLinuxNamespace(sandbox.LinuxNamespace(path))
}

// WithPauseNamespaces joins the UTS and IPC namespaces of a sandbox's pause process, so that the
// containers of a pod share one hostname and System V IPC, as Kubernetes pods do.
func WithPauseNamespaces(pausePID int) oci.SpecOpts {
	p := "/proc/" + strconv.Itoa(pausePID) + "/ns/"
	return oci.Compose(
		oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.UTSNamespace, Path: p + "uts"}),
		oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.IPCNamespace, Path: p + "ipc"}),
	)
}

// WithResolvConf bind-mounts path (read-only) on the container's /etc/resolv.conf.
func WithResolvConf(path string) oci.SpecOpts { return withFile(path, "/etc/resolv.conf") }

// WithHostsFile bind-mounts path (read-only) on the container's /etc/hosts.
func WithHostsFile(path string) oci.SpecOpts { return withFile(path, "/etc/hosts") }

func withFile(src, dst string) oci.SpecOpts {
	return oci.WithMounts([]specs.Mount{{Destination: dst, Type: "bind", Source: src, Options: []string{"rbind", "ro"}}})
}
