package store

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// describe writes an event as "put k=v@r", "del k@r" or "error: ...", r relative to base.
func describe(e Event, base int64) string {
	switch e.Type {
	case EventPut:
		return fmt.Sprintf("put %s=%s@%d", e.KV.Key, e.KV.Value, e.KV.Rev-base)
	case EventDelete:
		return fmt.Sprintf("del %s@%d", e.KV.Key, e.KV.Rev-base)
	case EventError:
		return "error: " + e.Err.Error()
	}
	return fmt.Sprintf("type %d", e.Type)
}

// next returns the next event, failing the test if the channel closes or nothing comes for long (a
// deadline for a hang, not a measure of speed).
func next(t *testing.T, ch <-chan Event) Event {
	t.Helper()
	select {
	case e, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed")
		}
		return e
	case <-time.After(10 * time.Second):
		t.Fatal("no event in 10s")
	}
	return Event{}
}

// upTo reads events until one for key marker, written by the caller after the changes it expects, and
// returns the ones before it: so a test sees exactly what came, without waiting for silence.
func upTo(t *testing.T, ch <-chan Event, marker string, base int64) []string {
	t.Helper()
	var got []string
	for {
		e := next(t, ch)
		if e.Type != EventError && e.KV.Key == marker {
			return got
		}
		got = append(got, describe(e, base))
		if e.Type == EventError {
			t.Fatalf("events: %v", got)
		}
	}
}

func want(t *testing.T, got []string, want ...string) {
	t.Helper()
	if strings.Join(got, ", ") != strings.Join(want, ", ") {
		t.Fatalf("events:\n got  [%s]\n want [%s]", strings.Join(got, ", "), strings.Join(want, ", "))
	}
}

func txn(t *testing.T, b *Bolt, ops ...Op) int64 {
	t.Helper()
	ctx := context.Background()
	if err := b.Txn(ctx, nil, ops); err != nil {
		t.Fatal(err)
	}
	_, rev, err := b.List(ctx, "\xff")
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

// closed waits for the channel to close, failing on any event but those allowed by ok.
func closed(t *testing.T, ch <-chan Event, base int64) {
	t.Helper()
	for {
		select {
		case e, open := <-ch:
			if !open {
				return
			}
			t.Fatalf("event after the end: %s", describe(e, base))
		case <-time.After(10 * time.Second):
			t.Fatal("channel still open after 10s")
		}
	}
}

// TestWatchOrder is repro/store_review_test.go: events came sorted by key with puts before deletes, and
// the put at revision 2 was lost to the overwrite at 3.
func TestWatchOrder(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b := open(t)
	w, err := OpenBolt(b.path, WithWatchInterval(10*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	rev := txn(t, b, Put("svc/z", []byte("1")))
	ch, err := w.Watch(ctx, "svc/", rev)
	if err != nil {
		t.Fatal(err)
	}
	// The watcher looks only after all three changes (its process turn is held meanwhile), as a slow
	// or busy watcher does.
	w.sem <- struct{}{}
	txn(t, b, Del("svc/z"))
	txn(t, b, Put("svc/a", []byte("1")))
	txn(t, b, Put("svc/a", []byte("2")))
	txn(t, b, Put("svc/end", nil))
	<-w.sem
	want(t, upTo(t, ch, "svc/end", rev), "del svc/z@1", "put svc/a=1@2", "put svc/a=2@3")
}

// TestWatchReplay starts watches after the changes were made: from an old revision it replays every
// change since, in order; from 0 it starts now; from a later revision it waits for it.
func TestWatchReplay(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b := open(t)
	base := txn(t, b, Put("p/x", []byte("0")))
	txn(t, b, Put("p/x", []byte("1")))
	txn(t, b, Put("q/other", []byte("1")))
	txn(t, b, Put("p/y", []byte("1")))
	txn(t, b, Del("p/y"))
	txn(t, b, Put("p/x", []byte("2")))
	now := txn(t, b, Del("p/x"))

	ch, err := b.Watch(ctx, "p/", base)
	if err != nil {
		t.Fatal(err)
	}
	from0, err := b.Watch(ctx, "p/", 0)
	if err != nil {
		t.Fatal(err)
	}
	later, err := b.Watch(ctx, "p/", now+2)
	if err != nil {
		t.Fatal(err)
	}
	txn(t, b, Put("p/z", []byte("1")))   // now+1
	txn(t, b, Put("p/z", []byte("2")))   // now+2
	txn(t, b, Put("p/z", []byte("3")))   // now+3
	txn(t, b, Put("p/end", []byte("1"))) // now+4
	want(t, upTo(t, ch, "p/end", base),
		"put p/x=1@1", "put p/y=1@3", "del p/y@4", "put p/x=2@5", "del p/x@6",
		"put p/z=1@7", "put p/z=2@8", "put p/z=3@9")
	want(t, upTo(t, from0, "p/end", now), "put p/z=1@1", "put p/z=2@2", "put p/z=3@3")
	want(t, upTo(t, later, "p/end", now), "put p/z=3@3")

	if _, err := b.Watch(ctx, "p/", -1); !errors.Is(err, ErrInvalid) {
		t.Fatalf("watch from -1: %v, want ErrInvalid", err)
	}
}

// TestWatchTxnOps: a transaction's writes share its revision and come in the order of its ops; a delete
// of an absent key is no change and no event.
func TestWatchTxnOps(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b := open(t)
	base := txn(t, b, Put("t/b", []byte("old")))
	ch, err := b.Watch(ctx, "t/", base)
	if err != nil {
		t.Fatal(err)
	}
	txn(t, b, Put("t/c", []byte("1")), Del("t/b"), Put("other", nil), Del("t/never"), Put("t/a", []byte("1")), Put("t/c", []byte("2")))
	txn(t, b, Put("t/end", nil))
	want(t, upTo(t, ch, "t/end", base), "put t/c=1@1", "del t/b@1", "put t/a=1@1", "put t/c=2@1")
}

// TestWatchCompacted keeps 5 revisions of changes: a watch from before them gets ErrCompacted naming
// the revision to watch from instead, as its one and last event; from there it works.
func TestWatchCompacted(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b, err := OpenBolt(filepath.Join(t.TempDir(), "s.db"), WithNoSync(), WithWatchInterval(10*time.Millisecond), WithChangeLog(5))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	base := txn(t, b, Put("c/k", []byte("0")))
	var now int64
	for i := 1; i <= 20; i++ {
		now = txn(t, b, Put("c/k", []byte(fmt.Sprint(i))))
	}
	for _, from := range []int64{base, now - 6} {
		ch, err := b.Watch(ctx, "c/", from)
		if err != nil {
			t.Fatal(err)
		}
		e := next(t, ch)
		var ce *CompactedError
		if e.Type != EventError || !errors.Is(e.Err, ErrCompacted) || !errors.As(e.Err, &ce) {
			t.Fatalf("watch from %d: first event %s, want ErrCompacted", from, describe(e, base))
		}
		if ce.Rev != now-5 {
			t.Fatalf("compacted at %d, want %d (%v)", ce.Rev, now-5, e.Err)
		}
		closed(t, ch, base)
	}
	ch, err := b.Watch(ctx, "c/", now-5)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for len(got) < 5 {
		got = append(got, describe(next(t, ch), now))
	}
	want(t, got, "put c/k=16@-4", "put c/k=17@-3", "put c/k=18@-2", "put c/k=19@-1", "put c/k=20@0")
}

// TestWatchCompactedBehind: a watcher that falls behind while it watches gets the same signal.
func TestWatchCompactedBehind(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	path := filepath.Join(t.TempDir(), "s.db")
	b, err := OpenBolt(path, WithNoSync(), WithWatchInterval(time.Hour), WithChangeLog(5))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	w, err := OpenBolt(path, WithNoSync(), WithWatchInterval(10*time.Millisecond), WithChangeLog(5))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	base := txn(t, b, Put("c/k", nil))
	// Block the watcher's polls by holding its process turn, write past its log, then let it look.
	w.sem <- struct{}{}
	ch, err := w.Watch(ctx, "c/", base)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		txn(t, b, Put("c/k", nil))
	}
	<-w.sem
	e := next(t, ch)
	if e.Type != EventError || !errors.Is(e.Err, ErrCompacted) {
		t.Fatalf("first event %s, want ErrCompacted", describe(e, base))
	}
	closed(t, ch, base)
}

// TestWatchCorrupt: a file damaged while watched ends the watch with an error event naming it; before,
// the channel closed as if the context had ended.
func TestWatchCorrupt(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b := open(t)
	base := txn(t, b, Put("k", nil))
	ch, err := b.Watch(ctx, "", base)
	if err != nil {
		t.Fatal(err)
	}
	txn(t, b, Put("k", []byte("1")))
	if e := next(t, ch); describe(e, base) != "put k=1@1" {
		t.Fatalf("first event %s", describe(e, base))
	}
	truncate(t, b.path, 100)
	e := next(t, ch)
	if e.Type != EventError || !errors.Is(e.Err, ErrCorrupt) || !strings.Contains(e.Err.Error(), b.path) {
		t.Fatalf("after damage: %s, want an ErrCorrupt event naming the file", describe(e, base))
	}
	closed(t, ch, base)
}

// TestWatchClose: Close ends every watch with ErrClosed (at once, not at its next poll), and a watch
// after Close is refused.
func TestWatchClose(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b, err := OpenBolt(filepath.Join(t.TempDir(), "s.db"), WithWatchInterval(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	ch, err := b.Watch(ctx, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	e := next(t, ch)
	if e.Type != EventError || !errors.Is(e.Err, ErrClosed) {
		t.Fatalf("after Close: %s, want ErrClosed", describe(e, 0))
	}
	closed(t, ch, 0)
	if _, err := b.Watch(ctx, "", 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("watch after Close: %v", err)
	}
}

// TestWatchCancel: the end of the context closes the channel at once, with no error event; the poll
// interval is an hour, so only the context can end it.
func TestWatchCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	b, err := OpenBolt(filepath.Join(t.TempDir(), "s.db"), WithWatchInterval(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ch, err := b.Watch(ctx, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	closed(t, ch, 0)
	if _, err := b.Watch(ctx, "", 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("watch with an ended context: %v", err)
	}
}

// TestChangeLogIsBounded: the log keeps the last n revisions, not more.
func TestChangeLogIsBounded(t *testing.T) {
	b, err := OpenBolt(filepath.Join(t.TempDir(), "s.db"), WithNoSync(), WithChangeLog(100))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var now int64
	for i := 0; i < 300; i++ {
		now = txn(t, b, Put(fmt.Sprintf("k/%d", i%7), []byte("v")), Del(fmt.Sprintf("k/%d", (i+3)%7)))
	}
	var n int
	var first int64
	_ = b.with(context.Background(), false, func(tx *bolt.Tx) error {
		k, _ := tx.Bucket(logBucket).Cursor().First()
		first = revOf(k)
		n = tx.Bucket(logBucket).Stats().KeyN
		return nil
	})
	// Trimmed in batches of an eighth (12): at least the last 100 revisions, at most 112.
	if n < 100 || n > 112 || first != now-int64(n)+1 {
		t.Fatalf("log holds %d revisions from %d (now %d), want 100 to 112 up to now", n, first, now)
	}
	var compact int64
	_ = b.with(context.Background(), false, func(tx *bolt.Tx) error { compact = compactRev(tx); return nil })
	if compact != first-1 {
		t.Fatalf("compact revision %d, want %d", compact, first-1)
	}
}

// TestWatchOldFile: a file written before the change log (with tombstones of deletes) has no history
// to replay: a watch from before its revision is told so; the first write starts the log and drops the
// tombstones.
func TestWatchOldFile(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	path := filepath.Join(t.TempDir(), "s.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		kv, _ := tx.CreateBucket(kvBucket)
		meta, _ := tx.CreateBucket(metaBucket)
		_ = kv.Put([]byte("a"), append([]byte{0, 0, 0, 0, 0, 0, 0, 4}, "x"...))
		_ = meta.Put([]byte("del/b"), []byte{0, 0, 0, 0, 0, 0, 0, 5})
		return meta.Put(revKey, []byte{0, 0, 0, 0, 0, 0, 0, 5})
	})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	b, err := OpenBolt(path, WithWatchInterval(10*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	old, err := b.Watch(ctx, "", 3)
	if err != nil {
		t.Fatal(err)
	}
	var ce *CompactedError
	if e := next(t, old); !errors.As(e.Err, &ce) || ce.Rev != 5 {
		t.Fatalf("watch from 3: %s, want compacted at 5", describe(e, 0))
	}
	ch, err := b.Watch(ctx, "", 5)
	if err != nil {
		t.Fatal(err)
	}
	txn(t, b, Del("a"))
	txn(t, b, Put("end", nil))
	want(t, upTo(t, ch, "end", 5), "del a@1")
	_ = b.with(ctx, false, func(tx *bolt.Tx) error {
		if v := tx.Bucket(metaBucket).Get([]byte("del/b")); v != nil {
			t.Error("tombstone kept")
		}
		return nil
	})
}

// TestLeasesRefused: the bolt store has no leases, says so, and a put with a lease changes nothing.
func TestLeasesRefused(t *testing.T) {
	ctx := context.Background()
	b := open(t)
	l, err := Leases(b)
	if l != nil || !errors.Is(err, ErrNotSupported) || !strings.Contains(err.Error(), "etcd") {
		t.Fatalf("Leases(bolt): %v, %v; want ErrNotSupported naming etcd", l, err)
	}
	before := txn(t, b, Put("a", nil))
	if err := b.Txn(ctx, nil, []Op{Put("b", nil), PutWithLease("c", nil, 7)}); !errors.Is(err, ErrNotSupported) {
		t.Fatalf("put with a lease: %v, want ErrNotSupported", err)
	}
	if kvs, rev, _ := b.List(ctx, ""); len(kvs) != 1 || rev != before {
		t.Fatalf("after the refused txn: %v at %d, want only a at %d", kvs, rev, before)
	}
}

// A store that has leases is its own Leaser.
type leasing struct{ Store }

func (leasing) Grant(context.Context, time.Duration) (LeaseID, error) { return 1, nil }
func (leasing) KeepAlive(context.Context, LeaseID) error              { return nil }
func (leasing) Revoke(context.Context, LeaseID) error                 { return nil }

func TestLeasesFound(t *testing.T) {
	l, err := Leases(leasing{})
	if err != nil || l == nil {
		t.Fatalf("Leases: %v %v", l, err)
	}
}
