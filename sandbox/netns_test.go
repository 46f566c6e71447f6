package sandbox_test

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/sandbox"
)

func requireRoot(t *testing.T) {
	t.Helper()
	testutil.RequireRoot(t)
}

func selfInode(t *testing.T) uint64 {
	t.Helper()
	ns, err := sandbox.Open("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	ino, _ := ns.Inode()
	return ino
}

func TestCreateDoRemove(t *testing.T) {
	requireRoot(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	before := selfInode(t)
	p := filepath.Join(t.TempDir(), "ns1")
	ns, err := sandbox.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sandbox.Remove(p) })
	if after := selfInode(t); after != before {
		t.Fatal("Create switched the calling thread's namespace")
	}
	if !sandbox.IsPinned(p) {
		t.Fatal("not pinned")
	}
	ino, _ := ns.Inode()
	if ino == before {
		t.Fatal("new namespace is the caller's")
	}
	var inside uint64
	if err := ns.Do(func() error {
		f, err := sandbox.Open("/proc/thread-self/ns/net")
		if err != nil {
			return err
		}
		defer f.Close()
		inside, err = f.Inode()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if inside != ino {
		t.Fatalf("Do ran in %d, want %d", inside, ino)
	}
	if want := errors.New("boom"); !errors.Is(ns.Do(func() error { return want }), want) {
		t.Fatal("Do lost fn's error")
	}
	h, err := ns.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	lo, err := h.LinkByName("lo")
	h.Close()
	if err != nil || lo.Attrs().OperState == netlink.OperDown || lo.Attrs().Flags&1 == 0 {
		t.Fatalf("lo not up: %v %+v", err, lo)
	}
	ns.Close()
	// Still alive while pinned.
	if _, err := sandbox.Open(p); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := sandbox.Remove(p); err != nil {
			t.Fatalf("remove #%d: %v", i+1, err)
		}
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Fatal("pin file left")
	}
	// Already unmounted but the file exists: still fine.
	_ = os.WriteFile(p, nil, 0o444)
	if err := sandbox.Remove(p); err != nil {
		t.Fatal(err)
	}
}

func TestCreateExistingPathFailsCleanly(t *testing.T) {
	requireRoot(t)
	p := filepath.Join(t.TempDir(), "ns")
	ns, err := sandbox.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer sandbox.Remove(p)
	defer ns.Close()
	if _, err := sandbox.Create(p); err == nil {
		t.Fatal("second Create at one path succeeded")
	}
	if !sandbox.IsPinned(p) {
		t.Fatal("failed Create removed the existing pin")
	}
}

func TestOpenRejectsNonNamespace(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	_ = os.WriteFile(p, nil, 0o644)
	if _, err := sandbox.Open(p); !errors.Is(err, sandbox.ErrNotNetNS) {
		t.Fatalf("got %v", err)
	}
}
