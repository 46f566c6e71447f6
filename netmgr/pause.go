package netmgr

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/netmgr/netmgr/sandbox"
)

// startPause starts the pause binary inside ns, in new UTS and IPC namespaces, detached from the caller.
// Its pid is written to a file under the run dir at once, so that a crash before the sandbox record is
// updated still lets teardown find and stop it.
func (m *Manager) startPause(name, hostname string, ns *sandbox.NetNS) (*pauseRecord, error) {
	if m.pauseBin == "" {
		return nil, fmt.Errorf("%w: a pause process was asked for but no pause binary is configured (WithPauseBinary)", ErrInvalid)
	}
	var cmd *exec.Cmd
	err := ns.Do(func() error {
		cmd = exec.Command(m.pauseBin)
		if hostname != "" {
			cmd.Args = append(cmd.Args, "-hostname", hostname)
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Cloneflags: syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC}
		return cmd.Start()
	})
	if err != nil {
		return nil, fmt.Errorf("start pause: %w", err)
	}
	pid := cmd.Process.Pid
	// Reaped by one SIGCHLD-driven goroutine for all pause processes, not a cmd.Wait each, which
	// would hold an OS thread blocked in wait for the pause process's whole life.
	reapLater(pid)
	_ = cmd.Process.Release()
	st, err := procStartTime(pid)
	if err != nil {
		_ = cmd.Process.Kill()
		return nil, fmt.Errorf("start pause: %w", err)
	}
	p := &pauseRecord{PID: pid, StartTime: st}
	err = os.MkdirAll(filepath.Join(m.runDir, "pause"), 0o700)
	if err == nil {
		err = os.WriteFile(m.pauseFile(name), mustJSON(p), 0o600)
	}
	if err != nil {
		_ = cmd.Process.Kill()
		return nil, fmt.Errorf("start pause: record pid: %w", err)
	}
	return p, nil
}

func (m *Manager) pauseFile(name string) string { return filepath.Join(m.runDir, "pause", name) }

// stopPause sends SIGTERM to the recorded pause process if it is still the same process (pid and start
// time match), then SIGKILL if it has not exited within a second.
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
			// Started, perhaps, by a create killed before it wrote the pid file.
			for _, pid := range m.unrecordedPauses(rec) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		return
	}
	st, err := procStartTime(pr.PID)
	if err != nil || st != pr.StartTime {
		return
	}
	p, err := os.FindProcess(pr.PID)
	if err != nil {
		return
	}
	_ = p.Signal(syscall.SIGTERM)
	for i := 0; i < 100; i++ {
		if s, err := procStartTime(pr.PID); err != nil || s != pr.StartTime {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	_ = p.Kill()
}

// unrecordedPauses lists processes of the pause binary inside the sandbox's own namespace. Only called
// for a sandbox that asked for a pause process and has none recorded, so its /proc scan is rare.
func (m *Manager) unrecordedPauses(rec *sandboxRecord) []int {
	if !rec.owned() || m.pauseBin == "" {
		return nil
	}
	var pin unix.Stat_t
	if unix.Stat(rec.NetNS, &pin) != nil || !sandbox.IsPinned(rec.NetNS) {
		return nil
	}
	var pids []int
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		pid, err := strconv.Atoi(filepath.Base(p))
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(p+"/ns/net", &st) == nil && st.Ino == pin.Ino && st.Dev == pin.Dev && m.isPauseBinary(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// isPauseBinary reports whether the process runs the Manager's pause binary.
func (m *Manager) isPauseBinary(pid int) bool {
	exe, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	if err != nil || m.pauseBin == "" {
		return false
	}
	want, err := filepath.EvalSymlinks(m.pauseBin)
	if err != nil {
		return false
	}
	if abs, err := filepath.Abs(want); err == nil {
		want = abs
	}
	return exe == want
}

// procStartTime reads field 22 of /proc/PID/stat, which with the pid identifies a process.
func procStartTime(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("malformed stat")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0, errors.New("malformed stat")
	}
	// A zombie still has its stat; treat it as gone.
	if f[0] == "Z" {
		return 0, os.ErrNotExist
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// reaper reaps the pause processes this process started, when they exit while it lives.
var reaper struct {
	sync.Mutex
	pids    map[int]bool
	started bool
}

func reapLater(pid int) {
	reaper.Lock()
	defer reaper.Unlock()
	if reaper.pids == nil {
		reaper.pids = map[int]bool{}
	}
	reaper.pids[pid] = true
	if reaper.started {
		return
	}
	reaper.started = true
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGCHLD)
	go func() {
		for {
			reapExited()
			<-ch
		}
	}()
}

// reapExited collects the exit status of every pause process that has exited; only its own pids, so
// an embedder's children stay the embedder's to wait for.
func reapExited() {
	reaper.Lock()
	defer reaper.Unlock()
	for pid := range reaper.pids {
		var ws syscall.WaitStatus
		if got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil); got == pid || errors.Is(err, syscall.ECHILD) {
			delete(reaper.pids, pid)
		}
	}
}
