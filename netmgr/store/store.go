package store

import (
	"context"
	"errors"
	"fmt"
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

// Op is one write of a transaction: Put Value at Key, or Delete Key (absent keys are fine).
type Op struct {
	Key    string
	Value  []byte
	Delete bool
}

// Put returns an Op that writes value at key.
func Put(key string, value []byte) Op { return Op{Key: key, Value: value} }

// Del returns an Op that deletes key.
func Del(key string) Op { return Op{Key: key, Delete: true} }

// EventType says whether a watched key was written or deleted.
type EventType int

const (
	EventPut EventType = iota
	EventDelete
)

// Event is one change seen by a Watch.
type Event struct {
	Type EventType
	KV   KV
}

// Store is the state backend of a Manager. Implementations are safe for concurrent use, also by
// several processes sharing the same backing store.
type Store interface {
	// Get returns the key or ErrNotFound.
	Get(ctx context.Context, key string) (KV, error)
	// List returns every key under prefix, sorted by key, and the store revision it was read at.
	List(ctx context.Context, prefix string) ([]KV, int64, error)
	// Txn applies ops atomically if every Cmp holds, else returns ErrConflict and changes nothing.
	Txn(ctx context.Context, cmps []Cmp, ops []Op) error
	// Watch streams changes under prefix made after revision rev until ctx ends; the channel is closed then.
	Watch(ctx context.Context, prefix string, rev int64) (<-chan Event, error)
	Close() error
}
