// Package store keeps netmgr's state as versioned keys with compare-and-swap transactions and watches.
//
// The interface is the small subset of etcd's model that netmgr needs: every key carries the revision of
// its last change, a transaction applies its writes only if every compared key still has the revision
// the caller read (0 meaning "absent"), and a watch streams changes under a prefix. [Bolt] implements it
// on one bbolt file shared safely by goroutines and by separate processes; a cluster implementation on
// etcd plugs in through the same [Store] interface.
//
// Every call waits for [Bolt]'s file lock only as long as its context allows, and a damaged file is an
// error wrapping [ErrCorrupt] (a [*CorruptError] naming the file) rather than a panic or a memory fault.
package store
