package netmgr

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"golang.org/x/sys/unix"
)

// fileLock is an flock on a file under the run directory. Holding it means an operation on the object
// is in flight; Recover only repairs objects whose lock it can take, so it never races a live process.
type fileLock struct {
	f    *os.File
	path string
}

// lock takes the exclusive lock for name, blocking (the kernel queues waiters). The lock file is
// re-checked after locking because an unlocker may have removed it meanwhile.
func (m *Manager) lock(name string) (*fileLock, error) {
	return m.lockHow(name, unix.LOCK_EX)
}

// lockNetworksShared takes shared locks on the named networks, in sorted order so that two callers
// never wait on each other in a cycle. Attaching holds them until its records are written, so a network
// delete, which takes the exclusive lock, either sees the attachment or happens wholly before it.
// Network records and sandbox records may live in different stores, so this lock, not a transaction,
// is what orders them.
func (m *Manager) lockNetworksShared(names ...string) (func(), error) {
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
		l, err := m.lockHow("network-"+n, unix.LOCK_SH)
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
	return m.lockHow(name, unix.LOCK_EX|unix.LOCK_NB)
}

// tryLockExisting is tryLock for an object whose lock file must already exist: an operation creates it
// before recording its intent and removes it only after clearing the intent, so a missing file means
// the intent's owner has finished, and creating the file anew would only leave it behind.
func (m *Manager) tryLockExisting(name string) (*fileLock, error) {
	if _, err := os.Stat(filepath.Join(m.runDir, "locks", name+".lock")); err != nil {
		return nil, ErrBusy
	}
	return m.lockHow(name, unix.LOCK_EX|unix.LOCK_NB|lockNoCreate)
}

// lockNoCreate, or-ed into lockHow's how, makes it fail with ErrBusy instead of creating the file.
const lockNoCreate = 1 << 16

func (m *Manager) lockHow(name string, how int) (*fileLock, error) {
	path := filepath.Join(m.runDir, "locks", name+".lock")
	flags := os.O_RDWR | os.O_CREATE
	if how&lockNoCreate != 0 {
		flags, how = os.O_RDWR, how&^lockNoCreate
	}
	for {
		f, err := os.OpenFile(path, flags, 0o600)
		if errors.Is(err, os.ErrNotExist) && flags&os.O_CREATE == 0 {
			return nil, ErrBusy
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
		for {
			err = unix.Flock(int(f.Fd()), how)
			if !errors.Is(err, unix.EINTR) {
				break
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
	}
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
