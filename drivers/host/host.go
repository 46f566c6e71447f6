// Package host is the host sandbox mode (Docker's --network host): the sandbox is the host's own
// network namespace, nothing is created, and containers see the host's interfaces. It is a mode of a
// sandbox (SandboxSpec.Host, podctl sandbox create --host), not a network driver: a network of it
// could never be attached, so netmgr refuses `network create --driver host`.
package host

import "github.com/netmgr/netmgr/sandbox"

// Name is the mode's name, which netmgr refuses as a driver name.
const Name = "host"

// Namespace returns a lasting path of the host's own namespace (not /proc/self, which would name
// whichever process reads it later).
func Namespace(host *sandbox.NetNS) string { return sandbox.StablePath(host) }
