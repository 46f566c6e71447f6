package etcd

import (
	"context"
	"fmt"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/netmgr/netmgr/netmgr/store"
)

// watchBuffer is how many events a watch holds for a slow reader before it waits for it (the etcd
// client buffers behind it).
const watchBuffer = 64

// Watch streams the changes under prefix made after revision rev (store.Store's contract). It rides
// the etcd client's watch, which survives reconnects: after an outage it resumes from the last
// revision delivered, and if etcd has compacted that history meanwhile the watch ends with one
// EventError wrapping a *store.CompactedError. A watch does not end because etcd is unreachable:
// it waits for it.
func (s *Store) Watch(ctx context.Context, prefix string, rev int64) (<-chan store.Event, error) {
	if rev < 0 {
		return nil, fmt.Errorf("%w: watch from revision %d", store.ErrInvalid, rev)
	}
	if s.isClosed() {
		return nil, store.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if rev == 0 {
		// From now: the changes after the revision etcd has when Watch returns.
		err := s.call(ctx, func(ctx context.Context) error {
			resp, err := s.c.Get(ctx, s.prefix+prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
			if err != nil {
				return err
			}
			rev = resp.Header.Revision
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	wctx, cancel := context.WithCancel(ctx)
	wch := s.c.Watch(wctx, s.prefix+prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	out := make(chan store.Event, watchBuffer)
	go func() {
		defer close(out)
		defer cancel()
		last := rev
		send := func(e store.Event) bool {
			select {
			case out <- e:
				return true
			case <-ctx.Done():
				return false
			}
		}
		fail := func(err error) {
			if ctx.Err() == nil {
				send(store.Event{Type: store.EventError, Err: err})
			}
		}
		for {
			var wr clientv3.WatchResponse
			var ok bool
			select {
			case wr, ok = <-wch:
			case <-ctx.Done():
				return
			case <-s.done:
				fail(store.ErrClosed)
				return
			}
			if !ok {
				if s.isClosed() {
					fail(store.ErrClosed)
				} else {
					fail(fmt.Errorf("etcd %s: watch of %s ended", strings.Join(s.eps, ","), s.prefix+prefix))
				}
				return
			}
			if wr.CompactRevision != 0 {
				fail(&store.CompactedError{Rev: wr.CompactRevision - 1, Asked: last})
				return
			}
			if err := wr.Err(); err != nil {
				if s.isClosed() {
					fail(store.ErrClosed)
				} else {
					fail(fmt.Errorf("etcd %s: watch of %s: %w", strings.Join(s.eps, ","), s.prefix+prefix, err))
				}
				return
			}
			for _, ev := range wr.Events {
				e := store.Event{KV: store.KV{Key: strings.TrimPrefix(string(ev.Kv.Key), s.prefix), Rev: ev.Kv.ModRevision}}
				if ev.Type == clientv3.EventTypeDelete {
					e.Type = store.EventDelete
				} else {
					e.Type = store.EventPut
					e.KV.Value = ev.Kv.Value
				}
				if !send(e) {
					return
				}
				last = ev.Kv.ModRevision
			}
		}
	}()
	return out, nil
}
