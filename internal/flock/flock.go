// Package flock is netmgr's per-object file locks: an flock on RUN_DIR/locks/NAME.lock held while an
// operation on the object is in flight. Waits honour the caller's context, are bounded, and name the
// holder; a lock file is only ever removed by the holder of its exclusive lock, and a waiter that
// gets a lock on a file removed meanwhile locks the current file instead.
package flock

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/netmgr/netmgr/drivers"
)

// DefaultTimeout bounds a wait when the Dir sets none.
const DefaultTimeout = 60 * time.Second

var (
	// ErrBusy is returned when another holder has the lock and the caller does not wait, or the
	// wait timed out.
	ErrBusy = errors.New("busy")
	// ErrNoFile is returned with NoCreate when the lock file does not exist.
	ErrNoFile = errors.New("no lock file")
)

// How says how to lock.
type How int

const (
	Exclusive How = 1 << iota
	Shared
	NoWait   // fail with ErrBusy instead of waiting
	NoCreate // fail with ErrNoFile instead of creating the file
)

// Dir is a directory of lock files.
type Dir struct {
	Path    string
	Timeout time.Duration // default DefaultTimeout
	Log     *slog.Logger  // warned after a second of waiting; default: discard
}

// Lock is a held lock.
type Lock struct {
	f    *os.File
	path string
}

// ValidName refuses names that could leave the directory.
func ValidName(name string) bool {
	return name != "" && !strings.ContainsAny(name, "/\x00") && name != "." && name != ".." && !strings.HasPrefix(name, ".")
}

// File is the path of name's lock file.
func (d Dir) File(name string) string { return filepath.Join(d.Path, name+".lock") }

// Lock takes the lock for name.
func (d Dir) Lock(ctx context.Context, name string, how How) (*Lock, error) {
	if !ValidName(name) {
		return nil, fmt.Errorf("%w: invalid object name %q", drivers.ErrInvalid, name)
	}
	path := d.File(name)
	flags := os.O_RDWR | os.O_CREATE
	if how&NoCreate != 0 {
		flags = os.O_RDWR
	}
	op := unix.LOCK_EX
	if how&Shared != 0 {
		op = unix.LOCK_SH
	}
	op |= unix.LOCK_NB
	wait := how&NoWait == 0
	timeout := d.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	log := d.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var start time.Time
	warned := false
	for {
		f, err := os.OpenFile(path, flags, 0o600)
		if errors.Is(err, os.ErrNotExist) && flags&os.O_CREATE == 0 {
			return nil, ErrNoFile
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
			err = unix.Flock(int(f.Fd()), op)
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
				log.Warn("waiting for another operation on the same object", "lock", name, "holder", Holder(path))
			}
			if waited > timeout {
				f.Close()
				return nil, fmt.Errorf("%w: gave up after %s waiting for lock %s (held by %s)", ErrBusy, timeout.Round(time.Second), name, Holder(path))
			}
			select {
			case <-ctx.Done():
				holder := Holder(path)
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
			return &Lock{f: f, path: path}, nil
		}
		f.Close() // the file was replaced or removed while we waited; lock the current one
		if flags&os.O_CREATE == 0 {
			return nil, ErrNoFile
		}
	}
}

// Holder names the process holding a lock on the file at path, as "pid N (COMM)", from /proc/locks;
// "another process" when it cannot tell.
func Holder(path string) string {
	var st unix.Stat_t
	if unix.Stat(path, &st) != nil {
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

// Unlock releases the lock; remove also deletes the lock file (done when the object is gone). A nil
// Lock is fine.
func (l *Lock) Unlock(remove bool) {
	if l == nil {
		return
	}
	if remove {
		_ = os.Remove(l.path)
	}
	l.f.Close()
}
