// Package drivers defines the contract between netmgr and its network drivers, and their registry.
//
// A driver creates the plumbing of a network (a bridge, a VXLAN device) and of each endpoint (one
// sandbox on one network). Required behaviour is the small [Driver] interface; optional abilities are
// small extra interfaces ([NamespaceProvider], [AddressProvider], [NetworkRestorer],
// [EndpointRestorer], [UsageReporter], [PeerUpdater], [Firewaller]) found by type assertion. Drivers
// never import package netmgr: everything they need arrives in [Env] and in the [Network] and
// [Endpoint] values, and everything they decide (names, MAC addresses) is written back into those
// values so that netmgr records it before or after the kernel changes.
//
// # Threading
//
// Drivers work on namespaces through netlink handles bound to them and sandbox.NetNS.Do; they never
// switch the calling thread.
package drivers
