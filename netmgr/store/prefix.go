package store

import (
	"context"
	"strings"
	"time"
)

// WithPrefix returns s seen through a key prefix: every key a caller reads, compares, writes or
// watches is prefix+key in s, and keys come back without it. Close does nothing (s is the caller's).
// The Manager keeps each node's runtime records under nodes/NODE/ of a store several hosts share.
// When s is a [Leaser], so is the view (leases are not keyed: the view's are s's).
func WithPrefix(s Store, prefix string) Store {
	p := &prefixed{s: s, prefix: prefix}
	if l, ok := s.(Leaser); ok {
		return &prefixedLeaser{prefixed: p, l: l}
	}
	return p
}

// prefixedLeaser is the prefixed view of a store that has leases.
type prefixedLeaser struct {
	*prefixed
	l Leaser
}

func (p *prefixedLeaser) Grant(ctx context.Context, ttl time.Duration) (LeaseID, error) {
	return p.l.Grant(ctx, ttl)
}

func (p *prefixedLeaser) KeepAlive(ctx context.Context, id LeaseID) error {
	return p.l.KeepAlive(ctx, id)
}

func (p *prefixedLeaser) Revoke(ctx context.Context, id LeaseID) error { return p.l.Revoke(ctx, id) }

type prefixed struct {
	s      Store
	prefix string
}

func (n *prefixed) Get(ctx context.Context, key string) (KV, error) {
	kv, err := n.s.Get(ctx, n.prefix+key)
	kv.Key = strings.TrimPrefix(kv.Key, n.prefix)
	return kv, err
}

func (n *prefixed) List(ctx context.Context, prefix string) ([]KV, int64, error) {
	kvs, rev, err := n.s.List(ctx, n.prefix+prefix)
	for i := range kvs {
		kvs[i].Key = strings.TrimPrefix(kvs[i].Key, n.prefix)
	}
	return kvs, rev, err
}

func (n *prefixed) Txn(ctx context.Context, cmps []Cmp, ops []Op) error {
	pc := make([]Cmp, len(cmps))
	for i, c := range cmps {
		c.Key = n.prefix + c.Key
		pc[i] = c
	}
	po := make([]Op, len(ops))
	for i, o := range ops {
		o.Key = n.prefix + o.Key
		po[i] = o
	}
	return n.s.Txn(ctx, pc, po)
}

func (n *prefixed) Watch(ctx context.Context, prefix string, rev int64) (<-chan Event, error) {
	in, err := n.s.Watch(ctx, n.prefix+prefix, rev)
	if err != nil {
		return nil, err
	}
	out := make(chan Event, cap(in))
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
func (n *prefixed) Close() error { return nil }
