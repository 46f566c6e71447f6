// Package bridge is the docker0-style driver: one Linux bridge per network holding the gateway
// address, a veth pair per endpoint created inside the sandbox with its peer on the bridge, a default
// route via the gateway, NAT masquerade for traffic leaving the subnet, isolation between bridge
// networks, and internal networks without egress.
//
// Options (--opt k=v): bridge=NAME (default "nm-" + network name, or a hash when that is too long),
// masquerade=true|false (default true), hairpin=true|false (default true).
//
// The kernel accepts at most 1024 ports per bridge (BR_MAX_PORTS); the 1024th attach fails with
// "exchange full". The driver reports that as drivers.ErrFull naming the bridge: create a second
// network (another bridge) for more endpoints.
//
// # Threading
//
// All kernel work goes through netlink handles bound to the host and sandbox namespaces; sysctls are
// written through sandbox.NetNS.Do.
package bridge
