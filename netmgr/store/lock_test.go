package store

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/netmgr/netmgr/internal/testutil"
)

// holdLock takes the store file's lock from another open file, as another process would, until the
// returned function is called.
func holdLock(t *testing.T, path string) func() {
	t.Helper()
	f, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	released := false
	release := func() {
		if !released {
			released = true
			f.Close()
		}
	}
	t.Cleanup(release)
	return release
}

// await waits for a call started in a goroutine; a call still blocked after a generous bound is a
// failure (before the fix, the wait ignored the context and lasted as long as the holder).
func await(t *testing.T, done <-chan error, release func()) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(20 * time.Second):
		release()
		t.Fatalf("call still waiting 20s later, ignoring its context; after release: %v", <-done)
		return nil
	}
}

// TestLockWaitHonoursContext: a Get whose deadline passes while another process holds the file's
// lock returns an error that wraps context.DeadlineExceeded and names the file and the holder.
func TestLockWaitHonoursContext(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	b, err := OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	release := holdLock(t, path)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	done := make(chan error, 1)
	go func() {
		_, err := b.Get(ctx, "k")
		done <- err
	}()
	err = await(t, done, release)
	late := time.Since(start) - 300*time.Millisecond
	t.Logf("returned %v after the deadline: %v", late.Round(time.Millisecond), err)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Get: %v, want an error wrapping context.DeadlineExceeded", err)
	}
	want := "waiting for lock of state file " + path + " (held by this process): context deadline exceeded"
	if !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not contain %q", err, want)
	}

	// The left waiter gives its turn back once it gets the lock: later calls work.
	release()
	if err := b.Txn(context.Background(), nil, []Op{Put("k", []byte("v"))}); err != nil {
		t.Fatal(err)
	}
	if kv, err := b.Get(context.Background(), "k"); err != nil || string(kv.Value) != "v" {
		t.Fatalf("get after release: %+v %v", kv, err)
	}
}

// TestLockWaitSlowIsLogged: a wait of more than a second is logged, naming the file.
func TestLockWaitSlowIsLogged(t *testing.T) {
	if testing.Short() {
		t.Skip("waits over a second")
	}
	path := filepath.Join(t.TempDir(), "s.db")
	var logb testutil.SyncBuffer
	b, err := OpenBolt(path, WithLogger(slog.New(slog.NewTextHandler(&logb, nil))))
	if err != nil {
		t.Fatal(err)
	}
	release := holdLock(t, path)
	done := make(chan error, 1)
	go func() {
		_, err := b.Get(context.Background(), "k")
		done <- err
	}()
	for deadline := time.Now().Add(20 * time.Second); !strings.Contains(logb.String(), "waiting for lock"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no log line after 20s of waiting")
		}
	}
	release()
	if err := await(t, done, release); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after release: %v, want ErrNotFound", err)
	}
	if l := logb.String(); !strings.Contains(l, "file="+path) || !strings.Contains(l, "level=WARN") {
		t.Errorf("log %q does not name the file", l)
	}
}

// TestLockWaitBehindOtherCall: a call queued in this process behind another that waits for the lock
// (the process-wide turn, formerly a mutex held across the flock) also leaves at its deadline, and the
// first call completes once the lock is free.
func TestLockWaitBehindOtherCall(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	b, err := OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	release := holdLock(t, path)
	first := make(chan error, 1)
	go func() { first <- b.Txn(context.Background(), nil, []Op{Put("a", nil)}) }()
	time.Sleep(50 * time.Millisecond) // let the first call take the turn; either order passes
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	second := make(chan error, 1)
	go func() {
		_, _, err := b.List(ctx, "")
		second <- err
	}()
	if err := await(t, second, release); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), path) {
		t.Fatalf("queued List: %v, want DeadlineExceeded naming %s", err, path)
	}
	release()
	if err := await(t, first, release); err != nil {
		t.Fatalf("first call after release: %v", err)
	}
}
