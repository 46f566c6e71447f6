// Package pod runs pods: a netmgr sandbox, its network attachments, and the containers that share it,
// started through a small [Runtime] interface. Package netmgr/pod/containerd is the Runtime for a
// containerd 2.x daemon, apart so that a program that does not use it does not link containerd's client.
//
// A pod's network belongs to its sandbox, not to any container: every container joins the sandbox's
// pinned network namespace (and, when the sandbox has a pause process, its UTS and IPC namespaces, so
// the pod has one hostname). A container can therefore be restarted alone and the pod keeps its IP.
//
// A pod keeps no state of its own: netmgr records the sandbox (marked as a pod by the [LabelPod] label,
// with the pod's labels), and the runtime records the containers (labelled with their pod and name).
// Any process with the same netmgr state and the same containerd sees the same pods.
//
// # Images
//
// An image that is an absolute path, or "rootfs:/path", is a local root filesystem directory: each
// container gets a copy-on-write overlay of it, so the directory itself is never written. Anything else
// is an image reference that containerd pulls (or finds in its image store).
//
// # Threading
//
// Nothing here switches a thread into another namespace: the runtime starts containers in the
// sandbox's namespaces by path.
//
// # Privileges
//
// Running pods needs root: netmgr needs CAP_NET_ADMIN and CAP_SYS_ADMIN, and containerd's socket is
// root's.
package pod
