package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

var (
	kvBucket   = []byte("kv")
	metaBucket = []byte("meta")
	revKey     = []byte("rev")
)

// Bolt is a Store on one bbolt file. The file is opened only for the duration of each call, under a
// kernel-queued flock on a sibling ".lock" file, so any number of goroutines and processes can share it
// without bbolt's polling lock. Values are stored as an 8-byte revision followed by the value.
type Bolt struct {
	path     string
	mu       sync.Mutex // serialises this process's opens; the flock serialises processes
	closed   bool
	noSync   bool
	pollEach time.Duration
}

// BoltOption configures a Bolt store.
type BoltOption func(*Bolt)

// WithNoSync skips fsync on commit. A crash of the process still leaves the file consistent; a crash of
// the machine may lose or corrupt it. Meant for files on tmpfs and for benchmarks of the rest.
func WithNoSync() BoltOption { return func(b *Bolt) { b.noSync = true } }

// WithWatchInterval sets how often a Watch polls the file for changes (default 100ms).
func WithWatchInterval(d time.Duration) BoltOption { return func(b *Bolt) { b.pollEach = d } }

// OpenBolt returns a Store on the bbolt file at path, creating it if needed.
func OpenBolt(path string, opts ...BoltOption) (*Bolt, error) {
	b := &Bolt{path: path, pollEach: 100 * time.Millisecond}
	for _, o := range opts {
		o(b)
	}
	// bbolt commits a write transaction with an fsync even when it changes nothing, and every
	// short-lived process (podctl, the CNI plugin) opens the store: look before creating the buckets.
	if _, err := os.Stat(path); err == nil {
		ready := false
		if b.with(false, func(tx *bolt.Tx) error {
			ready = tx.Bucket(kvBucket) != nil && tx.Bucket(metaBucket) != nil
			return nil
		}) == nil && ready {
			return b, nil
		}
	}
	err := b.with(true, func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucketIfNotExists(kvBucket); err != nil {
			return err
		}
		_, err := tx.CreateBucketIfNotExists(metaBucket)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	return b, nil
}

// with runs fn in a read or write transaction on a freshly opened file, holding the file lock.
func (b *Bolt) with(write bool, fn func(*bolt.Tx) error) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ErrClosed
	}
	lf, err := os.OpenFile(b.path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer lf.Close()
	how := unix.LOCK_SH
	if write {
		how = unix.LOCK_EX
	}
	for {
		err = unix.Flock(int(lf.Fd()), how)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("lock %s: %w", b.path, err)
	}
	// bbolt takes its own flock on the data file; ours already excludes other writers, so a reader
	// opening read-only alongside another reader is the only sharing and bbolt allows it.
	db, err := bolt.Open(b.path, 0o600, &bolt.Options{
		Timeout:  5 * time.Second,
		ReadOnly: !write,
		NoSync:   b.noSync,
	})
	if err != nil {
		return err
	}
	defer db.Close()
	if write {
		return db.Update(fn)
	}
	return db.View(fn)
}

func decode(k, v []byte) KV {
	kv := KV{Key: string(k)}
	if len(v) >= 8 {
		kv.Rev = int64(binary.BigEndian.Uint64(v[:8]))
		kv.Value = append([]byte(nil), v[8:]...)
	}
	return kv
}

func storeRev(tx *bolt.Tx) int64 {
	m := tx.Bucket(metaBucket)
	if m == nil {
		return 0
	}
	v := m.Get(revKey)
	if len(v) != 8 {
		return 0
	}
	return int64(binary.BigEndian.Uint64(v))
}

// Get implements Store.
func (b *Bolt) Get(ctx context.Context, key string) (KV, error) {
	if err := ctx.Err(); err != nil {
		return KV{}, err
	}
	var kv KV
	err := b.with(false, func(tx *bolt.Tx) error {
		v := tx.Bucket(kvBucket).Get([]byte(key))
		if v == nil {
			return ErrNotFound
		}
		kv = decode([]byte(key), v)
		return nil
	})
	return kv, err
}

// List implements Store.
func (b *Bolt) List(ctx context.Context, prefix string) ([]KV, int64, error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	var out []KV
	var rev int64
	err := b.with(false, func(tx *bolt.Tx) error {
		rev = storeRev(tx)
		c := tx.Bucket(kvBucket).Cursor()
		p := []byte(prefix)
		for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
			out = append(out, decode(k, v))
		}
		return nil
	})
	return out, rev, err
}

// Txn implements Store.
func (b *Bolt) Txn(ctx context.Context, cmps []Cmp, ops []Op) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return b.with(true, func(tx *bolt.Tx) error {
		bk := tx.Bucket(kvBucket)
		for _, c := range cmps {
			v := bk.Get([]byte(c.Key))
			var rev int64
			if v != nil {
				rev = decode(nil, v).Rev
			}
			if rev != c.Rev {
				return fmt.Errorf("%w: %s is at revision %d, not %d", ErrConflict, c.Key, rev, c.Rev)
			}
		}
		if len(ops) == 0 {
			return nil
		}
		rev := storeRev(tx) + 1
		if rev%tombstoneEvery == 0 {
			if err := compactTombstones(tx, rev-tombstoneKeep); err != nil {
				return err
			}
		}
		var rb [8]byte
		binary.BigEndian.PutUint64(rb[:], uint64(rev))
		if err := tx.Bucket(metaBucket).Put(revKey, rb[:]); err != nil {
			return err
		}
		for _, op := range ops {
			if op.Delete {
				if err := bk.Delete([]byte(op.Key)); err != nil {
					return err
				}
				// Deletions are remembered with their revision so that watchers polling the file see them.
				if err := tx.Bucket(metaBucket).Put([]byte("del/"+op.Key), rb[:]); err != nil {
					return err
				}
				continue
			}
			val := make([]byte, 8+len(op.Value))
			copy(val, rb[:])
			copy(val[8:], op.Value)
			if err := bk.Put([]byte(op.Key), val); err != nil {
				return err
			}
			_ = tx.Bucket(metaBucket).Delete([]byte("del/" + op.Key))
		}
		return nil
	})
}

// Tombstones of deleted keys let polling watchers see deletions. Every tombstoneEvery revisions those
// older than tombstoneKeep revisions are dropped, bounding the file; a watcher that far behind misses
// deletions, as an etcd watcher does after compaction.
const (
	tombstoneEvery = 1024
	tombstoneKeep  = 16384
)

func compactTombstones(tx *bolt.Tx, before int64) error {
	c := tx.Bucket(metaBucket).Cursor()
	p := []byte("del/")
	var old [][]byte
	for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
		if len(v) == 8 && int64(binary.BigEndian.Uint64(v)) < before {
			old = append(old, append([]byte(nil), k...))
		}
	}
	for _, k := range old {
		if err := tx.Bucket(metaBucket).Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// Watch implements Store by polling the file's revision; deletions are reported from tombstones, which
// Compact trims.
func (b *Bolt) Watch(ctx context.Context, prefix string, rev int64) (<-chan Event, error) {
	ch := make(chan Event, 64)
	go func() {
		defer close(ch)
		t := time.NewTicker(b.pollEach)
		defer t.Stop()
		for {
			var evs []Event
			var now int64
			err := b.with(false, func(tx *bolt.Tx) error {
				now = storeRev(tx)
				if now <= rev {
					return nil
				}
				p := []byte(prefix)
				c := tx.Bucket(kvBucket).Cursor()
				for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
					if kv := decode(k, v); kv.Rev > rev {
						evs = append(evs, Event{Type: EventPut, KV: kv})
					}
				}
				dp := []byte("del/" + prefix)
				c = tx.Bucket(metaBucket).Cursor()
				for k, v := c.Seek(dp); k != nil && bytes.HasPrefix(k, dp); k, v = c.Next() {
					if r := int64(binary.BigEndian.Uint64(v)); r > rev {
						evs = append(evs, Event{Type: EventDelete, KV: KV{Key: string(k[4:]), Rev: r}})
					}
				}
				return nil
			})
			if err != nil {
				return
			}
			if now > rev {
				rev = now
			}
			for _, e := range evs {
				select {
				case ch <- e:
				case <-ctx.Done():
					return
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return ch, nil
}

// Close implements Store. The file is never held open between calls, so Close only refuses later calls.
func (b *Bolt) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	return nil
}
