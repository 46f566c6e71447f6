package netmgr

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/netmgr/netmgr/internal/flock"
)

// Repair takes an object's lock without waiting and re-reads its intent under it: an intent still
// there belongs to an owner that died. That needs the lock file the owner held: an operation creates
// it before recording its intent and removes it (holding the lock) only after clearing the intent, so
// a missing file normally means the owner has finished, and locking a new file could let a live owner
// that uses another run dir be repaired under it. But the run dir is a tmpfs: after a reboot every lock
// file is gone, while network intents, in the durable store, remain. An intent known to be from an
// earlier boot has an owner that is certainly dead, so it is repaired under a fresh lock file.

var (
	bootOnce  sync.Once
	bootID    string
	bootStart time.Time
)

// currentBoot returns this boot's ID and when it started (zero values where /proc does not tell).
func currentBoot() (string, time.Time) {
	bootOnce.Do(func() {
		if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
			bootID = strings.TrimSpace(string(b))
		}
		if b, err := os.ReadFile("/proc/stat"); err == nil {
			for _, line := range strings.Split(string(b), "\n") {
				if v, ok := strings.CutPrefix(line, "btime "); ok {
					if s, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
						bootStart = time.Unix(s, 0)
					}
				}
			}
		}
	})
	return bootID, bootStart
}

// bootIntent is the value to record for a network intent of kind (intentCreate, intentDelete): the
// kind and the boot it is recorded in, so that repair knows an intent of an earlier boot for what it
// is even though its lock file vanished with that boot.
func bootIntent(kind string) []byte {
	if id, _ := currentBoot(); id != "" {
		return []byte(kind + " boot=" + id)
	}
	return []byte(kind)
}

// parseIntent splits a network intent, or a sandbox create or delete intent, into its kind and the
// boot ID it carries ("" for values written without one).
func parseIntent(v string) (kind, boot string) {
	fs := strings.Fields(v)
	if len(fs) == 0 {
		return "", ""
	}
	for _, f := range fs[1:] {
		if b, ok := strings.CutPrefix(f, "boot="); ok {
			boot = b
		}
	}
	return fs[0], boot
}

// intentNode is the node a network intent was recorded by ("" for intents written without one: this
// node's, on a store that only this host uses).
func intentNode(v string) string {
	for _, f := range strings.Fields(v) {
		if n, ok := strings.CutPrefix(f, "node="); ok {
			return n
		}
	}
	return ""
}

// networkIntent is bootIntent's value with the node that records it, on a store several hosts
// may share: only that node repairs it (its lock file and its kernel objects are there).
func (m *Manager) networkIntent(kind string) []byte {
	v := bootIntent(kind)
	if m.shared {
		v = append(v, " node="+m.node...)
	}
	return v
}

// fromEarlierBoot reports whether an intent was certainly recorded during an earlier boot: it carries
// another boot's ID, or, written without one, it is a create whose record was made before this boot
// started (a delete's record tells nothing about when the delete began).
func fromEarlierBoot(intent string, created time.Time) bool {
	kind, boot := parseIntent(intent)
	id, start := currentBoot()
	if boot != "" {
		return id != "" && boot != id
	}
	return kind == intentCreate && !created.IsZero() && !start.IsZero() && created.Before(start)
}

// lockForRepair takes the exclusive lock of an object with an intent for its repair, without waiting.
// It returns ErrBusy while another holds the lock, and also when the lock file is missing and the
// intent is not known to be from an earlier boot (see above). created returns the creation time of the
// object's record, asked for only when the file is missing. The caller re-reads the intent under the
// lock, and removes the lock file again (unlock(true)) if it finds neither a record nor an intent.
func (m *Manager) lockForRepair(name, intent string, created func() time.Time) (*fileLock, error) {
	l, err := m.locks().Lock(context.Background(), name, flock.Exclusive|flock.NoWait|flock.NoCreate)
	if !errors.Is(err, flock.ErrNoFile) {
		return l, err
	}
	if !fromEarlierBoot(intent, created()) {
		return nil, ErrBusy
	}
	return m.tryLock(name)
}
