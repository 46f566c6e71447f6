package store

import (
	"context"
	"errors"
	"fmt"
	"time"
)

var (
	// ErrNotFound is returned by Get for a key that does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict is returned by Txn when a compared key changed since it was read.
	ErrConflict = errors.New("conflict")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("store closed")
	// ErrCorrupt is wrapped by the error of every call on a state file that is damaged (a *CorruptError).
	ErrCorrupt = errors.New("state file is corrupt")
	// ErrCompacted is wrapped by the error (a *CompactedError) that ends a Watch asking for changes the
	// store no longer keeps.
	ErrCompacted = errors.New("required revision has been compacted")
	// ErrNotSupported is returned for an optional ability the store does not have, such as leases.
	ErrNotSupported = errors.New("not supported")
	// ErrInvalid is returned for an argument no call can accept, such as a negative revision.
	ErrInvalid = errors.New("invalid argument")
	// ErrLeaseNotFound is returned for a lease that has expired or was revoked (etcd's
	// rpctypes.ErrLeaseNotFound): the keys put with it are gone, and a new lease must be granted.
	ErrLeaseNotFound = errors.New("lease not found")
)

// CorruptError is a damaged state file: what was found wrong, and what to do about it.
type CorruptError struct {
	Path   string
	Reason string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("state file %s is corrupt (%s): move it aside (what it recorded is lost) and run podctl gc", e.Path, e.Reason)
}

// Unwrap makes errors.Is(err, ErrCorrupt) true.
func (e *CorruptError) Unwrap() error { return ErrCorrupt }

// KV is one key, its value and the revision of its last change.
type KV struct {
	Key   string
	Value []byte
	Rev   int64
}

// Cmp requires that Key's revision is Rev at commit time; Rev 0 means the key must not exist.
type Cmp struct {
	Key string
	Rev int64
}

// Absent is a Cmp requiring that key does not exist.
func Absent(key string) Cmp { return Cmp{Key: key} }

// CompactedError ends a Watch that asked for changes the store no longer keeps: the changes up to and
// including revision Rev are gone from its history. The watcher has missed changes and must re-list:
// List gives the state and its revision, and a Watch from that revision goes on from there.
//
// On etcd, whose watches start at a revision rather than after it, Rev is the WatchResponse's
// CompactRevision minus one.
type CompactedError struct {
	Rev   int64 // the newest revision no longer kept: a Watch from Rev or later can replay, for now
	Asked int64 // the revision the watch was to go on after
}

func (e *CompactedError) Error() string {
	return fmt.Sprintf("watch after revision %d: %v (the store keeps the changes after revision %d): re-list and watch from the list's revision",
		e.Asked, ErrCompacted, e.Rev)
}

// Unwrap makes errors.Is(err, ErrCompacted) true.
func (e *CompactedError) Unwrap() error { return ErrCompacted }

// Op is one write of a transaction: Put Value at Key, or Delete Key (absent keys are fine, and are no
// change). A Put with a Lease other than NoLease is deleted when the lease ends; only a store that is a
// [Leaser] accepts it, the others refuse the whole transaction with ErrNotSupported.
type Op struct {
	Key    string
	Value  []byte
	Delete bool
	Lease  LeaseID
}

// Put returns an Op that writes value at key.
func Put(key string, value []byte) Op { return Op{Key: key, Value: value} }

// PutWithLease returns an Op that writes value at key for as long as lease lives (etcd's
// clientv3.WithLease).
func PutWithLease(key string, value []byte, lease LeaseID) Op {
	return Op{Key: key, Value: value, Lease: lease}
}

// Del returns an Op that deletes key.
func Del(key string) Op { return Op{Key: key, Delete: true} }

// EventType says what an Event reports.
type EventType int

const (
	// EventPut: KV is the key as written, KV.Rev the revision of the write.
	EventPut EventType = iota
	// EventDelete: KV.Key was deleted at revision KV.Rev; KV.Value is nil.
	EventDelete
	// EventError: the watch has ended with Err, and the channel closes after this event. Err wraps
	// ErrCompacted (a *CompactedError) when the watcher must re-list, else it is the store's error
	// (ErrClosed, ErrCorrupt, ...).
	EventError
)

func (t EventType) String() string {
	switch t {
	case EventPut:
		return "put"
	case EventDelete:
		return "delete"
	case EventError:
		return "error"
	}
	return fmt.Sprintf("EventType(%d)", int(t))
}

// Event is one change seen by a Watch, or the error that ended it.
type Event struct {
	Type EventType
	KV   KV
	Err  error // set only for EventError
}

// Store is the state backend of a Manager. Implementations are safe for concurrent use, also by
// several processes sharing the same backing store.
type Store interface {
	// Get returns the key or ErrNotFound.
	Get(ctx context.Context, key string) (KV, error)
	// List returns every key under prefix, sorted by key, and the store revision it was read at.
	List(ctx context.Context, prefix string) ([]KV, int64, error)
	// Txn applies ops atomically if every Cmp holds, else returns ErrConflict and changes nothing. A
	// transaction that writes takes the next store revision; every key it writes gets that revision.
	Txn(ctx context.Context, cmps []Cmp, ops []Op) error
	// Watch streams the changes under prefix made after revision rev, as a change feed:
	//
	//   - one event per change, in revision order; the changes of one Txn share its revision and come
	//     in the order of its ops; a key written twice gives two events, written then deleted both;
	//   - rev is the revision a List returned (the feed goes on exactly from that state), or an older
	//     one to replay history, or a later one to wait for it; 0 means from now: the changes made
	//     after Watch returns; a negative rev is ErrInvalid;
	//   - a store that no longer keeps the changes after rev sends one EventError wrapping
	//     ErrCompacted (a *CompactedError): re-list and watch again from the list's revision;
	//   - any other failure is also one EventError, and the channel closes after it;
	//   - when ctx ends the channel closes, with no event.
	//
	// Watch itself returns an error only when it cannot start: a closed store, an ended ctx, a negative
	// rev, or (for rev 0) a store it cannot read.
	Watch(ctx context.Context, prefix string, rev int64) (<-chan Event, error)
	Close() error
}

// LeaseID names a lease. NoLease (0) is no lease, as in etcd.
type LeaseID int64

// NoLease is the LeaseID of a key that lives until it is deleted.
const NoLease LeaseID = 0

// Leaser is the optional ability of a store to keep keys only while their writer lives: a key put with
// a lease (PutWithLease in a Txn) is deleted, with a delete event for watchers, when the lease ends.
// Node liveness is built on it. It maps onto etcd's clientv3.Lease one to one.
type Leaser interface {
	// Grant creates a lease that ends ttl after its grant or last keep-alive unless kept alive (etcd:
	// Lease.Grant, in whole seconds rounded up; etcd may raise a ttl below its minimum).
	Grant(ctx context.Context, ttl time.Duration) (LeaseID, error)
	// KeepAlive renews the lease once, for its full ttl (etcd: Lease.KeepAliveOnce). Call it well
	// within the ttl, e.g. every ttl/3. A lease that has ended gives ErrLeaseNotFound.
	KeepAlive(ctx context.Context, id LeaseID) error
	// Revoke ends the lease now and deletes its keys (etcd: Lease.Revoke). A lease that has already
	// ended gives ErrLeaseNotFound.
	Revoke(ctx context.Context, id LeaseID) error
}

// Leases returns s as a Leaser, or ErrNotSupported if s has no leases.
func Leases(s Store) (Leaser, error) {
	if l, ok := s.(Leaser); ok {
		return l, nil
	}
	if _, ok := s.(*Bolt); ok {
		return nil, fmt.Errorf("%w: the bolt store has no leases: node liveness needs a cluster store such as etcd", ErrNotSupported)
	}
	return nil, fmt.Errorf("%w: the store (%T) has no leases: node liveness needs a cluster store such as etcd", ErrNotSupported, s)
}
