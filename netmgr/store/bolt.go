package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
	"golang.org/x/sys/unix"
)

var (
	kvBucket   = []byte("kv")
	metaBucket = []byte("meta")
	logBucket  = []byte("log") // revision (8 bytes, big-endian) -> the changes of that revision
	revKey     = []byte("rev")
	compactKey = []byte("compact") // in meta: the newest revision trimmed from the log
)

// Bolt is a Store on one bbolt file. The file is opened only for the duration of each call, under a
// kernel-queued flock on a sibling ".lock" file, so any number of goroutines and processes can share it
// without bbolt's polling lock. Values are stored as an 8-byte revision followed by the value.
//
// Waiting for that lock, or for another call of this process, ends with the caller's context. A file
// that is damaged (truncated, overwritten, emptied) gives an error wrapping [ErrCorrupt] rather than a
// panic or a fault; only a missing file is a new, empty store.
//
// Every transaction that writes also records its changes, in the same bbolt transaction, in a change
// log of the last [WithChangeLog] revisions (DefaultChangeLog by default); Watch polls the file and reads that log,
// so a watcher sees every change in order, from any process, as long as it is no further behind. Bolt
// has no leases: [Leases] refuses it, and a Put with a lease is ErrNotSupported.
type Bolt struct {
	path      string
	sem       chan struct{} // one call of this process at a time; the flock serialises processes
	closed    atomic.Bool
	done      chan struct{} // closed by Close, to end watches at once
	closeOnce sync.Once
	noSync    bool
	pollEach  time.Duration
	logKeep   int64
	log       *slog.Logger
}

// DefaultChangeLog is how many revisions of changes a Bolt keeps for watchers by default.
const DefaultChangeLog = 1000

// BoltOption configures a Bolt store.
type BoltOption func(*Bolt)

// WithNoSync skips fsync on commit. A crash of the process still leaves the file consistent; a crash of
// the machine may lose or corrupt it. Meant for files on tmpfs and for benchmarks of the rest.
func WithNoSync() BoltOption { return func(b *Bolt) { b.noSync = true } }

// WithWatchInterval sets how often a Watch polls the file for changes (default 100ms).
func WithWatchInterval(d time.Duration) BoltOption { return func(b *Bolt) { b.pollEach = d } }

// WithChangeLog keeps the changes of the last n revisions for watchers (at least 1, and up to n/8 but
// at most 64 more between trims), instead of DefaultChangeLog. A watcher further behind is told to
// re-list (ErrCompacted). Processes sharing a file should agree on n: each trims the log to its own.
func WithChangeLog(n int) BoltOption {
	return func(b *Bolt) { b.logKeep = max(int64(n), 1) }
}

// WithLogger logs a call that has waited a second for the file's lock, naming the holder when it can.
func WithLogger(l *slog.Logger) BoltOption { return func(b *Bolt) { b.log = l } }

// OpenBolt returns a Store on the bbolt file at path, creating it if it does not exist. It does not
// wait: if another process holds the file's lock, the file is checked by the first call instead.
func OpenBolt(path string, opts ...BoltOption) (*Bolt, error) {
	b := &Bolt{path: path, sem: make(chan struct{}, 1), done: make(chan struct{}), pollEach: 100 * time.Millisecond,
		logKeep: DefaultChangeLog}
	for _, o := range opts {
		o(b)
	}
	lf, err := openLock(b.lockPath())
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	defer lf.Close()
	if err := flock(lf, unix.LOCK_SH|unix.LOCK_NB); errors.Is(err, unix.EWOULDBLOCK) {
		return b, nil
	} else if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := b.prepare(); err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	defer f.Close()
	if _, err := b.check(f); err != nil {
		return nil, err
	}
	return b, nil
}

func (b *Bolt) lockPath() string { return b.path + ".lock" }

// prepare creates the file if it does not exist, under the file lock (shared is enough: writers are
// excluded, and two creators link the same empty store). The new file appears complete or not at all,
// so an existing file that is empty or short is damage, never a creation cut short.
func (b *Bolt) prepare() error {
	if _, err := os.Stat(b.path); err == nil || !errors.Is(err, os.ErrNotExist) {
		return err
	}
	dir, base := filepath.Split(b.path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, base+".new*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	f.Close()
	defer os.Remove(tmp)
	db, err := bolt.Open(tmp, 0o600, &bolt.Options{NoSync: b.noSync})
	if err != nil {
		return err
	}
	err = db.Update(func(tx *bolt.Tx) error { return ensureBuckets(tx) })
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	// Link, not rename, so that a concurrent creator's file is kept; where links are not supported,
	// rename is as safe under the lock: the file it would replace is another empty store.
	if err := os.Link(tmp, b.path); err != nil && !errors.Is(err, os.ErrExist) {
		if err := os.Rename(tmp, b.path); err != nil {
			return err
		}
	}
	if !b.noSync {
		if d, err := os.Open(dir); err == nil {
			_ = d.Sync()
			d.Close()
		}
	}
	return nil
}

func ensureBuckets(tx *bolt.Tx) error {
	for _, name := range [][]byte{kvBucket, metaBucket} {
		if tx.Bucket(name) == nil {
			if _, err := tx.CreateBucket(name); err != nil {
				return err
			}
		}
	}
	if tx.Bucket(logBucket) != nil {
		return nil
	}
	// A file from before the change log: its history starts now, and the tombstones that told
	// watchers of deletions then are replaced by the log.
	if _, err := tx.CreateBucket(logBucket); err != nil {
		return err
	}
	mb := tx.Bucket(metaBucket)
	if rev := storeRev(tx); rev > 0 {
		if err := mb.Put(compactKey, revBytes(rev)); err != nil {
			return err
		}
	}
	var old [][]byte
	c := mb.Cursor()
	for k, _ := c.Seek([]byte("del/")); k != nil && bytes.HasPrefix(k, []byte("del/")); k, _ = c.Next() {
		old = append(old, append([]byte(nil), k...))
	}
	for _, k := range old {
		if err := mb.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// with runs fn in a read or write transaction on a freshly opened file, holding the file lock.
func (b *Bolt) with(ctx context.Context, write bool, fn func(*bolt.Tx) error) error {
	return b.locked(ctx, write, func() error {
		// The file exists but for the first call on a new path (or after someone removed it): access
		// reports that (errMissing) before anything else, and only then is it made.
		err := b.access(write, fn)
		if !errors.Is(err, errMissing) {
			return err
		}
		if err := b.prepare(); err != nil {
			return err
		}
		return b.access(write, fn)
	})
}

// errMissing is access's report that the file does not exist (wrapping os.ErrNotExist).
var errMissing = fmt.Errorf("state file missing: %w", os.ErrNotExist)

// locked runs fn holding this process's turn and the file lock.
func (b *Bolt) locked(ctx context.Context, write bool, fn func() error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if b.closed.Load() {
		return ErrClosed
	}
	lf, err := b.lock(ctx, write)
	if err != nil {
		return err
	}
	defer func() {
		lf.Close()
		<-b.sem
	}()
	return fn()
}

// Waiting for the lock: a second of it is logged; the blocking flock runs in a goroutine so that the
// caller can leave when its context ends.
const slowWait = time.Second

// lock takes this process's turn and the file lock, both waits ending with ctx. It returns the lock
// file, whose Close releases the flock; the caller then releases the turn (<-b.sem).
func (b *Bolt) lock(ctx context.Context, write bool) (lockFile, error) {
	var slow <-chan time.Time
	start := time.Now()
	waitErr := func(err error) error {
		return fmt.Errorf("waiting for lock of state file %s%s: %w", b.path, b.holder(), err)
	}
	select {
	case b.sem <- struct{}{}:
	default:
		t := time.NewTimer(slowWait)
		defer t.Stop()
		slow = t.C
	wait:
		for {
			select {
			case b.sem <- struct{}{}:
				break wait
			case <-ctx.Done():
				return -1, waitErr(ctx.Err())
			case <-slow:
				b.logSlow(start)
			}
		}
	}
	lf, err := openLock(b.lockPath())
	if err != nil {
		<-b.sem
		return -1, err
	}
	how := unix.LOCK_SH
	if write {
		how = unix.LOCK_EX
	}
	err = flock(lf, how|unix.LOCK_NB)
	if err == nil {
		return lf, nil
	}
	if !errors.Is(err, unix.EWOULDBLOCK) {
		lf.Close()
		<-b.sem
		return -1, fmt.Errorf("lock %s: %w", b.path, err)
	}
	// Held by another process: wait in the kernel's queue, from a goroutine the caller may leave. A left
	// goroutine keeps this process's turn until it gets the lock, then gives both back at once, so at
	// most one is ever waiting per Bolt.
	got := make(chan error, 1)
	go func() { got <- flock(lf, how) }()
	if slow == nil {
		t := time.NewTimer(slowWait - time.Since(start))
		defer t.Stop()
		slow = t.C
	}
	for {
		select {
		case err := <-got:
			if err != nil {
				lf.Close()
				<-b.sem
				return -1, fmt.Errorf("lock %s: %w", b.path, err)
			}
			return lf, nil
		case <-ctx.Done():
			go func() {
				<-got
				lf.Close()
				<-b.sem
			}()
			return -1, waitErr(ctx.Err())
		case <-slow:
			b.logSlow(start)
		}
	}
}

// lockFile is the descriptor of a store's ".lock" file, whose flock excludes other processes. It is a
// bare descriptor, not an *os.File: every call opens and closes it, and os.File's set-up (a netpoll
// registration that fails for a regular file, blocking-mode fcntls on Fd) was most of the syscalls
// a store call makes besides bbolt's own.
type lockFile int

// openLock opens (creating it if needed) the lock file at path.
func openLock(path string) (lockFile, error) {
	for {
		fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o600)
		if err == nil {
			return lockFile(fd), nil
		}
		if !errors.Is(err, unix.EINTR) {
			return -1, &os.PathError{Op: "open", Path: path, Err: err}
		}
	}
}

// openData opens the data file as os.OpenFile(path, flag, 0) would, but as os.NewFile's file: a
// regular file is never pollable, and os.OpenFile's attempt (nonblocking mode set, a failing netpoll
// registration, blocking mode set again) is five syscalls on every store call.
func openData(path string, flag int) (*os.File, error) {
	for {
		fd, err := unix.Open(path, flag|unix.O_CLOEXEC, 0)
		if err == nil {
			return os.NewFile(uintptr(fd), path), nil
		}
		if !errors.Is(err, unix.EINTR) {
			return nil, &os.PathError{Op: "open", Path: path, Err: err}
		}
	}
}

// Close closes the descriptor, which releases its flock.
func (l lockFile) Close() error { return unix.Close(int(l)) }

// flock is flock(2) on l, retried on EINTR.
func flock(l lockFile, how int) error {
	for {
		err := unix.Flock(int(l), how)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

func (b *Bolt) logSlow(start time.Time) {
	if b.log != nil {
		b.log.Warn("waiting for lock of state file"+b.holder(), "file", b.path, "waited", time.Since(start).Round(time.Millisecond))
	}
}

// holder names the process holding the file's flock, as " (held by pid N)", from /proc/locks; "" when
// it cannot tell.
func (b *Bolt) holder() string {
	var st unix.Stat_t
	if err := unix.Stat(b.lockPath(), &st); err != nil {
		return ""
	}
	data, err := os.ReadFile("/proc/locks")
	if err != nil {
		return ""
	}
	id := fmt.Sprintf("%02x:%02x:%d", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	var pids []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		// "1: FLOCK  ADVISORY  WRITE 4321 00:2a:1234 0 EOF"; waiters have "->" after the number.
		if len(f) >= 6 && f[1] == "FLOCK" && f[5] == id {
			pids = append(pids, f[4])
		}
	}
	switch {
	case len(pids) == 0:
		return ""
	case len(pids) == 1 && pids[0] == strconv.Itoa(os.Getpid()):
		return " (held by this process)"
	}
	return " (held by pid " + strings.Join(pids, ", ") + ")"
}

// access opens the file and runs fn in a transaction. bbolt trusts the file: on a damaged one it
// panics on an assertion, or faults reading the memory map past the end of a truncated file. The cheap
// checks of check rule out the faults known; the rest are recovered here and reported as ErrCorrupt.
func (b *Bolt) access(write bool, fn func(*bolt.Tx) error) (err error) {
	var file *os.File
	var db *bolt.DB
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			reason := strings.Join(strings.Fields(fmt.Sprint(r)), " ")
			if f, ok := r.(interface{ Addr() uintptr }); ok {
				reason = fmt.Sprintf("memory fault at %#x reading it", f.Addr())
			}
			err = &CorruptError{Path: b.path, Reason: reason}
			b.abandon(db, write, file)
		}
	}()
	db, err = bolt.Open(b.path, 0o600, &bolt.Options{
		// bbolt takes its own flock on the data file; ours already excludes other writers, so a reader
		// opening read-only alongside another reader is the only sharing and bbolt allows it.
		Timeout:  5 * time.Second,
		ReadOnly: !write,
		NoSync:   b.noSync,
		OpenFile: func(name string, flag int, mode os.FileMode) (*os.File, error) {
			// Never create it here: bbolt would take an empty file for new. A missing file is errMissing, and
			// with makes it (prepare) and comes back.
			f, err := openData(name, flag&^os.O_CREATE)
			if errors.Is(err, os.ErrNotExist) {
				return nil, errMissing
			}
			if err != nil {
				return nil, err
			}
			if _, err := b.check(f); err != nil {
				f.Close()
				return nil, err
			}
			file = f
			return f, nil
		},
	})
	switch {
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrChecksum), errors.Is(err, berrors.ErrVersionMismatch):
		return &CorruptError{Path: b.path, Reason: err.Error()}
	case err != nil:
		return err
	}
	if write {
		err = db.Update(fn)
	} else {
		err = db.View(fn)
	}
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	return err
}

// abandon cleans up after a panic in bbolt. A read transaction has been rolled back by View, so the
// handle closes normally. After a panic in Open or in a write transaction bbolt's locks may still be
// held and Close could hang: the handle is left (its memory map stays) and only its file is unlocked
// and closed. Unlocking matters: the memory map keeps the open file, and with it bbolt's flock.
func (b *Bolt) abandon(db *bolt.DB, write bool, file *os.File) {
	defer func() { _ = recover() }()
	if db != nil && !write {
		_ = db.Close()
		return
	}
	if file != nil {
		_ = unix.Flock(int(file.Fd()), unix.LOCK_UN)
		file.Close()
	}
}

// bbolt's file format: each of the first two pages holds a page header and a meta record.
const (
	pageHeaderSize = 16
	metaSize       = 64 // magic, version, page size, flags, root (pgid, sequence), freelist, pgid, txid, checksum
	boltMagic      = 0xED0CDAED
	boltVersion    = 2
	noFreelist     = ^uint64(0)
)

type meta struct {
	pageSize uint32
	root     uint64
	freelist uint64
	pgid     uint64 // high-water mark: pages 0..pgid-1 are in the file
	txid     uint64
}

// readMeta decodes the meta record at the start of page buf, or reports it invalid as bbolt would.
func readMeta(buf []byte) (meta, bool) {
	if len(buf) < pageHeaderSize+metaSize {
		return meta{}, false
	}
	m := buf[pageHeaderSize : pageHeaderSize+metaSize]
	le := binary.LittleEndian
	h := fnv.New64a()
	h.Write(m[:56])
	if le.Uint32(m[0:]) != boltMagic || le.Uint32(m[4:]) != boltVersion || le.Uint64(m[56:]) != h.Sum64() {
		return meta{}, false
	}
	return meta{pageSize: le.Uint32(m[8:]), root: le.Uint64(m[16:]), freelist: le.Uint64(m[32:]),
		pgid: le.Uint64(m[40:]), txid: le.Uint64(m[48:])}, true
}

// check rejects what bbolt would map without question and then fault on: an empty or short file, and
// one shorter than its meta page says (truncated). It reads only the two meta pages, and returns the
// one bbolt would use.
func (b *Bolt) check(f *os.File) (meta, error) {
	corrupt := func(format string, a ...any) error {
		return &CorruptError{Path: b.path, Reason: fmt.Sprintf(format, a...)}
	}
	fi, err := f.Stat()
	if err != nil {
		return meta{}, err
	}
	size := fi.Size()
	if size == 0 {
		return meta{}, corrupt("the file is empty")
	}
	// One read covers both meta pages at the usual page size (4096); other sizes read meta 1 apart.
	head := make([]byte, 2*4096)
	n, _ := f.ReadAt(head, 0)
	head = head[:n]
	m0, ok0 := readMeta(head)
	var m1 meta
	ok1 := false
	buf := make([]byte, pageHeaderSize+metaSize)
	// As bbolt does: the page size comes from meta 0, else from a valid meta 1 at any size it may have.
	for ps := int64(1024); ps <= 1<<24 && ps+pageHeaderSize+metaSize <= size; ps <<= 1 {
		if ok0 && ps != int64(m0.pageSize) {
			continue
		}
		page := buf
		if ps+pageHeaderSize+metaSize <= int64(len(head)) {
			page = head[ps:]
		} else {
			n, _ := f.ReadAt(buf, ps)
			page = buf[:n]
		}
		if m, ok := readMeta(page); ok && int64(m.pageSize) == ps {
			m1, ok1 = m, true
			break
		}
	}
	if !ok0 && !ok1 {
		return meta{}, corrupt("no valid meta page (file of %d bytes)", size)
	}
	m := m0
	if !ok0 || (ok1 && m1.txid > m0.txid) {
		m = m1
	}
	ps := int64(m.pageSize)
	if ps < 1024 {
		return meta{}, corrupt("meta page %d gives a page size of %d", m.txid%2, ps)
	}
	if size < 2*ps {
		return meta{}, corrupt("truncated to %d bytes", size)
	}
	if m.pgid < 2 || m.root >= m.pgid || (m.freelist >= m.pgid && m.freelist != noFreelist) {
		return meta{}, corrupt("meta page %d is inconsistent", m.txid%2)
	}
	if need := int64(m.pgid) * ps; size < need {
		return meta{}, corrupt("truncated to %d bytes, its meta page says %d", size, need)
	}
	return m, nil
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
	var kv KV
	err := b.with(ctx, false, func(tx *bolt.Tx) error {
		bk := tx.Bucket(kvBucket)
		if bk == nil {
			return ErrNotFound
		}
		v := bk.Get([]byte(key))
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
	var out []KV
	var rev int64
	err := b.with(ctx, false, func(tx *bolt.Tx) error {
		rev = storeRev(tx)
		bk := tx.Bucket(kvBucket)
		if bk == nil {
			return nil
		}
		c := bk.Cursor()
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
	for _, op := range ops {
		if op.Lease != NoLease {
			return fmt.Errorf("%w: put %s with lease %d: the bolt store has no leases: node liveness needs a cluster store such as etcd",
				ErrNotSupported, op.Key, op.Lease)
		}
	}
	return b.with(ctx, true, func(tx *bolt.Tx) error {
		if err := ensureBuckets(tx); err != nil {
			return err
		}
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
		rb := revBytes(rev)
		if err := tx.Bucket(metaBucket).Put(revKey, rb); err != nil {
			return err
		}
		var changes []byte
		for _, op := range ops {
			if op.Delete {
				if bk.Get([]byte(op.Key)) == nil {
					continue // no change, no event
				}
				if err := bk.Delete([]byte(op.Key)); err != nil {
					return err
				}
				changes = appendChange(changes, op)
				continue
			}
			val := make([]byte, 8+len(op.Value))
			copy(val, rb)
			copy(val[8:], op.Value)
			if err := bk.Put([]byte(op.Key), val); err != nil {
				return err
			}
			changes = appendChange(changes, op)
		}
		return b.logChanges(tx, rev, changes)
	})
}

func revBytes(rev int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(rev)) }

// revOf decodes a log key; 0 for anything else.
func revOf(k []byte) int64 {
	if len(k) != 8 {
		return 0
	}
	return int64(binary.BigEndian.Uint64(k))
}

// The change log holds, for every revision, the changes of its transaction in op order, each as a
// kind byte (changePut, changeDel), the key's length (uvarint) and key, and for a put the value's
// length (uvarint) and value.
const (
	changePut = 'p'
	changeDel = 'd'
)

func appendChange(buf []byte, op Op) []byte {
	kind := byte(changePut)
	if op.Delete {
		kind = changeDel
	}
	buf = append(buf, kind)
	buf = binary.AppendUvarint(buf, uint64(len(op.Key)))
	buf = append(buf, op.Key...)
	if !op.Delete {
		buf = binary.AppendUvarint(buf, uint64(len(op.Value)))
		buf = append(buf, op.Value...)
	}
	return buf
}

// logChanges records the changes of revision rev and trims the log to the last logKeep revisions.
// Every revision has an entry (empty if its transaction changed nothing), so the log holds exactly the
// revisions after the compact revision. It is trimmed in batches of up to 64 revisions (an eighth of
// the log if that is less), so that most writes do not also rewrite its oldest page.
func (b *Bolt) logChanges(tx *bolt.Tx, rev int64, changes []byte) error {
	lb := tx.Bucket(logBucket)
	lb.FillPercent = 1 // appended at the end, trimmed at the start: full pages stay full
	if err := lb.Put(revBytes(rev), changes); err != nil {
		return err
	}
	compact := compactRev(tx)
	if rev-compact <= b.logKeep+min(64, b.logKeep/8) {
		return nil
	}
	upTo := rev - b.logKeep
	var old [][]byte
	c := lb.Cursor()
	for k, _ := c.First(); k != nil && revOf(k) <= upTo; k, _ = c.Next() {
		old = append(old, append([]byte(nil), k...))
	}
	for _, k := range old {
		if err := lb.Delete(k); err != nil {
			return err
		}
	}
	return tx.Bucket(metaBucket).Put(compactKey, revBytes(upTo))
}

// compactRev is the newest revision whose changes are no longer in the log: 0 if it holds them all,
// the store's revision for a file from before the log.
func compactRev(tx *bolt.Tx) int64 {
	mb := tx.Bucket(metaBucket)
	if mb == nil {
		return 0
	}
	if v := mb.Get(compactKey); len(v) == 8 {
		return int64(binary.BigEndian.Uint64(v))
	}
	if tx.Bucket(logBucket) == nil {
		return storeRev(tx)
	}
	return 0
}

// Watch implements Store. A goroutine polls the file every WithWatchInterval: when bbolt's commit
// counter in the meta page is unchanged since the last look nothing was written, and the poll ends
// there, without opening the database; else it reads the change log after the last revision seen. A
// rev of 0 is read as the store's revision before Watch returns.
func (b *Bolt) Watch(ctx context.Context, prefix string, rev int64) (<-chan Event, error) {
	if rev < 0 {
		return nil, fmt.Errorf("%w: watch from revision %d", ErrInvalid, rev)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if b.closed.Load() {
		return nil, ErrClosed
	}
	if rev == 0 {
		if err := b.with(ctx, false, func(tx *bolt.Tx) error { rev = storeRev(tx); return nil }); err != nil {
			return nil, err
		}
	}
	ch := make(chan Event, 64)
	w := &watcher{b: b, prefix: []byte(prefix), after: rev}
	go w.run(ctx, ch)
	return ch, nil
}

// watchBatch bounds the revisions one poll reads while it holds the lock.
const watchBatch = 1000

type watcher struct {
	b      *Bolt
	prefix []byte
	after  int64     // every change up to this revision has been sent
	high   int64     // the highest store revision seen, to notice a file that went back
	seen   fileState // the file as of the last poll that caught up
}

// fileState tells whether a file may have changed: which file it is, and bbolt's commit counter.
type fileState struct {
	dev, ino uint64
	txid     uint64
}

func (w *watcher) run(ctx context.Context, ch chan<- Event) {
	defer close(ch)
	t := time.NewTicker(w.b.pollEach)
	defer t.Stop()
	for {
		evs, more, err := w.poll(ctx)
		if err != nil {
			if ctx.Err() == nil {
				select {
				case ch <- Event{Type: EventError, Err: err}:
				case <-ctx.Done():
				}
			}
			return
		}
		for _, e := range evs {
			select {
			case ch <- e:
			case <-ctx.Done():
				return
			}
		}
		if more {
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-w.b.done:
		case <-t.C:
		}
	}
}

// poll returns the events of the next revisions, and whether there are more to read now.
func (w *watcher) poll(ctx context.Context) (evs []Event, more bool, err error) {
	b := w.b
	err = b.locked(ctx, false, func() error {
		st, ok := b.peek()
		if ok && st == w.seen {
			return nil
		}
		if err := b.prepare(); err != nil {
			return err
		}
		return b.access(false, func(tx *bolt.Tx) error {
			now := storeRev(tx)
			if now < w.high {
				return fmt.Errorf("state file %s was replaced: its revision went back from %d to %d: %w",
					b.path, w.high, now, &CompactedError{Rev: now, Asked: w.after})
			}
			w.high = now
			if now <= w.after {
				w.seen = st
				return nil
			}
			if compact := compactRev(tx); w.after < compact {
				return &CompactedError{Rev: compact, Asked: w.after}
			}
			c := tx.Bucket(logBucket).Cursor()
			want := w.after + 1
			for k, v := c.Seek(revBytes(want)); want <= now && want <= w.after+watchBatch; k, v = c.Next() {
				if revOf(k) != want {
					return &CorruptError{Path: b.path, Reason: fmt.Sprintf("its change log has no revision %d", want)}
				}
				if evs, err = b.decodeChanges(evs, want, v, w.prefix); err != nil {
					return err
				}
				want++
			}
			w.after = want - 1
			more = w.after < now
			if !more {
				w.seen = st
			}
			return nil
		})
	})
	return evs, more, err
}

// peek reads which file is at the path and its commit counter, from its meta pages only; ok is false
// when it cannot tell (then the file is opened, and that reports what is wrong).
func (b *Bolt) peek() (fileState, bool) {
	f, err := openData(b.path, os.O_RDONLY)
	if err != nil {
		return fileState{}, false
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return fileState{}, false
	}
	m, err := b.check(f)
	if err != nil {
		return fileState{}, false
	}
	return fileState{dev: st.Dev, ino: st.Ino, txid: m.txid}, true
}

// decodeChanges appends the events under prefix of the log entry of revision rev.
func (b *Bolt) decodeChanges(evs []Event, rev int64, v, prefix []byte) ([]Event, error) {
	bad := func() error {
		return &CorruptError{Path: b.path, Reason: fmt.Sprintf("its change log entry for revision %d is damaged", rev)}
	}
	field := func() ([]byte, bool) {
		n, l := binary.Uvarint(v)
		if l <= 0 || n > uint64(len(v)-l) {
			return nil, false
		}
		f := v[l : l+int(n)]
		v = v[l+int(n):]
		return f, true
	}
	for len(v) > 0 {
		kind := v[0]
		v = v[1:]
		key, ok := field()
		if !ok {
			return evs, bad()
		}
		e := Event{KV: KV{Key: string(key), Rev: rev}}
		switch kind {
		case changePut:
			val, ok := field()
			if !ok {
				return evs, bad()
			}
			e.Type = EventPut
			e.KV.Value = append([]byte(nil), val...) // as Get gives it: nil when empty
		case changeDel:
			e.Type = EventDelete
		default:
			return evs, bad()
		}
		if bytes.HasPrefix(key, prefix) {
			evs = append(evs, e)
		}
	}
	return evs, nil
}

// Close implements Store. The file is never held open between calls, so Close only refuses later calls
// and ends watches with ErrClosed.
func (b *Bolt) Close() error {
	b.closed.Store(true)
	b.closeOnce.Do(func() { close(b.done) })
	return nil
}
