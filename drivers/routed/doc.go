// Package routed is the bridge-less driver: every sandbox is a veth pair whose host end carries no
// IPv4 address, the sandbox's addresses are /32 (/128) host addresses, and the host routes each of
// them by a /32 (/128) route on the sandbox's veth (Calico's model). A sandbox's default route is via
// 169.254.1.1, on-link, which the host end answers: by proxy ARP, and, so that a host namespace
// without a route to 169.254.1.1 still works, by a permanent neighbour entry in the sandbox that
// names the host end's MAC. For IPv6 the host end carries the link-local gateway fe80::1 and the
// sandbox routes ::/0 via it. With no bridge there is no port limit: a host runs thousands of
// sandboxes on one network, at a cost per sandbox that does not grow with their number.
//
// Two registered names share the implementation:
//
//   - "routed": local scope (--driver routed --subnet CIDR), the network of the host that made it,
//     on any store.
//   - "routed-global": global scope, on a cluster store: the network's subnets are the cluster
//     CIDRs, each node leases a node subnet as for overlay, and between nodes the kernel routes each
//     peer's node subnet via the peer's underlay address (host-gw, no encapsulation). A peer that is
//     not on this node's underlay segment (no directly connected route reaches it) cannot be routed
//     that way: SyncPeers programs every other peer and fails with ErrOffSegment naming it, which the
//     agent logs. With the option routing=bgp such a peer is no error: the routers between the
//     segments learn every node's subnet from the agents' BGP speakers (netmgr/bgp) and carry the
//     traffic; peers on the segment still get host-gw routes.
//
// Two names rather than one name and a scope option because the Manager decides per driver, not
// per network, whether networks span nodes (a drivers.Joiner).
//
// The host ends of a network's sandboxes are named with a prefix of the network's own (option
// ifprefix, chosen at create: "nmr"/"nmg" and four hex digits), so that the firewall keys the network
// on one interface-name wildcard ("nmr1a2b*") rather than on thousands of names: masquerade,
// isolation from every other network, published ports and hairpin work as for bridge networks.
//
// Neighbour table: every sandbox is a neighbour of the host, and the kernel's neighbour table
// limits (gc_thresh1/2/3, 128/512/1024 entries by default) are one table's for every namespace of
// the machine, exposed only in the initial namespace: at about a thousand sandboxes a host whose
// entries for them were learned by ARP starts failing to resolve new ones ("neighbour table
// overflow"). So the host never learns them: Attach gives the host end a permanent neighbour entry
// for each of the sandbox's addresses (its MAC is known), and the sandbox one for its next hop;
// permanent entries made over netlink are exempt from gc_thresh (Linux 4.19 and later) and are never
// garbage collected. No sysctl of the machine is changed, and the host namespace may be any.
package routed
