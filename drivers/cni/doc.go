// Package cni is a netmgr driver that delegates each attachment to a CNI network configuration, so
// that a sandbox can join any network a CNI plugin provides (Calico, Cilium, the reference bridge,
// macvlan, ...) next to netmgr's own drivers.
//
// A network of driver "cni" names its configuration with options:
//
//	conflist=/etc/cni/net.d/10-mynet.conflist   a .conflist (or single-plugin .conf) file, or
//	confdir=/etc/cni/net.d name=mynet           the network called mynet in that directory
//	path=/opt/cni/bin:/usr/lib/cni              where the plugin binaries are (this is the default)
//	cachedir=/var/lib/cni                       libcni's result cache (default, shared with runtimes)
//
// Attach runs the list's ADD for the sandbox's namespace and interface name, with the endpoint ID as
// the CNI container ID, and Detach its DEL, which also runs when the namespace is already gone. The
// delegated plugins' IPAM chooses the addresses, so the driver is a [drivers.AddressProvider]: netmgr
// records what the result reports instead of allocating. Such networks take no subnets in netmgr.
//
// # Threading
//
// CNI plugins work on the network namespace of their own process for the host side (the bridge
// plugin creates its bridge there, macvlan looks up its master there). The driver therefore starts
// them from a thread inside the Manager's host namespace (sandbox.NetNS.Do): a process forked from a
// thread inherits that thread's namespace. It uses libcni directly rather than go-cni, whose Setup
// runs each network on a new goroutine, which may be a thread in another namespace.
//
// # Privileges
//
// The delegated plugins need what they always need: root, or CAP_NET_ADMIN and CAP_SYS_ADMIN.
package cni
