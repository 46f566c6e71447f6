// Package storetest is the contract every netmgr store passes: compare-and-swap, transaction order,
// the watch change feed (order, replay from a revision, prefix, compaction signal, cancel, close) and
// leases (or their refusal). A store's tests call Run with a function that makes a new, empty store.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/netmgr/netmgr/netmgr/store"
)

// Harness is one store under test, empty, and what the suite needs to drive it.
type Harness struct {
	Store store.Store
	// Compact makes the store forget its history up to the current revision at least (etcd: a
	// compaction at the current revision; bolt: writes past its change log, under FillerPrefix).
	// Nil skips the compaction test.
	Compact func(t *testing.T)
	// Close closes the store under test (a view such as store.WithPrefix closes nothing itself).
	// Nil: Store.Close.
	Close func() error
}

// FillerPrefix is where a Harness's Compact may write; the suite's keys are elsewhere.
const FillerPrefix = "~filler/"

// Run runs the contract against the stores newHarness makes, one per subtest. newHarness closes
// what it makes at the test's cleanup (a store the suite closed itself included).
func Run(t *testing.T, newHarness func(t *testing.T) Harness) {
	tests := []struct {
		name string
		fn   func(t *testing.T, h Harness)
	}{
		{"CompareAndSwap", testCAS},
		{"ListSorted", testList},
		{"ConcurrentCounters", testCounters},
		{"TxnOps", testTxnOps},
		{"TxnSameKeyTwice", testTxnSameKey},
		{"WatchOrder", testWatchOrder},
		{"WatchReplay", testWatchReplay},
		{"WatchPrefix", testWatchPrefix},
		{"WatchCompacted", testWatchCompacted},
		{"WatchCancel", testWatchCancel},
		{"WatchClose", testWatchClose},
		{"Leases", testLeases},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newHarness(t)) })
	}
}

// Describe writes an event as "put k=v@r", "del k@r" or "error: ...", r relative to base.
func Describe(e store.Event, base int64) string {
	switch e.Type {
	case store.EventPut:
		return fmt.Sprintf("put %s=%s@%d", e.KV.Key, e.KV.Value, e.KV.Rev-base)
	case store.EventDelete:
		return fmt.Sprintf("del %s@%d", e.KV.Key, e.KV.Rev-base)
	case store.EventError:
		return "error: " + e.Err.Error()
	}
	return fmt.Sprintf("type %d", e.Type)
}

// Next returns the next event, failing the test if the channel closes or nothing comes for long (a
// deadline for a hang, not a measure of speed).
func Next(t testing.TB, ch <-chan store.Event) store.Event {
	t.Helper()
	select {
	case e, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed")
		}
		return e
	case <-time.After(20 * time.Second):
		t.Fatal("no event in 20s")
	}
	return store.Event{}
}

// UpTo reads events until one for key marker, written by the caller after the changes it expects,
// and returns the ones before it, described relative to base.
func UpTo(t testing.TB, ch <-chan store.Event, marker string, base int64) []string {
	t.Helper()
	var got []string
	for {
		e := Next(t, ch)
		if e.Type != store.EventError && e.KV.Key == marker {
			return got
		}
		got = append(got, Describe(e, base))
		if e.Type == store.EventError {
			t.Fatalf("events: %v", got)
		}
	}
}

// Closed waits for the channel to close, failing on any event.
func Closed(t testing.TB, ch <-chan store.Event, base int64) {
	t.Helper()
	for {
		select {
		case e, open := <-ch:
			if !open {
				return
			}
			t.Fatalf("event after the end: %s", Describe(e, base))
		case <-time.After(20 * time.Second):
			t.Fatal("channel still open after 20s")
		}
	}
}

func want(t testing.TB, got []string, want ...string) {
	t.Helper()
	if strings.Join(got, ", ") != strings.Join(want, ", ") {
		t.Fatalf("events:\n got  [%s]\n want [%s]", strings.Join(got, ", "), strings.Join(want, ", "))
	}
}

// Txn applies ops unconditionally and returns the store's revision after it.
func Txn(t testing.TB, s store.Store, ops ...store.Op) int64 {
	t.Helper()
	ctx := context.Background()
	if err := s.Txn(ctx, nil, ops); err != nil {
		t.Fatal(err)
	}
	return Rev(t, s)
}

// Rev returns the store's current revision.
func Rev(t testing.TB, s store.Store) int64 {
	t.Helper()
	_, rev, err := s.List(context.Background(), "\xff")
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

func testCAS(t *testing.T, h Harness) {
	ctx := context.Background()
	s := h.Store
	if _, err := s.Get(ctx, "cas/a"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("get of a missing key: %v, want ErrNotFound", err)
	}
	if err := s.Txn(ctx, []store.Cmp{store.Absent("cas/a")}, []store.Op{store.Put("cas/a", []byte("1"))}); err != nil {
		t.Fatal(err)
	}
	kv, err := s.Get(ctx, "cas/a")
	if err != nil || kv.Key != "cas/a" || string(kv.Value) != "1" || kv.Rev == 0 {
		t.Fatalf("get: %+v %v", kv, err)
	}
	if err := s.Txn(ctx, []store.Cmp{store.Absent("cas/a")}, []store.Op{store.Put("cas/a", []byte("2"))}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("second create: %v, want ErrConflict", err)
	}
	if kv2, _ := s.Get(ctx, "cas/a"); string(kv2.Value) != "1" || kv2.Rev != kv.Rev {
		t.Fatalf("the refused create changed the key: %+v", kv2)
	}
	if err := s.Txn(ctx, []store.Cmp{{Key: "cas/a", Rev: kv.Rev}}, []store.Op{store.Put("cas/a", []byte("2")), store.Put("cas/b", nil)}); err != nil {
		t.Fatal(err)
	}
	a, _ := s.Get(ctx, "cas/a")
	b, _ := s.Get(ctx, "cas/b")
	if a.Rev <= kv.Rev || a.Rev != b.Rev {
		t.Fatalf("a txn's writes share one new revision: a@%d b@%d, before %d", a.Rev, b.Rev, kv.Rev)
	}
	if err := s.Txn(ctx, []store.Cmp{{Key: "cas/a", Rev: kv.Rev}}, []store.Op{store.Del("cas/a")}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("stale delete: %v, want ErrConflict", err)
	}
	// One failing compare refuses the whole transaction.
	if err := s.Txn(ctx, []store.Cmp{{Key: "cas/a", Rev: a.Rev}, store.Absent("cas/b")}, []store.Op{store.Del("cas/a")}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("txn with one stale compare: %v, want ErrConflict", err)
	}
	if err := s.Txn(ctx, []store.Cmp{{Key: "cas/a", Rev: a.Rev}, {Key: "cas/b", Rev: b.Rev}}, []store.Op{store.Del("cas/a"), store.Del("cas/never")}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, "cas/a"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("deleted key: %v", err)
	}
}

func testList(t *testing.T, h Harness) {
	ctx := context.Background()
	s := h.Store
	Txn(t, s, store.Put("ls/c", []byte("3")), store.Put("ls/a", []byte("1")), store.Put("lsx", nil), store.Put("ls/b/x", []byte("2")))
	rev := Txn(t, s, store.Put("other", nil))
	kvs, lrev, err := s.List(ctx, "ls/")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, kv := range kvs {
		got = append(got, kv.Key+"="+string(kv.Value))
	}
	want(t, got, "ls/a=1", "ls/b/x=2", "ls/c=3")
	if lrev != rev {
		t.Fatalf("list at revision %d, want the store's %d", lrev, rev)
	}
	if kvs, _, err := s.List(ctx, "nothing/"); err != nil || len(kvs) != 0 {
		t.Fatalf("empty list: %v %v", kvs, err)
	}
}

func testCounters(t *testing.T, h Harness) {
	// Goroutines increment one counter through CAS; no increment is lost.
	ctx := context.Background()
	s := h.Store
	const goroutines, each = 6, 15
	var wg sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				for {
					kv, err := s.Get(ctx, "n/counter")
					n := 0
					if err == nil {
						n, _ = strconv.Atoi(string(kv.Value))
					} else if !errors.Is(err, store.ErrNotFound) {
						t.Error(err)
						return
					}
					err = s.Txn(ctx, []store.Cmp{{Key: "n/counter", Rev: kv.Rev}}, []store.Op{store.Put("n/counter", []byte(strconv.Itoa(n+1)))})
					if err == nil {
						break
					} else if !errors.Is(err, store.ErrConflict) {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	kv, _ := s.Get(ctx, "n/counter")
	if string(kv.Value) != strconv.Itoa(goroutines*each) {
		t.Fatalf("counter %s, want %d", kv.Value, goroutines*each)
	}
}

// A transaction's writes share its revision and come in the order of its ops; a delete of an absent
// key is no change and no event.
func testTxnOps(t *testing.T, h Harness) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := h.Store
	base := Txn(t, s, store.Put("t/b", []byte("old")))
	ch, err := s.Watch(ctx, "t/", base)
	if err != nil {
		t.Fatal(err)
	}
	Txn(t, s, store.Put("t/c", []byte("1")), store.Del("t/b"), store.Put("other", nil), store.Del("t/never"), store.Put("t/a", []byte("1")))
	Txn(t, s, store.Put("t/end", nil))
	want(t, UpTo(t, ch, "t/end", base), "put t/c=1@1", "del t/b@1", "put t/a=1@1")
}

// A transaction that writes one key twice leaves the last write (on etcd, only that one is made).
func testTxnSameKey(t *testing.T, h Harness) {
	ctx := context.Background()
	s := h.Store
	Txn(t, s, store.Put("d/k", []byte("1")), store.Put("d/k", []byte("2")), store.Put("d/gone", nil), store.Del("d/gone"))
	if kv, err := s.Get(ctx, "d/k"); err != nil || string(kv.Value) != "2" {
		t.Fatalf("key written twice: %+v %v, want 2", kv, err)
	}
	if _, err := s.Get(ctx, "d/gone"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("key written then deleted: %v, want ErrNotFound", err)
	}
}

// Events come one per change, in revision order, none lost to a later overwrite.
func testWatchOrder(t *testing.T, h Harness) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := h.Store
	rev := Txn(t, s, store.Put("svc/z", []byte("1")))
	ch, err := s.Watch(ctx, "svc/", rev)
	if err != nil {
		t.Fatal(err)
	}
	Txn(t, s, store.Del("svc/z"))
	Txn(t, s, store.Put("svc/a", []byte("1")))
	Txn(t, s, store.Put("svc/a", []byte("2")))
	Txn(t, s, store.Put("svc/end", nil))
	want(t, UpTo(t, ch, "svc/end", rev), "del svc/z@1", "put svc/a=1@2", "put svc/a=2@3")
}

// From an old revision a watch replays every change since, in order; from 0 it starts now; from a
// later revision it waits for it; a negative one is ErrInvalid.
func testWatchReplay(t *testing.T, h Harness) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := h.Store
	base := Txn(t, s, store.Put("p/x", []byte("0")))
	Txn(t, s, store.Put("p/x", []byte("1")))
	Txn(t, s, store.Put("q/other", []byte("1")))
	Txn(t, s, store.Put("p/y", []byte("1")))
	Txn(t, s, store.Del("p/y"))
	Txn(t, s, store.Put("p/x", []byte("2")))
	now := Txn(t, s, store.Del("p/x"))

	ch, err := s.Watch(ctx, "p/", base)
	if err != nil {
		t.Fatal(err)
	}
	from0, err := s.Watch(ctx, "p/", 0)
	if err != nil {
		t.Fatal(err)
	}
	later, err := s.Watch(ctx, "p/", now+2)
	if err != nil {
		t.Fatal(err)
	}
	Txn(t, s, store.Put("p/z", []byte("1")))   // now+1
	Txn(t, s, store.Put("p/z", []byte("2")))   // now+2
	Txn(t, s, store.Put("p/z", []byte("3")))   // now+3
	Txn(t, s, store.Put("p/end", []byte("1"))) // now+4
	want(t, UpTo(t, ch, "p/end", base),
		"put p/x=1@1", "put p/y=1@3", "del p/y@4", "put p/x=2@5", "del p/x@6",
		"put p/z=1@7", "put p/z=2@8", "put p/z=3@9")
	want(t, UpTo(t, from0, "p/end", now), "put p/z=1@1", "put p/z=2@2", "put p/z=3@3")
	want(t, UpTo(t, later, "p/end", now), "put p/z=3@3")

	if _, err := s.Watch(ctx, "p/", -1); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("watch from -1: %v, want ErrInvalid", err)
	}
}

// A watch sees only its prefix.
func testWatchPrefix(t *testing.T, h Harness) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := h.Store
	rev := Rev(t, s)
	ch, err := s.Watch(ctx, "w/", rev)
	if err != nil {
		t.Fatal(err)
	}
	Txn(t, s, store.Put("w/1", []byte("x")), store.Put("other", nil), store.Put("wx", nil))
	Txn(t, s, store.Del("w/1"), store.Put("v/1", nil))
	Txn(t, s, store.Put("w/end", nil))
	want(t, UpTo(t, ch, "w/end", rev), "put w/1=x@1", "del w/1@2")
}

// A watch from before the history the store keeps gets ErrCompacted (a *CompactedError naming the
// revision to watch from instead) as its one and last event; from that revision it works.
func testWatchCompacted(t *testing.T, h Harness) {
	if h.Compact == nil {
		t.Skip("the harness cannot compact")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := h.Store
	base := Txn(t, s, store.Put("c/k", []byte("0")))
	for i := 1; i <= 5; i++ {
		Txn(t, s, store.Put("c/k", []byte(strconv.Itoa(i))))
	}
	h.Compact(t)
	ch, err := s.Watch(ctx, "c/", base)
	if err != nil {
		t.Fatal(err)
	}
	e := Next(t, ch)
	var ce *store.CompactedError
	if e.Type != store.EventError || !errors.Is(e.Err, store.ErrCompacted) || !errors.As(e.Err, &ce) {
		t.Fatalf("watch from %d: first event %s, want ErrCompacted", base, Describe(e, base))
	}
	if ce.Rev < base || ce.Asked != base {
		t.Fatalf("compacted error %+v: want Rev >= %d and Asked %d", ce, base, base)
	}
	Closed(t, ch, base)

	// The marker is written before the watches below, so that no write moves the store's history
	// (bolt trims its log as it writes) while they start: ask again where it begins.
	Txn(t, s, store.Put("c/end", nil))
	ch, err = s.Watch(ctx, "c/", base)
	if err != nil {
		t.Fatal(err)
	}
	if e := Next(t, ch); !errors.As(e.Err, &ce) {
		t.Fatalf("watch from %d again: %s, want ErrCompacted", base, Describe(e, base))
	}
	ch, err = s.Watch(ctx, "c/", ce.Rev)
	if err != nil {
		t.Fatal(err)
	}
	for {
		e := Next(t, ch)
		if e.Type == store.EventError {
			t.Fatalf("watch from the compacted revision %d: %v", ce.Rev, e.Err)
		}
		if e.KV.Rev <= ce.Rev {
			t.Fatalf("watch from %d replayed %s", ce.Rev, Describe(e, 0))
		}
		if e.KV.Key == "c/end" {
			break
		}
	}
	if ce.Rev > 1 {
		ch, err = s.Watch(ctx, "c/", ce.Rev-1)
		if err != nil {
			t.Fatal(err)
		}
		if e := Next(t, ch); !errors.Is(e.Err, store.ErrCompacted) {
			t.Fatalf("watch from %d, before the compacted %d: %s, want ErrCompacted", ce.Rev-1, ce.Rev, Describe(e, 0))
		}
	}
}

// The end of the context closes the channel with no event; Watch with an ended context is refused.
func testWatchCancel(t *testing.T, h Harness) {
	ctx, cancel := context.WithCancel(context.Background())
	s := h.Store
	ch, err := s.Watch(ctx, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	Closed(t, ch, 0)
	if _, err := s.Watch(ctx, "", 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("watch with an ended context: %v", err)
	}
}

// Close ends every watch with ErrClosed, and a watch or a call after Close is refused.
func testWatchClose(t *testing.T, h Harness) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := h.Store
	ch, err := s.Watch(ctx, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	closeStore := s.Close
	if h.Close != nil {
		closeStore = h.Close
	}
	if err := closeStore(); err != nil {
		t.Fatal(err)
	}
	e := Next(t, ch)
	if e.Type != store.EventError || !errors.Is(e.Err, store.ErrClosed) {
		t.Fatalf("after Close: %s, want ErrClosed", Describe(e, 0))
	}
	Closed(t, ch, 0)
	if _, err := s.Watch(ctx, "", 0); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("watch after Close: %v, want ErrClosed", err)
	}
	if _, err := s.Get(ctx, "k"); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("get after Close: %v, want ErrClosed", err)
	}
}

// A Leaser's leased keys vanish, with a delete event, when the lease ends by its ttl or by Revoke;
// KeepAlive keeps them; an ended lease is ErrLeaseNotFound. A store without leases refuses a leased
// put with ErrNotSupported and changes nothing.
func testLeases(t *testing.T, h Harness) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := h.Store
	l, err := store.Leases(s)
	if err != nil {
		if !errors.Is(err, store.ErrNotSupported) {
			t.Fatalf("Leases: %v, want a Leaser or ErrNotSupported", err)
		}
		before := Txn(t, s, store.Put("l/a", nil))
		if err := s.Txn(ctx, nil, []store.Op{store.Put("l/b", nil), store.PutWithLease("l/c", nil, 7)}); !errors.Is(err, store.ErrNotSupported) {
			t.Fatalf("put with a lease on a store without leases: %v, want ErrNotSupported", err)
		}
		if kvs, rev, _ := s.List(ctx, "l/"); len(kvs) != 1 || rev != before {
			t.Fatalf("after the refused txn: %v at %d, want only l/a at %d", kvs, rev, before)
		}
		return
	}
	if _, err := l.Grant(ctx, 0); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("grant of ttl 0: %v, want ErrInvalid", err)
	}
	short, err := l.Grant(ctx, time.Second)
	if err != nil || short == store.NoLease {
		t.Fatalf("grant: %v %v", short, err)
	}
	kept, err := l.Grant(ctx, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	base := Rev(t, s)
	ch, err := s.Watch(ctx, "l/", base)
	if err != nil {
		t.Fatal(err)
	}
	Txn(t, s, store.PutWithLease("l/short", []byte("1"), short))
	Txn(t, s, store.PutWithLease("l/kept", []byte("1"), kept))
	want(t, []string{Describe(Next(t, ch), base), Describe(Next(t, ch), base)}, "put l/short=1@1", "put l/kept=1@2")

	// Keep one lease alive while the other expires (etcd's lessor may take a few seconds past the ttl).
	deadline := time.Now().Add(30 * time.Second)
	var e store.Event
	for got := false; !got; {
		if time.Now().After(deadline) {
			t.Fatal("the leased key did not vanish within 30s of a 1s lease")
		}
		if err := l.KeepAlive(ctx, kept); err != nil {
			t.Fatalf("keep-alive: %v", err)
		}
		select {
		case e = <-ch:
			got = true
		case <-time.After(300 * time.Millisecond):
		}
	}
	if e.Type != store.EventDelete || e.KV.Key != "l/short" {
		t.Fatalf("event %s, want the delete of l/short", Describe(e, base))
	}
	if _, err := s.Get(ctx, "l/short"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("expired key: %v", err)
	}
	if err := l.KeepAlive(ctx, short); !errors.Is(err, store.ErrLeaseNotFound) {
		t.Fatalf("keep-alive of an expired lease: %v, want ErrLeaseNotFound", err)
	}
	// Its ttl has passed more than once (2s, kept alive every 300ms), and the key is there.
	if kv, err := s.Get(ctx, "l/kept"); err != nil || string(kv.Value) != "1" {
		t.Fatalf("kept-alive key: %+v %v", kv, err)
	}
	if err := l.Revoke(ctx, kept); err != nil {
		t.Fatal(err)
	}
	if e := Next(t, ch); e.Type != store.EventDelete || e.KV.Key != "l/kept" {
		t.Fatalf("after Revoke: %s, want the delete of l/kept", Describe(e, base))
	}
	if _, err := s.Get(ctx, "l/kept"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("revoked key: %v", err)
	}
	if err := l.Revoke(ctx, kept); !errors.Is(err, store.ErrLeaseNotFound) {
		t.Fatalf("second revoke: %v, want ErrLeaseNotFound", err)
	}
	before := Rev(t, s)
	if err := s.Txn(ctx, nil, []store.Op{store.Put("l/plain", nil), store.PutWithLease("l/late", nil, kept)}); !errors.Is(err, store.ErrLeaseNotFound) {
		t.Fatalf("put with a revoked lease: %v, want ErrLeaseNotFound", err)
	}
	if kvs, rev, _ := s.List(ctx, "l/"); len(kvs) != 0 || rev != before {
		t.Fatalf("after the refused txn: %v at %d, want nothing at %d", kvs, rev, before)
	}
}
