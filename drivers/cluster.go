package drivers

import (
	"context"
	"net/netip"
)

// The abilities below are what cluster-scope drivers (overlay, routed) need beside Driver. They split
// a network's life in two, as moby's NetworkAllocate and CreateNetwork do: a cluster-wide Allocate,
// once per network, when the network is created; and a per-node Join and Leave, on every node that
// carries the network.

// Allocator is implemented by drivers whose networks need cluster-wide resources chosen once, when
// the network is created: a VXLAN VNI, a cluster CIDR from which nodes lease their subnets.
//
// netmgr calls Allocate in network create, after PrepareNetwork and before the network is recorded,
// exactly once per created network (a create that retries because another create committed first
// calls it again with the new taken list, and only the last call's result is recorded). taken holds
// every other network of this driver, with what their own Allocate recorded. Allocate writes its
// choices into n.Options (which netmgr records with the network and passes to every later call, on
// every node) and must not touch the kernel; it refuses a conflict with taken (ErrExists, ErrFull).
type Allocator interface {
	Allocate(ctx context.Context, n *Network, taken []*Network) error
}

// NodeView is one node's own view of a cluster-scope network: what its node lease gave it, and what
// its Join published for the other nodes.
type NodeView struct {
	Node    string         // the node's identity (the Manager's node name)
	Subnets []netip.Prefix // the node's subnets, leased from the network's cluster CIDR; one per family
	// Gateways are the node's gateways, one per subnet in the same order (a routed network may use
	// a link-local next hop instead and leave them empty).
	Gateways []netip.Addr
	// Underlay is the node's address that other nodes reach it by (the VTEP address of an overlay).
	Underlay netip.Addr
	// Attrs are per-node attributes that Join chose and that peers need to reach the node (the
	// overlay's VTEP MAC, under "vtep_mac"). The agent records them in the node's record for the
	// network, and hands them back unchanged in the views it passes to other nodes' SyncPeers.
	Attrs map[string]string
}

// Joiner is implemented by drivers whose networks span nodes and need per-node plumbing: Join
// creates the node's host side of n (the VXLAN device and its bridge, the node subnet's routes) from
// the node's view, and Leave removes it. Both are idempotent.
//
// Join may set node.Attrs (creating the map): the attributes peers need, which the agent publishes
// with the node. A Join run again on the same node (after a restart) gives the same attributes.
//
// The node agent calls them (nothing in this repository does yet): Join when a node first carries
// the network (after it leased its subnet from the cluster store), and again after a restart to make
// sure of it; Leave when the node stops carrying it or the network is deleted. n is the network as
// recorded (n.Subnets the cluster CIDR). Endpoint calls on the node (PrepareEndpoint, Attach) then
// see the node's subnet in n.Subnets and its gateways in n.Gateways: netmgr allocates endpoint
// addresses from the node's view, never the cluster CIDR.
type Joiner interface {
	Join(ctx context.Context, n *Network, node *NodeView) error
	Leave(ctx context.Context, n *Network, node NodeView) error
}

// PeerSyncer is implemented by cluster-scope drivers whose nodes need per-peer plumbing (the
// overlay's neighbour, FDB and route entries; a routed driver's routes via each peer's underlay).
//
// SyncPeers makes this node's host side of n (which Join made) reach exactly peers: full state,
// replace semantics, idempotent. It adds or replaces what each peer needs and removes every peer
// entry of n's devices that no peer in the list explains, also entries left from before a restart
// or planted by someone else (flannel#2554: stale routes survive a restart), so the agent calls it
// at start with the peers the store holds, and again whenever the set or a peer's view changes.
// self is this node's view (as Join saw it); a peer with self's name is ignored. n is the network as
// recorded. A peer that cannot be programmed (no underlay address, an attribute its Join would not
// have published, a subnet outside the cluster CIDR or overlapping another's) makes SyncPeers fail
// with ErrInvalid before it changes anything; the agent leaves such a record out.
type PeerSyncer interface {
	SyncPeers(ctx context.Context, n *Network, self NodeView, peers []NodeView) error
}
