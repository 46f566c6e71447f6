package netmgr

import (
	"context"
	"path/filepath"
	"strings"
)

// lockFiles lists the lock files under the run dir by object kind: "network" and "sandbox" map the
// object names that have one. Other lock files (the firewall's) are not listed.
func (m *Manager) lockFiles() map[string][]string {
	out := map[string][]string{}
	paths, _ := filepath.Glob(filepath.Join(m.runDir, "locks", "*.lock"))
	for _, p := range paths {
		base := strings.TrimSuffix(filepath.Base(p), ".lock")
		for _, kind := range []string{"network", "sandbox"} {
			if name, ok := strings.CutPrefix(base, kind+"-"); ok && name != "" {
				out[kind] = append(out[kind], name)
			}
		}
	}
	return out
}

// gcLocks removes the lock files of objects that have neither a record nor an intent (an attach to a
// sandbox that never existed, a create refused for a missing network, a create killed before it
// recorded anything). known holds the names the records and intents read by Recover gave; each
// candidate is locked without waiting and checked again in the store under the lock, and its file
// removed only while held: a process that opened the file and waits for it finds, once it has the
// lock, that the path names another file or none, and locks afresh (internal/flock re-checks the inode).
func (m *Manager) gcLocks(ctx context.Context, rep *Report, files map[string][]string, known map[string]map[string]bool) {
	for _, kind := range []string{"network", "sandbox"} {
		for _, name := range files[kind] {
			if known[kind][name] {
				continue
			}
			l, err := m.tryLock(kind + "-" + name)
			if err != nil {
				continue // held: an operation is under way
			}
			var still bool
			if kind == "network" {
				still = m.networkKnown(ctx, name)
			} else {
				still = m.sandboxKnown(ctx, name)
			}
			l.Unlock(!still)
			if !still {
				rep.Locks = append(rep.Locks, kind+"-"+name)
			}
		}
	}
	if len(rep.Locks) > 0 {
		m.log.Info("gc: lock files of vanished objects removed", "count", len(rep.Locks))
	}
}
