// Package sandbox creates, pins, opens and removes the network namespaces that netmgr sandboxes live in.
//
// A sandbox namespace is pinned by a bind mount of its nsfs file under a run directory, so it outlives
// every process in it, the way a pod's pause container keeps its network namespace. Containers join it
// through the runtime-spec LinuxNamespace that [NetNS.LinuxNamespace] returns.
//
// # Threading
//
// Nothing in this package leaves the calling goroutine's OS thread in another namespace. Work on a
// namespace goes through a netlink handle bound to it ([NetNS.NewHandle]); what truly needs the thread
// to be inside the namespace (sysctls, binding a socket, starting a process) goes through [NetNS.Do],
// which runs the function on a fresh locked thread and lets that thread die if it cannot switch back.
//
// # Privileges
//
// Creating, entering and removing namespaces needs CAP_SYS_ADMIN (for setns, unshare and mount) and
// CAP_NET_ADMIN for the netlink work done inside them.
package sandbox
