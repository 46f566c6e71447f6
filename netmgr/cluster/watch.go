package cluster

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/netmgr/netmgr/netmgr/store"
)

// WatchNodes follows the live nodes: it sends the full set, sorted by name, once it has first read it,
// and again after every change of any node by value (a record added or gone, an address, attribute,
// subnet or ready flag changed). Sends are coalesced: a reader that falls behind gets the newest set,
// never a backlog, and a change undone before it is read is not sent at all. The channel closes when
// ctx ends.
//
// It lists the nodes, then watches from the list's revision. A watch that ends because the store
// compacted the history it needed (store.ErrCompacted) lists again at once; any other error (the store
// unreachable, a watch cut) lists again after a backoff, logged. After a re-list the new set is
// compared with the last one by value, so a change missed while the watch was down is seen even when no
// key came or went. Only WithLogger of opts is used.
func WatchNodes(ctx context.Context, st store.Store, opts ...Option) <-chan []Node {
	var cfg config
	for _, o := range opts {
		o(&cfg)
	}
	out := make(chan []Node, 1)
	w := &nodeWatch{out: out, log: logger(cfg.log)}
	go func() {
		defer close(out)
		follow(ctx, st, KeyNodes, w.log, w)
	}()
	return out
}

type nodeWatch struct {
	out     chan []Node
	log     *slog.Logger
	last    []Node // what was sent last
	sent    bool   // whether anything was sent yet
	pending []Node // the newest set, when it differs from last
	dirty   bool
}

// update takes the current keys, decoded as nodes.
func (w *nodeWatch) update(state map[string]store.KV) {
	kvs := make([]store.KV, 0, len(state))
	for _, kv := range state {
		kvs = append(kvs, kv)
	}
	nodes := decodeNodes(kvs, w.log)
	w.pending = nodes
	w.dirty = !w.sent || !equalNodes(nodes, w.last)
}

// sendCh returns the channel to offer the pending set on, nil when there is nothing to send.
func (w *nodeWatch) sendCh() chan<- []Node {
	if w.dirty {
		return w.out
	}
	return nil
}

// next returns the set to offer; after it is taken, taken is called.
func (w *nodeWatch) next() []Node { return w.pending }

func (w *nodeWatch) taken() {
	w.last, w.sent, w.dirty = w.pending, true, false
	w.pending = nil
}

func equalNodes(a, b []Node) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].Equal(b[i]) {
			return false
		}
	}
	return true
}

// sink is what follow feeds: the state after each batch of changes, and a coalescing output.
type sink[T any] interface {
	update(state map[string]store.KV)
	sendCh() chan<- T
	next() T
	taken()
}

// follow keeps a copy of the keys under prefix up to date until ctx ends: List, then Watch from the
// list's revision, applying events; after each batch of events (whatever the watch channel holds at
// once) it hands the state to s. It re-lists at once on ErrCompacted and after a backoff on any other
// failure. While it waits for events or a retry it offers s's pending value on s's channel.
//
// netmgr/store may grow a generic Follow; this one is the cluster package's own until then.
func follow[T any](ctx context.Context, st store.Store, prefix string, log *slog.Logger, s sink[T]) {
	retry := backoff{min: 50 * time.Millisecond, max: 5 * time.Second}
	// pause waits d, offering s's pending value meanwhile; false when ctx ended.
	pause := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return false
			case <-t.C:
				return true
			case s.sendCh() <- s.next():
				s.taken()
			}
		}
	}
	fail := func(what string, err error) bool {
		d := retry.next()
		log.Warn("cluster: watching "+prefix+": "+what+", listing again", "err", err, "retry_in", d)
		return pause(d)
	}
	for ctx.Err() == nil {
		kvs, rev, err := st.List(ctx, prefix)
		if err != nil {
			if ctx.Err() != nil || !fail("list failed", err) {
				return
			}
			continue
		}
		state := make(map[string]store.KV, len(kvs))
		for _, kv := range kvs {
			state[kv.Key] = kv
		}
		s.update(state)
		ch, err := st.Watch(ctx, prefix, rev)
		if err != nil {
			if ctx.Err() != nil || !fail("watch failed to start", err) {
				return
			}
			continue
		}
		again, now := watchLoop(ctx, ch, state, s, log, prefix, &retry)
		if !again {
			return
		}
		if !now && !pause(retry.next()) {
			return
		}
	}
}

// watchLoop applies events until the watch ends. It returns again false when ctx ended; else the
// caller lists again, at once when now (the history was compacted), else after a backoff.
func watchLoop[T any](ctx context.Context, ch <-chan store.Event, state map[string]store.KV, s sink[T], log *slog.Logger, prefix string, retry *backoff) (again, now bool) {
	// apply applies one event; false when it ended the watch.
	apply := func(e store.Event) bool {
		switch e.Type {
		case store.EventPut:
			state[e.KV.Key] = e.KV
		case store.EventDelete:
			delete(state, e.KV.Key)
		case store.EventError:
			if errors.Is(e.Err, store.ErrCompacted) {
				log.Info("cluster: watching "+prefix+": history compacted, listing again", "err", e.Err)
				now = true
			} else {
				log.Warn("cluster: watching "+prefix+": watch ended, listing again", "err", e.Err)
			}
			return false
		}
		retry.reset() // the watch works
		return true
	}
	for {
		select {
		case <-ctx.Done():
			return false, false
		case e, ok := <-ch:
			if !ok {
				if ctx.Err() != nil {
					return false, false
				}
				log.Warn("cluster: watching " + prefix + ": watch closed, listing again")
				return true, false
			}
			if !apply(e) {
				return true, now
			}
		drain:
			for {
				select {
				case e, ok := <-ch:
					if !ok {
						break drain // the receive above sees the close next
					}
					if !apply(e) {
						return true, now
					}
				default:
					break drain
				}
			}
			s.update(state)
		case s.sendCh() <- s.next():
			s.taken()
		}
	}
}
