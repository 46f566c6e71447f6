package flock_test

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/netmgr/netmgr/drivers"
	"github.com/netmgr/netmgr/internal/flock"
)

func TestLockExclusiveSharedAndBounds(t *testing.T) {
	d := flock.Dir{Path: t.TempDir(), Timeout: 200 * time.Millisecond}
	ctx := context.Background()
	if _, err := d.Lock(ctx, "../x", flock.Exclusive); !errors.Is(err, drivers.ErrInvalid) {
		t.Fatalf("escaping name: %v", err)
	}
	if _, err := d.Lock(ctx, "a", flock.Shared|flock.NoCreate); !errors.Is(err, flock.ErrNoFile) {
		t.Fatalf("NoCreate on a missing file: %v", err)
	}
	a, err := d.Lock(ctx, "a", flock.Exclusive)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Lock(ctx, "a", flock.Shared|flock.NoWait); !errors.Is(err, flock.ErrBusy) {
		t.Fatalf("shared under an exclusive, no wait: %v", err)
	}
	start := time.Now()
	if _, err := d.Lock(ctx, "a", flock.Exclusive); !errors.Is(err, flock.ErrBusy) || time.Since(start) > 2*time.Second {
		t.Fatalf("bounded wait: %v after %v", err, time.Since(start))
	}
	cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := d.Lock(cctx, "a", flock.Exclusive); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait ended by ctx: %v", err)
	}
	a.Unlock(true)
	if _, err := os.Stat(d.File("a")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Unlock(true) kept the file: %v", err)
	}
	s1, err := d.Lock(ctx, "b", flock.Shared)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := d.Lock(ctx, "b", flock.Shared|flock.NoWait)
	if err != nil {
		t.Fatalf("two shared locks: %v", err)
	}
	s1.Unlock(false)
	s2.Unlock(false)
}

// A waiter that gets the lock of a file the holder removed meanwhile locks the current file, so two
// holders never think they hold one object.
func TestLockFollowsReplacedFile(t *testing.T) {
	d := flock.Dir{Path: t.TempDir()}
	ctx := context.Background()
	a, err := d.Lock(ctx, "x", flock.Exclusive)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *flock.Lock)
	go func() {
		l, err := d.Lock(ctx, "x", flock.Exclusive)
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	time.Sleep(50 * time.Millisecond)
	a.Unlock(true) // removes the file the waiter opened
	b := <-got
	if _, err := d.Lock(ctx, "x", flock.Exclusive|flock.NoWait); !errors.Is(err, flock.ErrBusy) {
		t.Fatalf("the waiter does not hold the current file: %v", err)
	}
	b.Unlock(true)
}
