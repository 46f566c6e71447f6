package netmgr

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/netmgr/netmgr/sandbox"
)

// startPause starts the pause binary inside ns (sandbox.StartPause). Its pid is written to a file under
// the run dir at once, so that a crash before the sandbox record is updated still lets teardown find
// and stop it; a crash before even that is covered by the record's WantPause (see stopPause).
func (m *Manager) startPause(name, hostname string, ns *sandbox.NetNS) (*pauseRecord, error) {
	if m.pauseBin == "" {
		return nil, fmt.Errorf("%w: a pause process was asked for but no pause binary is configured (WithPauseBinary)", ErrInvalid)
	}
	proc, err := sandbox.StartPause(ns, m.pauseBin, hostname)
	if err != nil {
		return nil, err
	}
	p := &proc
	err = os.MkdirAll(filepath.Join(m.runDir, "pause"), 0o700)
	if err == nil {
		err = os.WriteFile(m.pauseFile(name), mustJSON(p), 0o600)
	}
	if err != nil {
		_ = syscall.Kill(proc.PID, syscall.SIGKILL)
		return nil, fmt.Errorf("start pause: record pid: %w", err)
	}
	return p, nil
}

func (m *Manager) pauseFile(name string) string { return filepath.Join(m.runDir, "pause", name) }

// stopPause stops the sandbox's pause process: the recorded one, or the one in its pid file, or (for
// a sandbox that asked for one, created by a process killed before it wrote the pid) any process of
// the pause binary in the sandbox's own namespace.
func (m *Manager) stopPause(rec *sandboxRecord) {
	pr := rec.Pause
	if pr == nil {
		var fromFile pauseRecord
		if b, err := os.ReadFile(m.pauseFile(rec.Name)); err == nil && json.Unmarshal(b, &fromFile) == nil {
			pr = &fromFile
		}
	}
	defer os.Remove(m.pauseFile(rec.Name))
	if pr == nil {
		if rec.WantPause {
			for _, pid := range m.unrecordedPauses(rec) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		return
	}
	pr.Stop()
}

// unrecordedPauses lists processes of the pause binary inside the sandbox's own namespace.
func (m *Manager) unrecordedPauses(rec *sandboxRecord) []int {
	if !rec.owned() || m.pauseBin == "" {
		return nil
	}
	return sandbox.ProcessesIn(rec.NetNS, m.pauseBin)
}
