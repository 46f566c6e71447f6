package sandbox

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Process is a process that holds a sandbox, such as a pause process: its pid and its start time
// (field 22 of /proc/PID/stat), which together identify it even after the pid is reused.
type Process struct {
	PID       int    `json:"pid"`
	StartTime uint64 `json:"start_time"`
}

// StartPause starts bin inside ns, in new UTS and IPC namespaces and a session of its own, detached
// from the caller (with "-hostname NAME" when hostname is set). The caller's process reaps it if it
// exits first, with one goroutine for all such processes: no OS thread is held waiting for each.
func StartPause(ns *NetNS, bin, hostname string) (Process, error) {
	var cmd *exec.Cmd
	err := ns.Do(func() error {
		cmd = exec.Command(bin)
		if hostname != "" {
			cmd.Args = append(cmd.Args, "-hostname", hostname)
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Cloneflags: syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC}
		return cmd.Start()
	})
	if err != nil {
		return Process{}, fmt.Errorf("start pause: %w", err)
	}
	pid := cmd.Process.Pid
	reapLater(pid)
	_ = cmd.Process.Release()
	st, err := procStartTime(pid)
	if err != nil {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		return Process{}, fmt.Errorf("start pause: %w", err)
	}
	return Process{PID: pid, StartTime: st}, nil
}

// Alive reports whether the process still runs (and is the same process).
func (p Process) Alive() bool {
	st, err := procStartTime(p.PID)
	return err == nil && st == p.StartTime
}

// Stop sends SIGTERM if the process is still the same one, then SIGKILL if it has not exited within a
// second. A process that is gone already is fine.
func (p Process) Stop() {
	if !p.Alive() {
		return
	}
	_ = syscall.Kill(p.PID, syscall.SIGTERM)
	for range 100 {
		if !p.Alive() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	if p.Alive() {
		_ = syscall.Kill(p.PID, syscall.SIGKILL)
	}
}

// ProcessesIn lists the processes whose network namespace is the one pinned at path, leaving out
// except; with exe set, only those running that binary. It reads every /proc/PID/ns/net: meant for
// repair and for teardowns that must find an unrecorded process, not for every operation.
func ProcessesIn(path, exe string, except ...int) []int {
	var pin unix.Stat_t
	if unix.Stat(path, &pin) != nil || !IsPinned(path) {
		return nil
	}
	if exe != "" {
		if e, err := filepath.EvalSymlinks(exe); err == nil {
			exe = e
		}
		if a, err := filepath.Abs(exe); err == nil {
			exe = a
		}
	}
	var pids []int
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		pid, err := strconv.Atoi(filepath.Base(p))
		if err != nil || slices.Contains(except, pid) {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(p+"/ns/net", &st) != nil || st.Ino != pin.Ino || st.Dev != pin.Dev {
			continue
		}
		if exe != "" {
			if got, err := os.Readlink(p + "/exe"); err != nil || got != exe {
				continue
			}
		}
		pids = append(pids, pid)
	}
	return pids
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
