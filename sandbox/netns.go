package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ErrNotNetNS reports that a path exists but is not a network namespace.
var ErrNotNetNS = errors.New("not a network namespace")

// NetNS is an open network namespace: a file descriptor of its nsfs inode and, for pinned namespaces, the
// path of the bind mount that keeps it alive.
type NetNS struct {
	path string
	f    *os.File

	hmu sync.Mutex
	h   *netlink.Handle // shared handle, made on first use by Handle
}

// Create makes a new network namespace, pins it with a bind mount at path, brings its loopback up and
// returns it open. The parent directory of path is created if needed. On any failure nothing is left
// behind. The calling thread never leaves its namespace.
func Create(path string) (ns *NetNS, err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create netns %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return nil, fmt.Errorf("create netns %s: %w", path, err)
	}
	f.Close()
	defer func() {
		if err != nil {
			_ = Remove(path)
		}
	}()
	if err := pinNew(path); err != nil {
		return nil, fmt.Errorf("create netns %s: %w", path, err)
	}
	ns, err = Open(path)
	if err != nil {
		return nil, err
	}
	if err := ns.loopbackUp(); err != nil {
		ns.Close()
		return nil, fmt.Errorf("create netns %s: bring up lo: %w", path, err)
	}
	return ns, nil
}

// pinNew unshares a new network namespace on a throwaway locked thread, bind-mounts it at path and
// switches the thread back. If switching back fails the thread is never unlocked, so the Go runtime
// terminates it instead of reusing it in the wrong namespace.
func pinNew(path string) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open(threadNSPath())
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		mountErr := unix.Mount(threadNSPath(), path, "none", unix.MS_BIND, "")
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: the runtime kills it when this goroutine exits.
			errc <- errors.Join(mountErr, fmt.Errorf("restore thread netns: %w", err))
			return
		}
		runtime.UnlockOSThread()
		if mountErr != nil {
			mountErr = fmt.Errorf("bind mount: %w", mountErr)
		}
		errc <- mountErr
	}()
	return <-errc
}

func threadNSPath() string {
	return fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
}

// Open opens an existing namespace file (a pin under a run dir, /proc/PID/ns/net, /var/run/netns/X).
func Open(path string) (*NetNS, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", path, err)
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, fmt.Errorf("open netns %s: %w", path, err)
	}
	if st.Type != unix.NSFS_MAGIC {
		f.Close()
		return nil, fmt.Errorf("open netns %s: %w", path, ErrNotNetNS)
	}
	return &NetNS{path: path, f: f}, nil
}

// Current opens the network namespace of the calling process (its main thread), which is what netmgr
// treats as "the host" unless told otherwise.
func Current() (*NetNS, error) {
	return Open(fmt.Sprintf("/proc/%d/ns/net", os.Getpid()))
}

// Path returns the path the namespace was opened from.
func (n *NetNS) Path() string { return n.path }

// Fd returns the namespace's file descriptor; it stays valid until Close.
func (n *NetNS) Fd() int { return int(n.f.Fd()) }

// Close releases the file descriptor and the shared handle. A pinned namespace stays alive; use
// Remove to destroy it.
func (n *NetNS) Close() error {
	if n == nil || n.f == nil {
		return nil
	}
	n.hmu.Lock()
	if n.h != nil {
		n.h.Close()
		n.h = nil
	}
	n.hmu.Unlock()
	return n.f.Close()
}

// Handle returns a netlink handle bound to the namespace, shared by every caller of this NetNS (netlink
// handles are safe for concurrent use) and closed by Close. It saves a thread switch and a socket per
// caller compared with NewHandle.
func (n *NetNS) Handle() (*netlink.Handle, error) {
	n.hmu.Lock()
	defer n.hmu.Unlock()
	if n.h != nil {
		return n.h, nil
	}
	h, err := n.NewHandle()
	if err != nil {
		return nil, err
	}
	n.h = h
	return h, nil
}

// Inode returns the namespace's inode number, which identifies it across paths.
func (n *NetNS) Inode() (uint64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(n.Fd(), &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// Do runs fn on a new OS thread that has joined the namespace, and returns fn's error. If the thread
// cannot be switched back it is never unlocked, so the runtime retires it. fn must not start goroutines
// that expect to be in the namespace, and must not call testing.T.Fatal.
func (n *NetNS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open(threadNSPath())
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Setns(n.Fd(), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", n.path, err)
			return
		}
		fnErr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(fnErr, fmt.Errorf("restore thread netns: %w", err))
			return // thread stays locked and dies with this goroutine
		}
		runtime.UnlockOSThread()
		errc <- fnErr
	}()
	return <-errc
}

// NewHandle returns a netlink handle whose sockets live in the namespace. The sockets are created inside
// Do, so no pooled thread is ever left in the namespace. The caller closes the handle.
func (n *NetNS) NewHandle() (*netlink.Handle, error) {
	var h *netlink.Handle
	err := n.Do(func() (err error) {
		h, err = netlink.NewHandle()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netlink handle in %s: %w", n.path, err)
	}
	return h, nil
}

func (n *NetNS) loopbackUp() error {
	h, err := n.Handle()
	if err != nil {
		return err
	}
	lo, err := h.LinkByName("lo")
	if err != nil {
		return err
	}
	return h.LinkSetUp(lo)
}

// Remove unmounts and deletes a pinned namespace. It is idempotent: a missing path, or a path that is no
// longer mounted, is not an error. The kernel destroys the namespace, and with it every interface inside,
// once no process or open descriptor holds it.
func Remove(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove netns %s: unmount: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove netns %s: %w", path, err)
	}
	return nil
}

// IsPinned reports whether path is a mounted namespace pin.
func IsPinned(path string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false
	}
	return st.Type == unix.NSFS_MAGIC
}

// StablePath returns a path that names the same namespace as ns for as long as it lives, for recording
// and for other processes to enter: ns's own path unless that is a /proc path of a process, else a bind
// mount of the namespace found in /proc/self/mountinfo (ip netns pins and the like), else /proc/1/ns/net
// when ns is init's namespace. Otherwise it returns ns's path unchanged.
func StablePath(ns *NetNS) string {
	if !strings.HasPrefix(ns.path, "/proc/") {
		return ns.path
	}
	ino, err := ns.Inode()
	if err != nil {
		return ns.path
	}
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		want := fmt.Sprintf("net:[%d]", ino)
		for _, line := range strings.Split(string(b), "\n") {
			// Fields: id parent major:minor root mountpoint ...; nsfs mounts have root "net:[INO]".
			f := strings.Fields(line)
			if len(f) > 4 && f[3] == want {
				return f[4]
			}
		}
	}
	if init, err := Open("/proc/1/ns/net"); err == nil {
		defer init.Close()
		if i, err := init.Inode(); err == nil && i == ino {
			return "/proc/1/ns/net"
		}
	}
	return ns.path
}
