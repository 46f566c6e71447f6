// Package intent is the model of netmgr's intents: the record an operation writes, in the same
// transaction as the records it is about to change, before it touches the kernel, and clears when it
// is done. An intent still there when its object's lock (internal/flock) is free belongs to an owner
// that died, and the Manager decides what to repair from it. This package knows what an intent is
// (its kind, the network of an attach or detach, the boot and node that recorded it), how it is
// written as a store value, under which keys, and how to write, read, clear and list intents against
// a small store interface; it decides nothing about repair.
//
// Keys and values (the values of older netmgr releases read the same):
//
//	intents/sandbox/NAME -> "create" | "delete" | "attach NETWORK" | "detach NETWORK"
//	intents/network/NAME -> "create" | "delete", then " boot=BOOT_ID" and, on a store several
//	                        hosts share, " node=NODE"
//
// Sandbox intents live with the sandboxes in a node's runtime records (and die with the boot, as the
// runtime file does); network intents are in the durable store, so they carry the boot they were
// recorded in (a lock file, on tmpfs, does not outlive it) and the node whose operation they are.
package intent

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/netmgr/netmgr/netmgr/store"
)

// Key prefixes.
const (
	SandboxPrefix = "intents/sandbox/"
	NetworkPrefix = "intents/network/"
)

// SandboxKey is the key of a sandbox's intent.
func SandboxKey(name string) string { return SandboxPrefix + name }

// NetworkKey is the key of a network's intent.
func NetworkKey(name string) string { return NetworkPrefix + name }

// Kinds of intent.
const (
	Create = "create"
	Delete = "delete"
	Attach = "attach" // a sandbox's attach to Intent.Network
	Detach = "detach" // a sandbox's detach from Intent.Network
)

// Intent is one operation in flight.
type Intent struct {
	Kind    string // Create, Delete, Attach or Detach
	Network string // the network of an Attach or Detach
	Boot    string // the boot ID it was recorded in; "" when not recorded (sandbox intents)
	Node    string // the node that recorded it, on a store several hosts share; "" otherwise
}

// Endpoint returns an attach or detach intent (kind Attach or Detach) for network.
func Endpoint(kind, network string) Intent { return Intent{Kind: kind, Network: network} }

// Network returns a network intent of kind, recorded in this boot by node ("" on a store only this
// host uses).
func Network(kind, node string) Intent {
	id, _ := CurrentBoot()
	return Intent{Kind: kind, Boot: id, Node: node}
}

// IsEndpoint reports whether the intent is an attach or detach.
func (in Intent) IsEndpoint() bool { return in.Kind == Attach || in.Kind == Detach }

// Encode returns the intent's store value.
func (in Intent) Encode() []byte {
	if in.IsEndpoint() {
		return []byte(in.Kind + " " + in.Network)
	}
	v := in.Kind
	if in.Boot != "" {
		v += " boot=" + in.Boot
	}
	if in.Node != "" {
		v += " node=" + in.Node
	}
	return []byte(v)
}

// Decode reads a store value written by Encode (or by an older netmgr: a bare kind).
func Decode(v []byte) Intent {
	s := string(v)
	for _, k := range []string{Attach, Detach} {
		if network, ok := strings.CutPrefix(s, k+" "); ok {
			return Intent{Kind: k, Network: network}
		}
	}
	fs := strings.Fields(s)
	if len(fs) == 0 {
		return Intent{}
	}
	in := Intent{Kind: fs[0]}
	for _, f := range fs[1:] {
		if b, ok := strings.CutPrefix(f, "boot="); ok {
			in.Boot = b
		} else if n, ok := strings.CutPrefix(f, "node="); ok {
			in.Node = n
		}
	}
	return in
}

// Of reports whether the intent is node's to repair: recorded by node, or by no node in particular
// (a store that only one host uses).
func (in Intent) Of(node string) bool { return in.Node == "" || in.Node == node }

// Store is what intents are kept in: a part of store.Store.
type Store interface {
	Get(ctx context.Context, key string) (store.KV, error)
	List(ctx context.Context, prefix string) ([]store.KV, int64, error)
	Txn(ctx context.Context, cmps []store.Cmp, ops []store.Op) error
}

// Put is the write that records in at key, for the transaction that also writes what the operation
// changes. Compare the key with store.Absent to refuse an operation on an object with an intent.
func Put(key string, in Intent) store.Op { return store.Put(key, in.Encode()) }

// Clear removes the intent at key on its own (an absent one is no error).
func Clear(ctx context.Context, st Store, key string) error {
	return st.Txn(ctx, nil, []store.Op{store.Del(key)})
}

// Get reads the intent at key; a missing one is store.ErrNotFound.
func Get(ctx context.Context, st Store, key string) (Intent, store.KV, error) {
	kv, err := st.Get(ctx, key)
	if err != nil {
		return Intent{}, kv, err
	}
	return Decode(kv.Value), kv, nil
}

// Recorded reports whether an intent is recorded at key, or the store cannot tell (an error other
// than store.ErrNotFound): callers that must not take an object for idle ask this.
func Recorded(ctx context.Context, st Store, key string) bool {
	_, err := st.Get(ctx, key)
	return !errors.Is(err, store.ErrNotFound)
}

// Entry is one listed intent: the name of its object and its value.
type Entry struct {
	Name   string
	Intent Intent
	KV     store.KV
}

// List returns every intent under prefix (SandboxPrefix or NetworkPrefix), sorted by name.
func List(ctx context.Context, st Store, prefix string) ([]Entry, error) {
	kvs, _, err := st.List(ctx, prefix)
	if err != nil {
		return nil, err
	}
	out := make([]Entry, 0, len(kvs))
	for _, kv := range kvs {
		out = append(out, Entry{Name: strings.TrimPrefix(kv.Key, prefix), Intent: Decode(kv.Value), KV: kv})
	}
	return out, nil
}

// Names returns the names of the listed objects.
func Names(es []Entry) map[string]bool {
	out := make(map[string]bool, len(es))
	for _, e := range es {
		out[e.Name] = true
	}
	return out
}

// OfNode returns the entries that are node's to repair (see Intent.Of).
func OfNode(es []Entry, node string) []Entry {
	var out []Entry
	for _, e := range es {
		if e.Intent.Of(node) {
			out = append(out, e)
		}
	}
	return out
}

// FromEarlierBoot reports whether the intent was certainly recorded during an earlier boot: it carries
// another boot's ID, or, written without one, it is a create whose object's record was made (created)
// before this boot started (a delete's record tells nothing about when the delete began). Its owner is
// then certainly dead, although its lock file vanished with that boot.
func (in Intent) FromEarlierBoot(created time.Time) bool {
	id, start := CurrentBoot()
	return fromEarlierBoot(in, created, id, start)
}

func fromEarlierBoot(in Intent, created time.Time, bootID string, bootStart time.Time) bool {
	if in.Boot != "" {
		return bootID != "" && in.Boot != bootID
	}
	return in.Kind == Create && !created.IsZero() && !bootStart.IsZero() && created.Before(bootStart)
}
