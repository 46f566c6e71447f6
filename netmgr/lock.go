package netmgr

import (
	"context"
	"errors"
	"path/filepath"
	"sort"

	"github.com/netmgr/netmgr/internal/flock"
)

// DefaultLockTimeout bounds how long an operation waits for another one on the same object (see
// WithLockTimeout).
const DefaultLockTimeout = flock.DefaultTimeout

// fileLock is an flock on a file under the run directory (internal/flock). Holding it means an
// operation on the object is in flight; Recover only repairs objects whose lock it can take, so it
// never races a live process.
type fileLock = flock.Lock

func (m *Manager) locks() flock.Dir {
	return flock.Dir{Path: filepath.Join(m.runDir, "locks"), Timeout: m.lockTimeout, Log: m.log}
}

// lock takes the exclusive lock for name, waiting while another holder has it, until ctx ends or the
// lock timeout passes.
func (m *Manager) lock(ctx context.Context, name string) (*fileLock, error) {
	return m.locks().Lock(ctx, name, flock.Exclusive)
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
			l.Unlock(false)
		}
	}
	d := m.locks()
	for i, n := range sorted {
		if i > 0 && sorted[i-1] == n {
			continue
		}
		// The file normally exists (a network's create leaves it); only when it does not, ask the
		// store whether the network is known, so the common case costs no extra read.
		l, err := d.Lock(ctx, "network-"+n, flock.Shared|flock.NoCreate)
		if errors.Is(err, flock.ErrNoFile) {
			if !m.networkKnown(ctx, n) {
				continue
			}
			l, err = d.Lock(ctx, "network-"+n, flock.Shared)
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
	return m.locks().Lock(context.Background(), name, flock.Exclusive|flock.NoWait)
}

// tryLockShared is tryLock for the shared lock.
func (m *Manager) tryLockShared(name string) (*fileLock, error) {
	return m.locks().Lock(context.Background(), name, flock.Shared|flock.NoWait)
}
