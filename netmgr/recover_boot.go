package netmgr

import (
	"context"
	"errors"
	"time"

	"github.com/netmgr/netmgr/internal/flock"
	"github.com/netmgr/netmgr/internal/intent"
)

// Repair takes an object's lock without waiting and re-reads its intent under it: an intent still
// there belongs to an owner that died. That needs the lock file the owner held: an operation creates
// it before recording its intent and removes it (holding the lock) only after clearing the intent, so
// a missing file normally means the owner has finished, and locking a new file could let a live owner
// that uses another run dir be repaired under it. But the run dir is a tmpfs: after a reboot every lock
// file is gone, while network intents, in the durable store, remain. An intent known to be from an
// earlier boot (intent.Intent.FromEarlierBoot) has an owner that is certainly dead, so it is repaired
// under a fresh lock file.

// networkIntent is a network intent of kind recorded now, with the node that records it on a store
// several hosts may share: only that node repairs it (its lock file and its kernel objects are there).
func (m *Manager) networkIntent(kind string) intent.Intent {
	node := ""
	if m.shared {
		node = m.node
	}
	return intent.Network(kind, node)
}

// lockForRepair takes the exclusive lock of an object with an intent for its repair, without waiting.
// It returns ErrBusy while another holds the lock, and also when the lock file is missing and the
// intent is not known to be from an earlier boot (see above). created returns the creation time of the
// object's record, asked for only when the file is missing. The caller re-reads the intent under the
// lock, and removes the lock file again (unlock(true)) if it finds neither a record nor an intent.
func (m *Manager) lockForRepair(name string, in intent.Intent, created func() time.Time) (*fileLock, error) {
	l, err := m.locks().Lock(context.Background(), name, flock.Exclusive|flock.NoWait|flock.NoCreate)
	if !errors.Is(err, flock.ErrNoFile) {
		return l, err
	}
	if !in.FromEarlierBoot(created()) {
		return nil, ErrBusy
	}
	return m.tryLock(name)
}
