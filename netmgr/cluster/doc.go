// Package cluster is node membership for cluster-scope networks: each host's node record, kept alive
// by a short lease; each node's subnet leases, separate and longer-lived; and the peer watch that tells
// every node's agent the live set of nodes. It works against any store.Store that is a store.Leaser
// (etcd in a cluster; an in-memory store in tests) and touches no kernel.
//
// # Keys
//
//	cluster/nodes/NAME                  Node, JSON; put with the node's lease (TTL DefaultTTL, 10 s)
//	cluster/subnets/NETWORK/ADDR-BITS   {"node", "leased", "renewed"}, JSON; no lease
//
// e.g. cluster/nodes/host1 and cluster/subnets/pods/10.0.3.0-24 (a subnet's '/' is spelt '-', as
// flannel does, so that the last component is the subnet). Both sit beside the Manager's keys
// (networks/..., nodes/NODE/... for a node's runtime records) without touching them.
//
// # Node records
//
// Register writes the node's record with a lease of the TTL, refusing (ErrExists, nothing changed) a
// name whose record is alive and was written by another agent, and starts a goroutine that keeps the
// lease alive every TTL/3. Store errors are logged and retried with backoff; a lease that has ended
// (a store outage longer than the TTL) is granted again and the record written again, and a record
// that vanished under a live lease (RemoveNode) is written again too. The record carries the node's
// underlay address, per network its leased subnets and the driver's attributes (SetAttrs: an overlay's
// VTEP MAC), and a ready flag. Close stops the goroutine and leaves the lease to expire (an agent on
// SIGTERM: the data path stays, peers drop the node within the TTL); Leave revokes it now.
//
// # Subnet leases
//
// A cluster network has a cluster CIDR per family and a node prefix length (ipam.SubnetPool,
// ipam.CheckNodePrefix). LeaseSubnets gives the node one subnet per pool: the one it holds already, so
// a node that comes back under its name gets its subnet again; else a hint (remembered locally); else a
// free one, chosen at random so that nodes joining at once rarely race; else the subnet of a dead node
// whose grace period (DefaultGrace, 24 h, from its last renewal) is over. A subnet is reclaimable only
// when its holder has no live record as well, so a store outage that stopped every renewal reclaims
// nothing. A free subnet is taken with a compare on its key's absence, a dead node's with a compare on
// its lease's revision: two nodes never hold one subnet, whatever the concurrency. The live node renews
// its leases (WithRenewInterval, default grace/24) from the keep-alive goroutine. RemoveNode deletes a
// node's record and frees its subnets at once (`podctl node rm`).
//
// # Peer watch
//
// WatchNodes sends the full set of live nodes after every change by value, coalesced. It lists, then
// watches from the list's revision; a watch that hits compaction lists again at once, any other
// failure after a backoff; and since it compares whole sets by value, an attribute change missed
// while the watch was down is seen after the re-list even though no key came or went (flannel's
// watcher misses those).
//
// The tests of package clustertest take any store (cluster/clustertest.Run), so they run on etcd too.
package cluster
