package netmgr

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

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

// tryLock is lock without waiting; it returns ErrBusy if another holder has it.
func (m *Manager) tryLock(name string) (*fileLock, error) {
	return m.lockHow(name, unix.LOCK_EX|unix.LOCK_NB)
}

func (m *Manager) lockHow(name string, how int) (*fileLock, error) {
	path := filepath.Join(m.runDir, "locks", name+".lock")
	for {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
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
