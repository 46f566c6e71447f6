package netmgr

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultLockTimeout bounds how long an operation waits for another one on the same object (see
// WithLockTimeout).
const DefaultLockTimeout = 60 * time.Second

// fileLock is an flock on a file under the run directory. Holding it means an operation on the object
// is in flight; Recover only repairs objects whose lock it can take, so it never races a live process.
type fileLock struct {
	f    *os.File
	path string
}

// lock takes the exclusive lock for name, waiting while another holder has it, until ctx ends or the
// lock timeout passes. The lock file is re-checked after locking because an unlocker may have removed
// it meanwhile.
func (m *Manager) lock(ctx context.Context, name string) (*fileLock, error) {
	return m.lockHow(ctx, name, unix.LOCK_EX)
}

// lockNetworksShared takes shared locks on the named networks, in sorted order so that two callers
// never wait on each other in a cycle. Attaching holds them until its records are written, so a network
// delete, which takes the exclusive lock, either sees the attachment or happens wholly before it.
// Network records and sandbox records may live in different stores, so this lock, not a transaction,
// is what orders them. A network that has neither a record nor a lock file gets no lock file: there is
// nothing to order against, and the caller's read of the record reports it missing.
func (m *Manager) lockNetworksShared(ctx context.Context, names ...string) (func(), error) {
	sorted := append([]string(nil), names...)
	sort.Strings(sorted)
	var held []*fileLock
	release := func() {
		for _, l := range held {
			l.unlock(false)
		}
	}
	for i, n := range sorted {
		if i > 0 && sorted[i-1] == n {
			continue
		}
		// The file normally exists (a network's create leaves it); only when it does not, ask the
		// store whether the network is known, so the common case costs no extra read.
		l, err := m.lockHow(ctx, "network-"+n, unix.LOCK_SH|lockNoCreate)
		if errors.Is(err, errNoLockFile) {
			if !m.networkKnown(ctx, n) {
				continue
			}
			l, err = m.lockHow(ctx, "network-"+n, unix.LOCK_SH)
		}
		if err != nil {
			release()
			return nil, err
		}
		held = append(held, l)
	}
	return release, nil
}

// tryLock is lock without waiting; it returns ErrBusy if another holder has it.
func (m *Manager) tryLock(name string) (*fileLock, error) {
	return m.lockHow(context.Background(), name, unix.LOCK_EX|unix.LOCK_NB)
}

// tryLockExisting is tryLock for an object whose lock file must already exist: an operation creates it
// before recording its intent and removes it only after clearing the intent, so a missing file means
// the intent's owner has finished, and creating the file anew would only leave it behind.
func (m *Manager) tryLockExisting(name string) (*fileLock, error) {
	l, err := m.lockHow(context.Background(), name, unix.LOCK_EX|unix.LOCK_NB|lockNoCreate)
	if errors.Is(err, errNoLockFile) {
		return nil, ErrBusy
	}
	return l, err
}

// lockNoCreate, or-ed into lockHow's how, makes it fail with errNoLockFile instead of creating the file.
const lockNoCreate = 1 << 16

var errNoLockFile = errors.New("no lock file")

// validLockName refuses names that could leave the locks directory. Every entry point validates names
// before it locks (checkName); this is the last line of defence.
func validLockName(name string) bool {
	return name != "" && !strings.ContainsAny(name, "/\x00") && name != "." && name != ".." && !strings.HasPrefix(name, ".")
}

func (m *Manager) lockPath(name string) string {
	return filepath.Join(m.runDir, "locks", name+".lock")
}

func (m *Manager) lockHow(ctx context.Context, name string, how int) (*fileLock, error) {
	if !validLockName(name) {
		return nil, fmt.Errorf("%w: invalid object name %q", ErrInvalid, name)
	}
	path := m.lockPath(name)
	flags := os.O_RDWR | os.O_CREATE
	if how&lockNoCreate != 0 {
		flags, how = os.O_RDWR, how&^lockNoCreate
	}
	wait := how&unix.LOCK_NB == 0
	how |= unix.LOCK_NB
	timeout := m.lockTimeout
	if timeout <= 0 {
		timeout = DefaultLockTimeout
	}
	var start time.Time
	warned := false
	for {
		f, err := os.OpenFile(path, flags, 0o600)
		if errors.Is(err, os.ErrNotExist) && flags&os.O_CREATE == 0 {
			return nil, errNoLockFile
		}
		if errors.Is(err, os.ErrNotExist) {
			if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
				return nil, fmt.Errorf("lock %s: %w", name, err)
			}
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("lock %s: %w", name, err)
		}
		for delay := time.Millisecond; ; {
			err = unix.Flock(int(f.Fd()), how)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if !errors.Is(err, unix.EWOULDBLOCK) || !wait {
				break
			}
			// Held by another operation: wait for it, politely and within bounds.
			if start.IsZero() {
				start = time.Now()
			}
			waited := time.Since(start)
			if !warned && waited > time.Second {
				warned = true
				m.log.Warn("waiting for another operation on the same object", "lock", name, "holder", lockHolder(f))
			}
			if waited > timeout {
				f.Close()
				return nil, fmt.Errorf("%w: gave up after %s waiting for lock %s (held by %s)", ErrBusy, timeout.Round(time.Second), name, lockHolder(nil, path))
			}
			select {
			case <-ctx.Done():
				holder := lockHolder(f)
				f.Close()
				return nil, fmt.Errorf("waiting for lock %s (held by %s): %w", name, holder, ctx.Err())
			case <-time.After(delay):
			}
			if delay < 50*time.Millisecond {
				delay *= 2
			}
		}
		if err != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, ErrBusy
			}
			return nil, fmt.Errorf("lock %s: %w", name, err)
		}
		var a, b unix.Stat_t
		if unix.Fstat(int(f.Fd()), &a) == nil && unix.Stat(path, &b) == nil && a.Ino == b.Ino {
			return &fileLock{f: f, path: path}, nil
		}
		f.Close() // the file was replaced or removed while we waited; lock the current one
		if flags&os.O_CREATE == 0 {
			return nil, errNoLockFile
		}
	}
}

// lockHolder names the process holding a lock on the file (open f, or the file at path), as "pid N
// (COMM)", from /proc/locks; "another process" when it cannot tell.
func lockHolder(f *os.File, path ...string) string {
	var st unix.Stat_t
	switch {
	case f != nil:
		if unix.Fstat(int(f.Fd()), &st) != nil {
			return "another process"
		}
	case len(path) > 0:
		if unix.Stat(path[0], &st) != nil {
			return "another process"
		}
	default:
		return "another process"
	}
	lf, err := os.Open("/proc/locks")
	if err != nil {
		return "another process"
	}
	defer lf.Close()
	// Lines look like "1: FLOCK  ADVISORY  WRITE 1234 00:1a:5678 0 EOF"; a waiter's line has "->".
	want := ":" + strconv.FormatUint(st.Ino, 10)
	sc := bufio.NewScanner(lf)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 6 || fs[1] == "->" || !strings.HasSuffix(fs[5], want) {
			continue
		}
		pid := fs[4]
		if pid == strconv.Itoa(os.Getpid()) {
			return "this process"
		}
		comm, _ := os.ReadFile("/proc/" + pid + "/comm")
		if c := strings.TrimSpace(string(comm)); c != "" {
			return "pid " + pid + " (" + c + ")"
		}
		return "pid " + pid
	}
	return "another process"
}

// unlock releases the lock; remove also deletes the lock file (done when the object is gone).
func (l *fileLock) unlock(remove bool) {
	if l == nil {
		return
	}
	if remove {
		_ = os.Remove(l.path)
	}
	l.f.Close()
}
