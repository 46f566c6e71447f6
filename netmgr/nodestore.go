package netmgr

import (
	"context"
	"strings"

	"github.com/netmgr/netmgr/netmgr/store"
)

// keyNodes holds each node's runtime records in a store that several hosts share:
// nodes/NODE/sandboxes/..., nodes/NODE/ipam/..., nodes/NODE/intents/sandbox/..., nodes/NODE/ports/...
const keyNodes = "nodes/"

// nodeStore is a store seen through a node's key prefix: every key the Manager uses for runtime state
// (sandboxes, allocations, joins, ports, sandbox intents) lands under nodes/NODE/, so that two
// Managers of two hosts on one store never read, judge or free each other's records. The Manager's
// own per-host runtime file needs no prefix: nothing else writes it.
type nodeStore struct {
	s      store.Store
	prefix string
}

func newNodeStore(s store.Store, node string) *nodeStore {
	return &nodeStore{s: s, prefix: keyNodes + node + "/"}
}

func (n *nodeStore) Get(ctx context.Context, key string) (store.KV, error) {
	kv, err := n.s.Get(ctx, n.prefix+key)
	kv.Key = strings.TrimPrefix(kv.Key, n.prefix)
	return kv, err
}

func (n *nodeStore) List(ctx context.Context, prefix string) ([]store.KV, int64, error) {
	kvs, rev, err := n.s.List(ctx, n.prefix+prefix)
	for i := range kvs {
		kvs[i].Key = strings.TrimPrefix(kvs[i].Key, n.prefix)
	}
	return kvs, rev, err
}

func (n *nodeStore) Txn(ctx context.Context, cmps []store.Cmp, ops []store.Op) error {
	pc := make([]store.Cmp, len(cmps))
	for i, c := range cmps {
		c.Key = n.prefix + c.Key
		pc[i] = c
	}
	po := make([]store.Op, len(ops))
	for i, o := range ops {
		o.Key = n.prefix + o.Key
		po[i] = o
	}
	return n.s.Txn(ctx, pc, po)
}

func (n *nodeStore) Watch(ctx context.Context, prefix string, rev int64) (<-chan store.Event, error) {
	in, err := n.s.Watch(ctx, n.prefix+prefix, rev)
	if err != nil {
		return nil, err
	}
	out := make(chan store.Event, cap(in))
	go func() {
		defer close(out)
		for e := range in {
			e.KV.Key = strings.TrimPrefix(e.KV.Key, n.prefix)
			select {
			case out <- e:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

// Close does nothing: the underlying store is the caller's.
func (n *nodeStore) Close() error { return nil }
