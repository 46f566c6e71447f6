// Package netmgr manages container networking in process: networks, pause-style sandboxes (pinned
// network namespaces that several containers join), their attachments through pluggable drivers, IP
// address management, firewall rules, and recovery after a crash.
//
// A [Manager] keeps its state in a [store.Store] (a bbolt file by default; etcd for clusters) and works
// on the kernel through netlink and nftables. Every create rolls back its own partial work; every delete
// is idempotent; each state change is recorded as an intent before the kernel is touched, so that
// [Manager.Recover] (run by New for interrupted operations, and in full by `podctl gc`) finishes or
// undoes whatever a crashed process left.
//
// Several Managers, in one process or in many, may share one state directory and run directory: records
// are changed only through compare-and-swap transactions and each sandbox or network is guarded by a
// file lock while an operation on it is in flight.
//
// # Threading
//
// No call switches the caller's thread into another namespace; see package sandbox.
//
// # Privileges
//
// Kernel work needs CAP_NET_ADMIN and CAP_SYS_ADMIN (namespaces, mounts) in the host namespace.
package netmgr
