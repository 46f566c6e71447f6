package main

import (
	"context"
	"sync"
	"time"

	"github.com/netmgr/netmgr/netmgr/store"
)

// timedStore wraps the Manager's store to tell how much of an operation is spent in it. It adds two
// clock reads per call and changes nothing else.
type timedStore struct {
	store.Store
	*timer
}

// timer is shared by the timed wrappers of the Manager's two stores (networks and runtime state).
type timer struct {
	mu    sync.Mutex
	calls map[string]int
	spent map[string]time.Duration
}

func newTimer() *timer {
	t := &timer{}
	t.reset()
	return t
}

func (t *timer) wrap(s store.Store) *timedStore { return &timedStore{Store: s, timer: t} }

func (t *timer) reset() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.calls = map[string]int{}
	t.spent = map[string]time.Duration{}
}

// snapshot returns the calls and time per method since the last reset.
func (t *timer) snapshot() (map[string]int, map[string]time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	calls, spent := map[string]int{}, map[string]time.Duration{}
	for k, v := range t.calls {
		calls[k] = v
	}
	for k, v := range t.spent {
		spent[k] = v
	}
	return calls, spent
}

func (t *timer) note(method string, t0 time.Time) {
	d := time.Since(t0)
	t.mu.Lock()
	t.calls[method]++
	t.spent[method] += d
	t.mu.Unlock()
}

func (t *timedStore) Get(ctx context.Context, key string) (store.KV, error) {
	defer t.note("Get", time.Now())
	return t.Store.Get(ctx, key)
}

func (t *timedStore) List(ctx context.Context, prefix string) ([]store.KV, int64, error) {
	defer t.note("List", time.Now())
	return t.Store.List(ctx, prefix)
}

func (t *timedStore) Txn(ctx context.Context, cmps []store.Cmp, ops []store.Op) error {
	defer t.note("Txn", time.Now())
	return t.Store.Txn(ctx, cmps, ops)
}
