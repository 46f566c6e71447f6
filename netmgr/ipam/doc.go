// Package ipam allocates addresses from pools (a subnet and its gateway): validation of subnets and
// gateways, and an Allocator that owns the choice. Given the pools, reserved addresses, static requests
// and a key prefix, Allocator.Allocate lists the allocations recorded under the prefix (Keys, a small
// part of a store), picks a valid static address or the next free one after this process's cursor, and
// returns the addresses with the store compares and puts that record them. The caller commits those in
// its own transaction, together with whatever the addresses are for, so that the store's compare is what
// keeps two processes from taking one address; within a process the Allocator's pending set keeps
// concurrent goroutines apart until the caller releases the keys. The only state is that cursor and
// pending set; the allocations themselves live in the caller's store.
//
// netmgr uses it for endpoint addresses (prefix "ipam/NETWORK/", one pool per subnet). A service
// cluster-IP allocator is the same: the service CIDR as the one pool, its own key prefix, the service
// as owner (see Request).
package ipam
