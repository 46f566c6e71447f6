// Package macvlan is the macvlan network driver: each sandbox gets a macvlan interface of a parent
// link of the host, with a MAC address of its own, so that pods sit directly on the parent's Ethernet
// segment, addressed from its subnet and routed by its router (the network's gateway). There is no
// bridge, veth or NAT on the way: frames go from the pod's interface to the parent's driver.
//
// Options (--opt): parent=IFACE (required; a link of the Manager's host namespace that is up),
// mode=bridge|private|vepa|passthru (default bridge; the kernel keeps one mode per parent, so networks
// and other macvlans on one parent must agree), shim=true, shim_ip=A[,B], shim_name=IFACE. The MTU is
// the parent's unless the network sets a smaller one.
//
// # The host shim
//
// A macvlan parent does not deliver traffic between the host and its own macvlan children: frames the
// host sends out of the parent go to the wire, not to the macvlans hanging off it, and frames from the
// macvlans to the host's address on the parent are not passed up the parent's stack. So by default the
// host cannot reach its pods (the rest of the segment can). With shim=true the driver gives the host a
// macvlan of its own on the parent (bridge mode, named shim_name), with one host address per subnet
// family (shim_ip, by default the top of each subnet; netmgr never allocates it to a pod) and a /32 or
// /128 route to each pod through it. Host and pods then meet in the parent's macvlan switch. The shim
// needs mode=bridge, the only mode that switches between macvlans of one parent.
//
// # Threading
//
// Host-side work uses the shared host netlink handle; work inside a sandbox uses a handle bound to its
// namespace. No thread changes namespace.
//
// # Privileges
//
// CAP_NET_ADMIN in the host namespace and in the sandbox namespaces.
package macvlan
