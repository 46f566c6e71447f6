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
