package clustertest

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/netmgr/netmgr/netmgr/store"
)

// ErrUnavailable is the error of every call to a Faulty store that is down.
var ErrUnavailable = errors.New("clustertest: store unavailable")

// Faulty wraps a store (and its Leaser) with faults a test switches on and off: the store down (every
// call fails with ErrUnavailable and every open watch ends with it), watches cut, and new watches
// held before they start (so that the history they need can be compacted meanwhile), and latency. It counts
// keep-alives and the compaction errors its watches passed on.
type Faulty struct {
	s store.Store
	l store.Leaser

	latency atomic.Int64 // nanoseconds every call waits first

	mu     sync.Mutex
	down   bool
	cut    chan struct{} // closed to end the watches open now
	hold   chan struct{} // non-nil: new watches wait until it is closed
	Held   atomic.Int64  // watches waiting on a hold now
	Kept   atomic.Int64  // successful KeepAlive calls
	Grants atomic.Int64  // successful Grant calls
	Calls  atomic.Int64  // calls of any kind
	Compd  atomic.Int64  // watch events with ErrCompacted passed on
}

var (
	_ store.Store  = (*Faulty)(nil)
	_ store.Leaser = (*Faulty)(nil)
)

// NewFaulty wraps s, which should be a store.Leaser (else Grant, KeepAlive and Revoke are
// ErrNotSupported).
func NewFaulty(s store.Store) *Faulty {
	l, _ := s.(store.Leaser)
	return &Faulty{s: s, l: l, cut: make(chan struct{})}
}

// SetDown takes the store down (also ending the watches open now) or brings it back.
func (f *Faulty) SetDown(down bool) {
	f.mu.Lock()
	f.down = down
	f.mu.Unlock()
	if down {
		f.CutWatches()
	}
}

// CutWatches ends every watch open now with an EventError wrapping ErrUnavailable.
func (f *Faulty) CutWatches() {
	f.mu.Lock()
	defer f.mu.Unlock()
	close(f.cut)
	f.cut = make(chan struct{})
}

// HoldWatches makes new watches wait (counted in Held) until ReleaseWatches.
func (f *Faulty) HoldWatches() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.hold == nil {
		f.hold = make(chan struct{})
	}
}

// ReleaseWatches lets held watches start.
func (f *Faulty) ReleaseWatches() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.hold != nil {
		close(f.hold)
		f.hold = nil
	}
}

// SetLatency makes every call wait d first, as a store across a network does: it widens the window
// between a read and the write that depends on it, where races happen.
func (f *Faulty) SetLatency(d time.Duration) { f.latency.Store(int64(d)) }

func (f *Faulty) fault() error {
	f.Calls.Add(1)
	if d := f.latency.Load(); d > 0 {
		time.Sleep(time.Duration(d))
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return ErrUnavailable
	}
	return nil
}

// Get implements store.Store.
func (f *Faulty) Get(ctx context.Context, key string) (store.KV, error) {
	if err := f.fault(); err != nil {
		return store.KV{}, err
	}
	return f.s.Get(ctx, key)
}

// List implements store.Store.
func (f *Faulty) List(ctx context.Context, prefix string) ([]store.KV, int64, error) {
	if err := f.fault(); err != nil {
		return nil, 0, err
	}
	return f.s.List(ctx, prefix)
}

// Txn implements store.Store.
func (f *Faulty) Txn(ctx context.Context, cmps []store.Cmp, ops []store.Op) error {
	if err := f.fault(); err != nil {
		return err
	}
	return f.s.Txn(ctx, cmps, ops)
}

// Watch implements store.Store.
func (f *Faulty) Watch(ctx context.Context, prefix string, rev int64) (<-chan store.Event, error) {
	if err := f.fault(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	hold := f.hold
	f.mu.Unlock()
	if hold != nil {
		f.Held.Add(1)
		select {
		case <-hold:
		case <-ctx.Done():
		}
		f.Held.Add(-1)
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := f.fault(); err != nil {
			return nil, err
		}
	}
	f.mu.Lock()
	cut := f.cut
	f.mu.Unlock()
	wctx, cancel := context.WithCancel(ctx)
	in, err := f.s.Watch(wctx, prefix, rev)
	if err != nil {
		cancel()
		return nil, err
	}
	out := make(chan store.Event, cap(in))
	go func() {
		defer close(out)
		defer cancel()
		for {
			select {
			case e, ok := <-in:
				if !ok {
					return
				}
				if e.Type == store.EventError && errors.Is(e.Err, store.ErrCompacted) {
					f.Compd.Add(1)
				}
				select {
				case out <- e:
				case <-ctx.Done():
					return
				}
			case <-cut:
				select {
				case out <- store.Event{Type: store.EventError, Err: ErrUnavailable}:
				case <-ctx.Done():
				}
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

// Close implements store.Store; it closes the wrapped store.
func (f *Faulty) Close() error { return f.s.Close() }

// Grant implements store.Leaser.
func (f *Faulty) Grant(ctx context.Context, ttl time.Duration) (store.LeaseID, error) {
	if f.l == nil {
		return 0, store.ErrNotSupported
	}
	if err := f.fault(); err != nil {
		return 0, err
	}
	id, err := f.l.Grant(ctx, ttl)
	if err == nil {
		f.Grants.Add(1)
	}
	return id, err
}

// KeepAlive implements store.Leaser.
func (f *Faulty) KeepAlive(ctx context.Context, id store.LeaseID) error {
	if f.l == nil {
		return store.ErrNotSupported
	}
	if err := f.fault(); err != nil {
		return err
	}
	err := f.l.KeepAlive(ctx, id)
	if err == nil {
		f.Kept.Add(1)
	}
	return err
}

// Revoke implements store.Leaser.
func (f *Faulty) Revoke(ctx context.Context, id store.LeaseID) error {
	if f.l == nil {
		return store.ErrNotSupported
	}
	if err := f.fault(); err != nil {
		return err
	}
	return f.l.Revoke(ctx, id)
}
