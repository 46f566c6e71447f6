// Package drivers defines the contract between netmgr and its network drivers, and their registry.
//
// A driver creates the plumbing of a network (a bridge, a VXLAN device) and of each endpoint (one
// sandbox on one network). Required behaviour is the small [Driver] interface; optional abilities are
// small extra interfaces found by type assertion:
//
//   - [DefaultSubnetter]: the network gets a subnet from the driver's pool when none is given;
//   - [AddressProvider], [AddressReserver]: who assigns endpoint addresses, and which are kept back;
//   - [Firewaller]: host firewall rules keyed on the network's host interfaces, and whether its
//     endpoints can be targets of published ports;
//   - [NetworkRestorer], [EndpointRestorer], [UsageReporter], [Collector]: repair and garbage
//     collection of the driver's own kernel objects;
//   - [Allocator], [Joiner], [PeerSyncer]: the cluster-wide allocation at network create, the
//     per-node join and leave of cluster-scope networks (publishing [NodeView.Attrs] such as a VTEP
//     MAC), and the full-state programming of a node's peers (see cluster.go).
//
// Drivers whose sandboxes sit on a Linux bridge share its host-side plumbing: [AttachVeth],
// [DetachVeth], [EnableForwarding], [NoDAD] and [CollectVeths].
//
// The sandbox's routes are the driver's decision ([Endpoint.Routes]). Host and link are sandbox
// modes (packages host and link), not drivers. Drivers never import package netmgr or its firewall:
// everything they need arrives in [Env] and in the [Network] and [Endpoint] values, and everything
// they decide (names, MAC addresses, routes, options) is written back into those values so that
// netmgr records it before or after the kernel changes.
//
// # Threading
//
// Drivers work on namespaces through netlink handles bound to them and sandbox.NetNS.Do; they never
// switch the calling thread.
package drivers
