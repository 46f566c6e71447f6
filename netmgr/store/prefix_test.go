package store

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"
)

// A store seen through a prefix reads, compares, writes and watches only under it, and hands keys
// back without it.
func TestWithPrefix(t *testing.T) {
	ctx := context.Background()
	b, err := OpenBolt(filepath.Join(t.TempDir(), "p.db"), WithWatchInterval(10*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	a := WithPrefix(b, "nodes/a/")
	if err := b.Txn(ctx, nil, []Op{Put("sandboxes/x", []byte("outside"))}); err != nil {
		t.Fatal(err)
	}
	if err := a.Txn(ctx, []Cmp{Absent("sandboxes/x")}, []Op{Put("sandboxes/x", []byte("a's"))}); err != nil {
		t.Fatalf("the unprefixed key must not count for the prefixed view: %v", err)
	}
	if kv, err := b.Get(ctx, "nodes/a/sandboxes/x"); err != nil || string(kv.Value) != "a's" {
		t.Fatalf("underlying key: %+v, %v", kv, err)
	}
	kvs, rev, err := a.List(ctx, "sandboxes/")
	if err != nil || len(kvs) != 1 || kvs[0].Key != "sandboxes/x" || string(kvs[0].Value) != "a's" {
		t.Fatalf("List through the prefix: %+v, %v", kvs, err)
	}
	if err := a.Txn(ctx, []Cmp{Absent("sandboxes/x")}, []Op{Put("sandboxes/x", nil)}); !errors.Is(err, ErrConflict) {
		t.Fatalf("compare through the prefix: %v, want ErrConflict", err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch, err := a.Watch(wctx, "sandboxes/", rev)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Txn(ctx, nil, []Op{Put("sandboxes/y", nil), Put("nodes/a/sandboxes/y", []byte("1"))}); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-ch:
		if e.Type != EventPut || e.KV.Key != "sandboxes/y" || string(e.KV.Value) != "1" {
			t.Fatalf("watched through the prefix: %+v", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no event")
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Get(ctx, "sandboxes/x"); err != nil {
		t.Fatalf("closing the view closed the store: %v", err)
	}
}

// The prefixed view of a store with leases has them too (the Manager's node view over etcd), and
// their leased keys live under the prefix; the view of a store without leases has none.
func TestWithPrefixLeases(t *testing.T) {
	ctx := context.Background()
	inner := &fakeLeaser{Store: open(t)}
	v := WithPrefix(inner, "nodes/a/")
	l, err := Leases(v)
	if err != nil {
		t.Fatalf("Leases of the prefixed view of a Leaser: %v", err)
	}
	id, err := l.Grant(ctx, time.Second)
	if err != nil || id != 42 || inner.granted != time.Second {
		t.Fatalf("grant through the view: %v %v (inner got %s)", id, err, inner.granted)
	}
	if err := l.KeepAlive(ctx, id); err != nil || inner.kept != id {
		t.Fatalf("keep-alive through the view: %v (inner kept %d)", err, inner.kept)
	}
	if err := l.Revoke(ctx, id); err != nil || inner.revoked != id {
		t.Fatalf("revoke through the view: %v (inner revoked %d)", err, inner.revoked)
	}
	if err := v.Txn(ctx, nil, []Op{PutWithLease("node", []byte("up"), id)}); err != nil {
		t.Fatal(err)
	}
	if inner.lastOps[0].Key != "nodes/a/node" || inner.lastOps[0].Lease != id {
		t.Fatalf("leased put through the view: %+v", inner.lastOps)
	}
	if _, err := Leases(WithPrefix(open(t), "nodes/a/")); !errors.Is(err, ErrNotSupported) {
		t.Fatalf("Leases of the prefixed view of bolt: %v, want ErrNotSupported", err)
	}
}

// fakeLeaser records the lease calls and leased puts a view hands it (the real etcd store runs the
// same through storetest in netmgr/store/etcd).
type fakeLeaser struct {
	Store
	granted       time.Duration
	kept, revoked LeaseID
	lastOps       []Op
}

func (f *fakeLeaser) Grant(_ context.Context, ttl time.Duration) (LeaseID, error) {
	f.granted = ttl
	return 42, nil
}
func (f *fakeLeaser) KeepAlive(_ context.Context, id LeaseID) error { f.kept = id; return nil }
func (f *fakeLeaser) Revoke(_ context.Context, id LeaseID) error    { f.revoked = id; return nil }
func (f *fakeLeaser) Txn(_ context.Context, _ []Cmp, ops []Op) error {
	f.lastOps = ops
	return nil
}
