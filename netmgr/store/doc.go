// Package store keeps netmgr's state as versioned keys with compare-and-swap transactions and watches.
//
// The interface is the small subset of etcd's model that netmgr needs: every key carries the revision of
// its last change, a transaction applies its writes only if every compared key still has the revision
// the caller read (0 meaning "absent"), and a watch streams changes under a prefix. [Bolt] implements it
// on one bbolt file shared safely by goroutines and by separate processes; a cluster implementation on
// etcd plugs in through the same [Store] interface.
//
// # Watch: a change feed
//
// [Store.Watch] is meant for controllers that keep a view of the state up to date, as a Kubernetes
// reflector does: List, then Watch from the revision List returned, and apply each event. The feed
// gives one [Event] per change, in revision order; the changes of one Txn share its revision and come
// in the order of its ops; nothing is coalesced, so a key written twice gives two events. A Watch from
// 0 starts now. When the store no longer keeps the changes the watcher needs, the watch ends with an
// [EventError] whose Err wraps [ErrCompacted] (a [*CompactedError] naming the revision), etcd's
// ErrCompacted: re-list and watch again. Any other failure (the store closed, a damaged file) is also
// an EventError, the last event before the channel closes; only the end of the watch's context closes
// it without one.
//
// [Bolt] records every transaction's changes in a change log in the same bbolt transaction, keeping the
// last 1000 revisions ([WithChangeLog]); a watcher polls the file ([WithWatchInterval]), and a poll
// that finds nothing written reads only the file's meta page.
//
// # Leases
//
// A [Leaser] grants leases: a key put with one ([PutWithLease]) is deleted when its writer stops
// keeping the lease alive, which is how a node's liveness is published in a cluster. It is an optional
// ability, shaped after etcd's clientv3.Lease (Grant, KeepAliveOnce, Revoke, clientv3.WithLease) so
// that an etcd store implements it one to one. [Leases] returns a store's Leaser; the bolt store has
// none, and it, like a Txn with a leased Put on Bolt, gives [ErrNotSupported]: node liveness needs a
// cluster store.
//
// Every call waits for [Bolt]'s file lock only as long as its context allows, and a damaged file is an
// error wrapping [ErrCorrupt] (a [*CorruptError] naming the file) rather than a panic or a memory fault.
package store
