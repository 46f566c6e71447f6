package store

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// filled makes a store file holding 300 keys (about 45 pages) and returns its path.
func filled(t *testing.T) string { return filledN(t, 30) }

// filledN makes a store file with n transactions of 10 keys each.
func filledN(t *testing.T, n int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s.db")
	b, err := OpenBolt(path, WithNoSync())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := 0; i < n; i++ {
		var ops []Op
		for j := 0; j < 10; j++ {
			ops = append(ops, Put(fmt.Sprintf("k/%03d", i*10+j), []byte(strings.Repeat("v", 200))))
		}
		if err := b.Txn(ctx, nil, ops); err != nil {
			t.Fatal(err)
		}
	}
	_ = b.Txn(ctx, nil, []Op{Del("k/000")})
	return path
}

func overwrite(t *testing.T, path string, off int64, n int, seed int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(buf)
	if _, err := f.WriteAt(buf, off); err != nil {
		t.Fatal(err)
	}
}

// calls runs every kind of call on the file, through a store opened before the damage and through one
// opened after, and returns their errors (nil for a call that worked).
func calls(t *testing.T, before *Bolt, path string) []error {
	t.Helper()
	ctx := context.Background()
	var errs []error
	after, err := OpenBolt(path)
	errs = append(errs, err)
	for _, b := range []*Bolt{before, after} {
		if b == nil {
			continue
		}
		_, err := b.Get(ctx, "k/150")
		errs = append(errs, err)
		_, _, err = b.List(ctx, "k/")
		errs = append(errs, err)
		errs = append(errs, b.Txn(ctx, nil, []Op{Put("k/new", []byte("x"))}))
		_, err = b.Get(ctx, "k/new")
		errs = append(errs, err)
	}
	return errs
}

// assertCorrupt wants at least one call to fail with ErrCorrupt naming the file, and every call to
// either work or fail that way.
func assertCorrupt(t *testing.T, path string, errs []error) {
	t.Helper()
	n := 0
	for i, err := range errs {
		switch {
		case err == nil:
		case errors.Is(err, ErrCorrupt):
			n++
			var ce *CorruptError
			if !errors.As(err, &ce) || ce.Path != path || !strings.Contains(err.Error(), path) ||
				!strings.Contains(err.Error(), "move it aside") || strings.Contains(err.Error(), "\n") {
				t.Errorf("call %d: %q: want one line naming %s and what to do", i, err, path)
			}
		default:
			t.Errorf("call %d: %v, want nil or ErrCorrupt", i, err)
		}
	}
	if n == 0 {
		t.Errorf("no call reported the damage: %v", errs)
	}
}

// TestCorruptFile damages a store file in the ways seen in the field (FAULTS.md §6): before the fix each
// panicked on a bbolt assertion, killed the test binary with SIGBUS, or (an empty file) silently gave
// an empty store.
func TestCorruptFile(t *testing.T) {
	tests := []struct {
		name   string
		damage func(t *testing.T, path string)
		small  bool // a file of a few pages, all inside bbolt's smallest memory map (32 KiB)
	}{
		{"small file truncated to 10000 bytes", func(t *testing.T, path string) { truncate(t, path, 10000) }, true},
		{"truncated to 10000 bytes", func(t *testing.T, path string) { truncate(t, path, 10000) }, false},
		{"truncated to 100 bytes", func(t *testing.T, path string) { truncate(t, path, 100) }, false},
		{"empty", func(t *testing.T, path string) { truncate(t, path, 0) }, false},
		{"both meta pages overwritten", func(t *testing.T, path string) { overwrite(t, path, 0, 8192, 1) }, false},
	}
	for seed := int64(1); seed <= 8; seed++ {
		tests = append(tests, struct {
			name   string
			damage func(t *testing.T, path string)
			small  bool
		}{fmt.Sprintf("pages 2-5 overwritten, seed %d", seed), func(t *testing.T, path string) {
			overwrite(t, path, 2*4096, 4*4096, seed)
		}, false})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filled(t)
			if tt.small {
				path = filledN(t, 1)
			}
			before, err := OpenBolt(path)
			if err != nil {
				t.Fatal(err)
			}
			tt.damage(t, path)
			fi, _ := os.Stat(path)
			assertCorrupt(t, path, calls(t, before, path))
			if fi2, err := os.Stat(path); err != nil || (fi.Size() == 0 && fi2.Size() != 0) {
				t.Errorf("the damaged file was replaced: %v", err)
			}
		})
	}
}

func truncate(t *testing.T, path string, n int64) {
	t.Helper()
	if err := os.Truncate(path, n); err != nil {
		t.Fatal(err)
	}
}

// TestMetaFallback overwrites meta page 0 only: bbolt falls back to meta page 1, a valid older state,
// and the file must still open and answer.
func TestMetaFallback(t *testing.T) {
	path := filled(t)
	overwrite(t, path, 0, 4096, 7)
	b, err := OpenBolt(path)
	if err != nil {
		t.Fatalf("open with meta 0 damaged: %v", err)
	}
	ctx := context.Background()
	if kv, err := b.Get(ctx, "k/150"); err != nil || len(kv.Value) != 200 {
		t.Fatalf("get: %+v %v", kv, err)
	}
	if err := b.Txn(ctx, nil, []Op{Put("k/new", []byte("x"))}); err != nil {
		t.Fatalf("write after fallback: %v", err)
	}
	if kv, err := b.Get(ctx, "k/new"); err != nil || string(kv.Value) != "x" {
		t.Fatalf("get after write: %+v %v", kv, err)
	}
}

// TestMissingFileIsNew: only a file that does not exist is a new store, also when it disappears
// between calls.
func TestMissingFileIsNew(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	b, err := OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := b.Txn(ctx, nil, []Op{Put("a", nil)}); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Get(ctx, "a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get after removal: %v, want ErrNotFound", err)
	}
	if err := b.Txn(ctx, []Cmp{Absent("a")}, []Op{Put("a", []byte("2"))}); err != nil {
		t.Fatal(err)
	}
	if m, _ := filepath.Glob(path + ".new*"); len(m) != 0 {
		t.Errorf("temporary files left: %v", m)
	}
}
