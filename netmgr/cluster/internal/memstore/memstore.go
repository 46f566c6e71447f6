// Package memstore is an in-memory store.Store and store.Leaser for tests: one Backend holds the data,
// and any number of Clients (each a store, as two hosts' agents would hold) work on it. It follows the
// store contract (revisions, compare-and-swap, an ordered change feed that ends with a
// *store.CompactedError once the history it needs is compacted, leases whose keys go with them) and
// gives tests the levers a real etcd lacks: Compact, Expire, and a manual clock for lease expiry.
package memstore

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/netmgr/netmgr/netmgr/store"
)

type entry struct {
	value []byte
	rev   int64
	lease store.LeaseID
}

type lease struct {
	ttl      time.Duration
	deadline time.Time
	keys     map[string]bool
}

// Backend is the shared data of the Clients: keys, revisions, the change history and the leases.
type Backend struct {
	mu        sync.Mutex
	kv        map[string]entry
	rev       int64
	history   []store.Event // the changes after revision compacted, in revision order
	compacted int64
	changed   chan struct{} // closed (and replaced) at every commit
	leases    map[store.LeaseID]*lease
	nextLease store.LeaseID
	manual    bool
	clock     time.Time // the manual clock
	stop      chan struct{}
	stopOnce  sync.Once
}

// New returns an empty backend whose leases expire by the real clock (checked every 10 ms and at every
// call). Close it to stop that checker.
func New() *Backend {
	b := newBackend()
	go func() {
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-b.stop:
				return
			case <-t.C:
				b.mu.Lock()
				b.expireLocked()
				b.mu.Unlock()
			}
		}
	}()
	return b
}

// NewManual returns an empty backend whose clock moves only by Advance: a lease that is not kept alive
// expires exactly when the test advances past its deadline, never because a goroutine was slow.
func NewManual() *Backend {
	b := newBackend()
	b.manual = true
	b.clock = time.Unix(1_000_000, 0)
	return b
}

func newBackend() *Backend {
	return &Backend{kv: map[string]entry{}, changed: make(chan struct{}), leases: map[store.LeaseID]*lease{},
		stop: make(chan struct{})}
}

// Close stops the real-clock expiry checker. Clients keep working.
func (b *Backend) Close() { b.stopOnce.Do(func() { close(b.stop) }) }

func (b *Backend) now() time.Time {
	if b.manual {
		return b.clock
	}
	return time.Now()
}

// Advance moves a manual clock by d and expires the leases whose deadline it passes.
func (b *Backend) Advance(d time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.manual {
		panic("memstore: Advance on a real-clock backend")
	}
	b.clock = b.clock.Add(d)
	b.expireLocked()
}

// Rev returns the current revision.
func (b *Backend) Rev() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.rev
}

// Compact drops the history up to and including rev (0: the current revision), as etcd's Compact: a
// Watch that needs changes from there ends with a *store.CompactedError.
func (b *Backend) Compact(rev int64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if rev == 0 {
		rev = b.rev
	}
	if rev > b.rev || rev < b.compacted {
		return fmt.Errorf("%w: compact to %d (current %d, compacted %d)", store.ErrInvalid, rev, b.rev, b.compacted)
	}
	i := sort.Search(len(b.history), func(i int) bool { return b.history[i].KV.Rev > rev })
	b.history = append([]store.Event(nil), b.history[i:]...)
	b.compacted = rev
	b.notifyLocked() // lagging watchers find out now
	return nil
}

// Expire ends a lease now, as if its ttl passed without a keep-alive.
func (b *Backend) Expire(id store.LeaseID) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.leases[id]; !ok {
		return store.ErrLeaseNotFound
	}
	b.endLeaseLocked(id)
	return nil
}

// Leases returns the live leases, sorted.
func (b *Backend) Leases() []store.LeaseID {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []store.LeaseID
	for id := range b.leases {
		out = append(out, id)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// LeaseOf returns the lease a key was put with (NoLease for none or a missing key).
func (b *Backend) LeaseOf(key string) store.LeaseID {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.kv[key].lease
}

func (b *Backend) notifyLocked() {
	close(b.changed)
	b.changed = make(chan struct{})
}

func (b *Backend) expireLocked() {
	now := b.now()
	for id, l := range b.leases {
		if !now.Before(l.deadline) {
			b.endLeaseLocked(id)
		}
	}
}

// endLeaseLocked deletes a lease and its keys, in one revision.
func (b *Backend) endLeaseLocked(id store.LeaseID) {
	l := b.leases[id]
	delete(b.leases, id)
	if len(l.keys) == 0 {
		return
	}
	keys := make([]string, 0, len(l.keys))
	for k := range l.keys {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	b.rev++
	for _, k := range keys {
		delete(b.kv, k)
		b.history = append(b.history, store.Event{Type: store.EventDelete, KV: store.KV{Key: k, Rev: b.rev}})
	}
	b.notifyLocked()
}

// Client returns a new client of the backend: a store.Store (and store.Leaser) of its own, whose Close
// ends only its own watches.
func (b *Backend) Client() *Client {
	return &Client{b: b, done: make(chan struct{})}
}

// Client is one user's handle on a Backend.
type Client struct {
	b         *Backend
	closeOnce sync.Once
	done      chan struct{}
}

var (
	_ store.Store  = (*Client)(nil)
	_ store.Leaser = (*Client)(nil)
)

func (c *Client) check(ctx context.Context) error {
	select {
	case <-c.done:
		return store.ErrClosed
	default:
	}
	return ctx.Err()
}

// lock takes the backend's lock after checking the client and ctx, and expires due leases.
func (c *Client) lock(ctx context.Context) error {
	if err := c.check(ctx); err != nil {
		return err
	}
	c.b.mu.Lock()
	c.b.expireLocked()
	return nil
}

// Get implements store.Store.
func (c *Client) Get(ctx context.Context, key string) (store.KV, error) {
	if err := c.lock(ctx); err != nil {
		return store.KV{}, err
	}
	defer c.b.mu.Unlock()
	e, ok := c.b.kv[key]
	if !ok {
		return store.KV{}, fmt.Errorf("%w: %s", store.ErrNotFound, key)
	}
	return store.KV{Key: key, Value: clone(e.value), Rev: e.rev}, nil
}

// List implements store.Store.
func (c *Client) List(ctx context.Context, prefix string) ([]store.KV, int64, error) {
	if err := c.lock(ctx); err != nil {
		return nil, 0, err
	}
	defer c.b.mu.Unlock()
	var out []store.KV
	for k, e := range c.b.kv {
		if strings.HasPrefix(k, prefix) {
			out = append(out, store.KV{Key: k, Value: clone(e.value), Rev: e.rev})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, c.b.rev, nil
}

// Txn implements store.Store.
func (c *Client) Txn(ctx context.Context, cmps []store.Cmp, ops []store.Op) error {
	if err := c.lock(ctx); err != nil {
		return err
	}
	b := c.b
	defer b.mu.Unlock()
	for _, cmp := range cmps {
		e, ok := b.kv[cmp.Key]
		if (cmp.Rev == 0 && ok) || (cmp.Rev != 0 && (!ok || e.rev != cmp.Rev)) {
			return store.ErrConflict
		}
	}
	for _, op := range ops {
		if op.Lease != store.NoLease && !op.Delete {
			if _, ok := b.leases[op.Lease]; !ok {
				return fmt.Errorf("%w: lease %d (put %s)", store.ErrLeaseNotFound, op.Lease, op.Key)
			}
		}
	}
	rev := b.rev + 1
	var events []store.Event
	for _, op := range ops {
		old, had := b.kv[op.Key]
		if op.Delete {
			if !had {
				continue
			}
			b.detachLocked(op.Key, old.lease)
			delete(b.kv, op.Key)
			events = append(events, store.Event{Type: store.EventDelete, KV: store.KV{Key: op.Key, Rev: rev}})
			continue
		}
		if had {
			b.detachLocked(op.Key, old.lease)
		}
		v := clone(op.Value)
		b.kv[op.Key] = entry{value: v, rev: rev, lease: op.Lease}
		if op.Lease != store.NoLease {
			b.leases[op.Lease].keys[op.Key] = true
		}
		events = append(events, store.Event{Type: store.EventPut, KV: store.KV{Key: op.Key, Value: clone(v), Rev: rev}})
	}
	if len(events) == 0 {
		return nil
	}
	b.rev = rev
	b.history = append(b.history, events...)
	b.notifyLocked()
	return nil
}

func (b *Backend) detachLocked(key string, id store.LeaseID) {
	if l, ok := b.leases[id]; ok {
		delete(l.keys, key)
	}
}

// Watch implements store.Store.
func (c *Client) Watch(ctx context.Context, prefix string, rev int64) (<-chan store.Event, error) {
	if rev < 0 {
		return nil, fmt.Errorf("%w: watch from revision %d", store.ErrInvalid, rev)
	}
	if err := c.lock(ctx); err != nil {
		return nil, err
	}
	after := rev
	if rev == 0 {
		after = c.b.rev
	}
	c.b.mu.Unlock()
	ch := make(chan store.Event, 16)
	go c.watch(ctx, prefix, after, ch)
	return ch, nil
}

func (c *Client) watch(ctx context.Context, prefix string, after int64, ch chan<- store.Event) {
	defer close(ch)
	b := c.b
	send := func(e store.Event) bool {
		select {
		case ch <- e:
			return true
		case <-ctx.Done():
			return false
		case <-c.done:
			return false
		}
	}
	for {
		b.mu.Lock()
		if after < b.compacted {
			err := &store.CompactedError{Rev: b.compacted, Asked: after}
			b.mu.Unlock()
			send(store.Event{Type: store.EventError, Err: err})
			return
		}
		i := sort.Search(len(b.history), func(i int) bool { return b.history[i].KV.Rev > after })
		var evs []store.Event
		for _, e := range b.history[i:] {
			if strings.HasPrefix(e.KV.Key, prefix) {
				e.KV.Value = clone(e.KV.Value)
				evs = append(evs, e)
			}
		}
		upTo := b.rev
		wait := b.changed
		b.mu.Unlock()
		for _, e := range evs {
			if !send(e) {
				c.closedEvent(ctx, ch)
				return
			}
		}
		after = max(after, upTo)
		select {
		case <-wait:
		case <-ctx.Done():
			return
		case <-c.done:
			c.closedEvent(ctx, ch)
			return
		}
	}
}

// closedEvent sends the EventError of a closed client (not of an ended ctx, which closes silently).
func (c *Client) closedEvent(ctx context.Context, ch chan<- store.Event) {
	select {
	case <-c.done:
	default:
		return
	}
	if ctx.Err() != nil {
		return
	}
	select {
	case ch <- store.Event{Type: store.EventError, Err: store.ErrClosed}:
	case <-ctx.Done():
	case <-time.After(time.Second): // nobody reads any more
	}
}

// Close implements store.Store: this client's calls fail with ErrClosed and its watches end.
func (c *Client) Close() error {
	c.closeOnce.Do(func() { close(c.done) })
	return nil
}

// Grant implements store.Leaser.
func (c *Client) Grant(ctx context.Context, ttl time.Duration) (store.LeaseID, error) {
	if ttl <= 0 {
		return 0, fmt.Errorf("%w: lease ttl %v", store.ErrInvalid, ttl)
	}
	if err := c.lock(ctx); err != nil {
		return 0, err
	}
	defer c.b.mu.Unlock()
	c.b.nextLease++
	id := c.b.nextLease
	c.b.leases[id] = &lease{ttl: ttl, deadline: c.b.now().Add(ttl), keys: map[string]bool{}}
	return id, nil
}

// KeepAlive implements store.Leaser.
func (c *Client) KeepAlive(ctx context.Context, id store.LeaseID) error {
	if err := c.lock(ctx); err != nil {
		return err
	}
	defer c.b.mu.Unlock()
	l, ok := c.b.leases[id]
	if !ok {
		return fmt.Errorf("%w: lease %d", store.ErrLeaseNotFound, id)
	}
	l.deadline = c.b.now().Add(l.ttl)
	return nil
}

// Revoke implements store.Leaser.
func (c *Client) Revoke(ctx context.Context, id store.LeaseID) error {
	if err := c.lock(ctx); err != nil {
		return err
	}
	defer c.b.mu.Unlock()
	if _, ok := c.b.leases[id]; !ok {
		return fmt.Errorf("%w: lease %d", store.ErrLeaseNotFound, id)
	}
	c.b.endLeaseLocked(id)
	return nil
}

func clone(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append([]byte{}, b...)
}
