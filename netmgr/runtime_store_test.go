package netmgr_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/store"
)

// TestRuntimeStoreBelongsToOneBoot: runtime state written during this boot survives reopening; state
// of another boot is discarded on open.
func TestRuntimeStoreBelongsToOneBoot(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "runtime.db")
	rt, err := netmgr.OpenRuntimeStore(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.Txn(ctx, nil, []store.Op{store.Put("sandboxes/a", []byte("{}"))}); err != nil {
		t.Fatal(err)
	}
	rt.Close()
	if rt, err = netmgr.OpenRuntimeStore(ctx, path); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Get(ctx, "sandboxes/a"); err != nil {
		t.Fatalf("same boot: %v", err)
	}
	rt.Close()
	if err := os.WriteFile(path+".boot", []byte("another boot\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if rt, err = netmgr.OpenRuntimeStore(ctx, path); err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	if _, err := rt.Get(ctx, "sandboxes/a"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("another boot's state kept: %v", err)
	}
}
