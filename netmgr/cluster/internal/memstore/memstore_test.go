package memstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/netmgr/netmgr/netmgr/store"
)

func describe(e store.Event) string {
	switch e.Type {
	case store.EventPut:
		return fmt.Sprintf("put %s=%s@%d", e.KV.Key, e.KV.Value, e.KV.Rev)
	case store.EventDelete:
		return fmt.Sprintf("del %s@%d", e.KV.Key, e.KV.Rev)
	}
	return "error: " + e.Err.Error()
}

func next(t *testing.T, ch <-chan store.Event) store.Event {
	t.Helper()
	select {
	case e, ok := <-ch:
		if !ok {
			t.Fatal("watch closed")
		}
		return e
	case <-time.After(10 * time.Second):
		t.Fatal("no event in 10s (a hang)")
	}
	return store.Event{}
}

func events(t *testing.T, ch <-chan store.Event, n int) string {
	t.Helper()
	var out []string
	for range n {
		out = append(out, describe(next(t, ch)))
	}
	return strings.Join(out, ", ")
}

// TestContract: revisions, compare-and-swap, List's revision, and a watch from it that replays the
// changes in order (a Txn's changes share its revision, in op order), under its prefix only.
func TestContract(t *testing.T) {
	ctx := context.Background()
	b := NewManual()
	c := b.Client()
	if err := c.Txn(ctx, []store.Cmp{store.Absent("p/a")}, []store.Op{store.Put("p/a", []byte("1")), store.Put("q/x", []byte("x"))}); err != nil {
		t.Fatal(err)
	}
	kvs, rev, err := c.List(ctx, "p/")
	if err != nil || len(kvs) != 1 || kvs[0].Rev != 1 || rev != 1 {
		t.Fatalf("list %+v %d %v", kvs, rev, err)
	}
	if err := c.Txn(ctx, []store.Cmp{store.Absent("p/a")}, []store.Op{store.Put("p/a", []byte("2"))}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("absent compare on a present key: %v", err)
	}
	ch, err := c.Watch(ctx, "p/", rev)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Txn(ctx, []store.Cmp{{Key: "p/a", Rev: 1}}, []store.Op{store.Put("p/b", []byte("3")), store.Del("p/a"), store.Put("q/y", nil)}); err != nil {
		t.Fatal(err)
	}
	if err := c.Txn(ctx, nil, []store.Op{store.Del("p/nothing")}); err != nil { // no change, no revision
		t.Fatal(err)
	}
	if err := c.Txn(ctx, nil, []store.Op{store.Put("p/b", []byte("4"))}); err != nil {
		t.Fatal(err)
	}
	if got, want := events(t, ch, 3), "put p/b=3@2, del p/a@2, put p/b=4@3"; got != want {
		t.Fatalf("events %s, want %s", got, want)
	}
	if kv, err := c.Get(ctx, "p/b"); err != nil || string(kv.Value) != "4" || kv.Rev != 3 {
		t.Fatalf("get %+v %v", kv, err)
	}
	if _, err := c.Get(ctx, "p/a"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("get deleted: %v", err)
	}
	if _, err := c.Watch(ctx, "p/", -1); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("negative revision: %v", err)
	}
}

// TestCompaction: a watch that needs compacted history ends with one *CompactedError; a caught-up
// one goes on; a watch from the compacted revision replays what is kept.
func TestCompaction(t *testing.T) {
	ctx := context.Background()
	b := NewManual()
	c := b.Client()
	for i := range 3 {
		if err := c.Txn(ctx, nil, []store.Op{store.Put("k", []byte{byte('0' + i)})}); err != nil {
			t.Fatal(err)
		}
	}
	live, _ := c.Watch(ctx, "", 3)
	if err := b.Compact(2); err != nil {
		t.Fatal(err)
	}
	old, _ := c.Watch(ctx, "", 1)
	e := next(t, old)
	var ce *store.CompactedError
	if e.Type != store.EventError || !errors.As(e.Err, &ce) || ce.Rev != 2 || ce.Asked != 1 || !errors.Is(e.Err, store.ErrCompacted) {
		t.Fatalf("watch from 1 after compacting to 2: %s", describe(e))
	}
	if _, ok := <-old; ok {
		t.Fatal("the watch goes on after its error")
	}
	from2, _ := c.Watch(ctx, "", 2)
	if got := describe(next(t, from2)); got != "put k=2@3" {
		t.Fatalf("from the compacted revision: %s", got)
	}
	c.Txn(ctx, nil, []store.Op{store.Put("k", []byte("3"))})
	if got := describe(next(t, live)); got != "put k=3@4" {
		t.Fatalf("a caught-up watch after compaction: %s", got)
	}
}

// TestLeases: a key put with a lease goes (with a delete event) when the lease expires on the manual
// clock, not before; KeepAlive renews it; Revoke ends it at once; a put with an ended lease and the
// calls on an ended lease are ErrLeaseNotFound.
func TestLeases(t *testing.T) {
	ctx := context.Background()
	b := NewManual()
	c := b.Client()
	id, err := c.Grant(ctx, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Txn(ctx, nil, []store.Op{store.PutWithLease("n/a", []byte("a"), id), store.PutWithLease("n/b", []byte("b"), id)}); err != nil {
		t.Fatal(err)
	}
	ch, _ := c.Watch(ctx, "n/", 0)
	b.Advance(900 * time.Millisecond)
	if err := c.KeepAlive(ctx, id); err != nil {
		t.Fatal(err)
	}
	b.Advance(900 * time.Millisecond)
	if _, err := c.Get(ctx, "n/a"); err != nil {
		t.Fatalf("kept alive: %v", err)
	}
	b.Advance(100 * time.Millisecond)
	if got := events(t, ch, 2); got != "del n/a@2, del n/b@2" {
		t.Fatalf("expiry: %s", got)
	}
	if err := c.KeepAlive(ctx, id); !errors.Is(err, store.ErrLeaseNotFound) {
		t.Fatalf("keep-alive of an ended lease: %v", err)
	}
	if err := c.Txn(ctx, nil, []store.Op{store.PutWithLease("n/c", nil, id)}); !errors.Is(err, store.ErrLeaseNotFound) {
		t.Fatalf("put with an ended lease: %v", err)
	}
	id2, _ := c.Grant(ctx, time.Minute)
	c.Txn(ctx, nil, []store.Op{store.PutWithLease("n/d", nil, id2), store.PutWithLease("n/e", nil, id2)})
	c.Txn(ctx, nil, []store.Op{store.Put("n/e", []byte("kept"))}) // a put without the lease detaches it
	if err := b.Client().Revoke(ctx, id2); err != nil {
		t.Fatal(err)
	}
	if got := events(t, ch, 3); got != "put n/d=@3, put n/e=@3, put n/e=kept@4" {
		t.Fatalf("puts: %s", got)
	}
	if got := describe(next(t, ch)); got != "del n/d@5" {
		t.Fatalf("revoke: %s", got)
	}
	if err := c.Revoke(ctx, id2); !errors.Is(err, store.ErrLeaseNotFound) {
		t.Fatalf("revoke twice: %v", err)
	}
}

// TestRealClock: on the real clock a lease that nobody keeps alive expires by itself.
func TestRealClock(t *testing.T) {
	ctx := context.Background()
	b := New()
	defer b.Close()
	c := b.Client()
	id, _ := c.Grant(ctx, 50*time.Millisecond)
	c.Txn(ctx, nil, []store.Op{store.PutWithLease("k", nil, id)})
	ch, _ := c.Watch(ctx, "", 0)
	if got := describe(next(t, ch)); got != "del k@2" {
		t.Fatalf("expiry: %s", got)
	}
}

// TestClose: a closed client's calls fail with ErrClosed and its watches end with it; ctx ending a
// watch closes it with no event; other clients go on.
func TestClose(t *testing.T) {
	b := NewManual()
	c1, c2 := b.Client(), b.Client()
	ctx, cancel := context.WithCancel(context.Background())
	quiet, _ := c1.Watch(ctx, "", 0)
	w, _ := c1.Watch(context.Background(), "", 0)
	cancel()
	if _, ok := <-quiet; ok {
		t.Fatal("an event after ctx ended")
	}
	c1.Close()
	if e := next(t, w); e.Type != store.EventError || !errors.Is(e.Err, store.ErrClosed) {
		t.Fatalf("closed: %s", describe(e))
	}
	if _, err := c1.Get(context.Background(), "k"); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("get on a closed client: %v", err)
	}
	if err := c2.Txn(context.Background(), nil, []store.Op{store.Put("k", nil)}); err != nil {
		t.Fatalf("the other client: %v", err)
	}
}
