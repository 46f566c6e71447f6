package drivers

import "net/netip"

// AddressReserver is implemented by drivers that keep some addresses of a network's subnets for
// themselves, such as the macvlan driver's host shim. netmgr never allocates them to endpoints and
// refuses them as static addresses (ErrExists), as it does the gateway.
type AddressReserver interface {
	ReservedAddresses(n *Network) []netip.Addr
}
