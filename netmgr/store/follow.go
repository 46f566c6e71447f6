package store

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"time"
)

// Change is one key whose value, or presence, differs between two states of a followed prefix.
type Change struct {
	KV      KV   // the key as it is now; for a delete, only Key (and Rev, when a watch saw the delete)
	Deleted bool // the key is gone
}

// Update is what Follow hands its callback: the state of the prefix and what changed in it.
type Update struct {
	// Rev is the store revision the state is at.
	Rev int64
	// State is every key under the prefix, by key. It is Follow's own: read it during the call and
	// copy what you keep.
	State map[string]KV
	// Changes are the keys whose value or presence differ from the State of the previous Update
	// (the first Update: from nothing), sorted by key. A write of the same value is no change; a key
	// written and deleted between two Updates may be none either.
	Changes []Change
	// Resync is set when State was read afresh by a List: the first Update, and each one after the
	// watch fell behind the store's history (ErrCompacted). Its Changes are a diff by value against
	// the previous State, so that a change the watch missed, of a key that is still there, is seen.
	Resync bool
}

// FollowOption changes how Follow runs.
type FollowOption func(*follower)

// FollowErrors calls fn with each error Follow recovers from (a List or Watch that failed, a watch
// that ended with an error): it retries them with a backoff of up to 5 s.
func FollowErrors(fn func(error)) FollowOption { return func(f *follower) { f.onError = fn } }

type follower struct {
	s       Store
	prefix  string
	apply   func(Update) error
	onError func(error)
	state   map[string]KV
	rev     int64
}

// Follow keeps a view of the keys under prefix for apply, on any Store, as a Kubernetes reflector
// does: it lists them, calls apply with the state, then watches from the list's revision and calls
// apply after each batch of events that changes a value. When the watch falls behind the store's
// history (ErrCompacted) it lists again and hands apply the difference by value: a key whose value
// changed while the watch was away is in Changes even though the watch never said so (flannel's
// watcher compared keys only, and missed such changes). Errors of the store are retried with a
// backoff (see FollowErrors); Follow returns apply's error, ErrClosed if the store closes, or the
// context's error when ctx ends.
func Follow(ctx context.Context, s Store, prefix string, apply func(Update) error, opts ...FollowOption) error {
	f := &follower{s: s, prefix: prefix, apply: apply, onError: func(error) {}}
	for _, o := range opts {
		o(f)
	}
	return f.run(ctx)
}

// emptyStorePoll is how often Follow lists a store that was never written (see run).
const emptyStorePoll = 50 * time.Millisecond

const (
	followBackoffMin = 100 * time.Millisecond
	followBackoffMax = 5 * time.Second
)

func (f *follower) run(ctx context.Context) error {
	backoff := followBackoffMin
	retry := func(err error) error {
		if errors.Is(err, ErrClosed) {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		f.onError(err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, followBackoffMax)
		return nil
	}
	relist := true
	for {
		if relist {
			kvs, rev, err := f.s.List(ctx, f.prefix)
			if err != nil {
				if err := retry(err); err != nil {
					return err
				}
				continue
			}
			if err := f.resync(kvs, rev); err != nil {
				return err.(applyError).err
			}
			if rev == 0 {
				// A store that was never written lists at revision 0, which Watch reads as "from
				// now": a write between this List and the Watch would be lost. Nothing to follow
				// yet: list again shortly, until the store has a revision to watch from.
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(emptyStorePoll):
				}
				continue
			}
			relist = false
		}
		ch, err := f.s.Watch(ctx, f.prefix, f.rev)
		if err != nil {
			if err := retry(err); err != nil {
				return err
			}
			continue
		}
		werr := f.follow(ctx, ch)
		var ae applyError
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.As(werr, &ae):
			return ae.err
		case errors.Is(werr, ErrCompacted):
			relist = true
			backoff = followBackoffMin
		case werr != nil:
			if err := retry(werr); err != nil {
				return err
			}
		}
	}
}

// applyError carries apply's error out of follow.
type applyError struct{ err error }

func (e applyError) Error() string { return e.err.Error() }

// resync replaces the state by a list's, and hands apply the difference by value.
func (f *follower) resync(kvs []KV, rev int64) error {
	first := f.state == nil
	next := make(map[string]KV, len(kvs))
	for _, kv := range kvs {
		next[kv.Key] = kv
	}
	var changes []Change
	for k, kv := range next {
		if old, ok := f.state[k]; !ok || !bytes.Equal(old.Value, kv.Value) {
			changes = append(changes, Change{KV: kv})
		}
	}
	for k := range f.state {
		if _, ok := next[k]; !ok {
			changes = append(changes, Change{KV: KV{Key: k}, Deleted: true})
		}
	}
	f.state, f.rev = next, rev
	if !first && len(changes) == 0 {
		return nil
	}
	return f.call(Update{Rev: rev, State: f.state, Changes: sortChanges(changes), Resync: true})
}

func sortChanges(c []Change) []Change {
	slices.SortFunc(c, func(a, b Change) int { return strings.Compare(a.KV.Key, b.KV.Key) })
	return c
}

func (f *follower) call(u Update) error {
	if err := f.apply(u); err != nil {
		return applyError{err}
	}
	return nil
}

// follow applies the watch's events in batches (what the channel holds at once) until it ends, and
// returns why.
func (f *follower) follow(ctx context.Context, ch <-chan Event) error {
	for {
		var e Event
		var ok bool
		select {
		case e, ok = <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		if !ok {
			return errors.New("watch ended")
		}
		// before holds each touched key as it was before the batch.
		before := map[string]touched{}
		for {
			if e.Type == EventError {
				if err := f.flush(before); err != nil {
					return err
				}
				return e.Err
			}
			t, seen := before[e.KV.Key]
			if !seen {
				if old, had := f.state[e.KV.Key]; had {
					t.old = &old
				}
			}
			t.rev = e.KV.Rev
			before[e.KV.Key] = t
			if e.Type == EventDelete {
				delete(f.state, e.KV.Key)
			} else {
				f.state[e.KV.Key] = e.KV
			}
			f.rev = e.KV.Rev
			more := false
			select {
			case e, ok = <-ch:
				more = ok
			default:
			}
			if !more {
				break
			}
		}
		if err := f.flush(before); err != nil {
			return err
		}
		if !ok {
			return errors.New("watch ended")
		}
	}
}

// touched is a key a batch of events changed: as it was before (nil: absent), and the revision of
// its last event.
type touched struct {
	old *KV
	rev int64
}

// flush hands apply the batch's changes by value, if any.
func (f *follower) flush(before map[string]touched) error {
	var changes []Change
	for k, t := range before {
		now, has := f.state[k]
		switch {
		case has && (t.old == nil || !bytes.Equal(t.old.Value, now.Value)):
			changes = append(changes, Change{KV: now})
		case !has && t.old != nil:
			changes = append(changes, Change{KV: KV{Key: k, Rev: t.rev}, Deleted: true})
		}
	}
	if len(changes) == 0 {
		return nil
	}
	return f.call(Update{Rev: f.rev, State: f.state, Changes: sortChanges(changes)})
}
