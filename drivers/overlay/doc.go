// Package overlay is the VXLAN driver: one network spans the nodes of a cluster, each node leases a
// subnet of the network's cluster CIDR, and pods on different nodes reach each other by pod IP over
// VXLAN, without NAT between them.
//
// The data path follows flannel's vxlan backend: routed at layer 3, not a bridged layer-2 segment.
// On each node the network has a VXLAN device (nmox<VNI>: learning off, a MAC derived from the node
// and the VNI and kept, the network address of the node's subnet as its one address, the underlay
// address as its local VTEP address, MTU the underlay's less the encapsulation) and a local bridge
// (nmob<VNI>) with the node's gateway, on which the node's pods sit as on a bridge network. The VXLAN
// device is not a bridge port: a pod's packet to a pod on another node is routed by the host to the
// peer's subnet through an onlink route via the peer's VXLAN address (the network address of its
// subnet), whose permanent neighbour entry carries the peer's VTEP MAC, whose FDB entry sends the
// frame to the peer's underlay address. No ARP or broadcast crosses nodes, and nothing is learnt:
// SyncPeers programs every entry from the cluster's records, and removes the ones no peer explains.
//
// Options: vni (1..16777215; chosen at create when not given, unique among overlay networks), port
// (the VXLAN UDP port, 4789), node-prefix (the IPv4 node subnet length, 24) and node-prefix6 (the
// IPv6 one, 64), masquerade (egress leaving the cluster CIDR, true). Join publishes the VTEP MAC in
// NodeView.Attrs under AttrVTEPMAC.
//
// # Privileges
//
// Join, Leave, SyncPeers, Attach, Detach and Collect need CAP_NET_ADMIN in the host namespace.
package overlay
