// Package ipam chooses addresses from a network's subnets: validation of subnets and gateways, the next
// free address after a cursor, and checks of static requests. It holds no state; netmgr persists the
// allocations in its store and passes the taken set in, so one transaction decides each allocation.
package ipam
