package netmgr

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netmgr/netmgr/drivers"
	// Only bridge, the default driver, registers itself for every Manager: it links nothing the
	// Manager does not link anyway (netlink, nftables). The other drivers (macvlan, cni, which links
	// libcni and through it OpenTelemetry and net/http) are imported by the program that wants them,
	// or all at once by drivers/all. Host and link are sandbox modes, not drivers.
	_ "github.com/netmgr/netmgr/drivers/bridge"
	"github.com/netmgr/netmgr/netmgr/firewall"
	"github.com/netmgr/netmgr/netmgr/ipam"
	"github.com/netmgr/netmgr/netmgr/store"
	"github.com/netmgr/netmgr/sandbox"
)

// Defaults for the state and run directories.
const (
	DefaultStateDir = "/var/lib/netmgr"
	DefaultRunDir   = "/run/netmgr"
)

// Manager is the entry point: networks, sandboxes and their attachments.
type Manager struct {
	stateDir string
	runDir   string
	hostPath string
	st       store.Store // networks: durable
	rt       store.Store // sandboxes, addresses, joins, sandbox intents: runtime state of this boot
	ownStore bool
	// node names this host; shared is set when the store was given by the caller (WithStore,
	// WithStores), which may be one store of several hosts: runtime records are then kept under
	// nodes/NODE/ and networks remember the node they belong to.
	node        string
	shared      bool
	log         *slog.Logger
	pauseAt     string
	testStep    func(step string) // set by tests only (export_test.go)
	pauseBin    string
	lockTimeout time.Duration

	host *sandbox.NetNS
	hh   *netlink.Handle
	fw   *firewall.Firewall

	drvMu     sync.Mutex
	drivers   map[string]drivers.Driver
	factories map[string]drivers.Factory // WithDriver: looked up before the global registry

	ipam *ipam.Allocator // address choice: cursors and the keys chosen but not yet committed
}

// Option configures a Manager.
type Option func(*Manager)

// WithStateDir sets the directory of persistent state (the bbolt file). Default /var/lib/netmgr. A
// relative path is taken relative to the working directory at New.
func WithStateDir(dir string) Option { return func(m *Manager) { m.stateDir = dir } }

// WithRunDir sets the directory of runtime state: namespace pins and lock files. Default /run/netmgr. A
// relative path is taken relative to the working directory at New (records hold absolute paths).
func WithRunDir(dir string) Option { return func(m *Manager) { m.runDir = dir } }

// WithLockTimeout bounds how long an operation waits for another operation on the same object (a
// sandbox, a network) before it fails with ErrBusy naming the holder; the caller's context can end
// the wait sooner. Default DefaultLockTimeout.
func WithLockTimeout(d time.Duration) Option { return func(m *Manager) { m.lockTimeout = d } }

// WithStore sets one backend for all state (a cluster's etcd, say); the Manager does not close a store
// it was given. By default networks live in a bbolt file in the state dir, written with fsync, and the
// runtime state (sandboxes, addresses) in a bbolt file in the run dir, written without: a process crash
// loses nothing either way, and after a machine crash the runtime state describes namespaces that no
// longer exist, so it is discarded when the boot ID changes.
func WithStore(s store.Store) Option { return func(m *Manager) { m.st, m.rt = s, s } }

// WithStores sets the network store and the runtime store separately (see WithStore); the Manager
// closes neither. OpenRuntimeStore opens a runtime store the way New does by default.
func WithStores(networks, runtime store.Store) Option {
	return func(m *Manager) { m.st, m.rt = networks, runtime }
}

// WithNode names this host in a store that several hosts share (default: the host name). Runtime
// records (sandboxes, allocations, published ports, intents) of a Manager given its store by WithStore
// or WithStores live under nodes/NODE/, and Recover judges and repairs only its own node's records and
// kernel objects; a local network (bridge, macvlan) belongs to the node that created it, and other
// nodes list it but neither plumb nor attach to nor delete it.
func WithNode(name string) Option { return func(m *Manager) { m.node = name } }

// WithLogger sets the structured logger. Default: discard.
func WithLogger(l *slog.Logger) Option { return func(m *Manager) { m.log = l } }

// WithHostNetNS sets the namespace that holds bridges, host ends and firewall rules; default the
// calling process's own. Tests point it at a namespace they created.
func WithHostNetNS(path string) Option { return func(m *Manager) { m.hostPath = path } }

// WithPauseBinary sets the pause binary started for sandboxes that ask for a pause process.
func WithPauseBinary(path string) Option { return func(m *Manager) { m.pauseBin = path } }

// WithDriver gives this Manager a driver under name, beside the global registry (drivers.Register)
// and ahead of it: a name given here shadows a registered driver of the same name for this Manager
// only. The factory is called once, on the driver's first use, with the Manager's environment. It
// lets an embedder or a test run two Managers with different drivers in one process, or use a driver
// without registering it globally. A nil factory or an empty name makes New fail with ErrInvalid.
func WithDriver(name string, f drivers.Factory) Option {
	return func(m *Manager) {
		if m.factories == nil {
			m.factories = map[string]drivers.Factory{}
		}
		m.factories[name] = f
	}
}

// New opens (or creates) the state and returns a Manager. It repairs operations that a crashed
// process left half done (see Recover), without a full scan of the kernel.
func New(ctx context.Context, opts ...Option) (*Manager, error) {
	m := &Manager{
		stateDir: DefaultStateDir,
		runDir:   DefaultRunDir,
		drivers:  map[string]drivers.Driver{},
		ipam:     ipam.NewAllocator(),
		pauseAt:  envPauseAt,
	}
	for _, o := range opts {
		o(m)
	}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	for name, f := range m.factories {
		if name == "" || f == nil {
			return nil, fmt.Errorf("%w: WithDriver(%q) needs a name and a factory", ErrInvalid, name)
		}
	}
	if m.node == "" {
		h, err := os.Hostname()
		if err != nil || checkName("node", h) != nil {
			h = "localhost"
		}
		m.node = h
	}
	if err := checkName("node", m.node); err != nil {
		return nil, err
	}
	for _, d := range []*string{&m.stateDir, &m.runDir} {
		if *d == "" {
			return nil, fmt.Errorf("%w: empty state or run directory", ErrInvalid)
		}
		abs, err := filepath.Abs(*d)
		if err != nil {
			return nil, fmt.Errorf("%w: directory %q: %v", ErrInvalid, *d, err)
		}
		*d = abs
	}
	if err := os.MkdirAll(m.runDir, 0o755); err != nil {
		return nil, fmt.Errorf("create run dir: %w", err)
	}
	if m.st == nil {
		if err := os.MkdirAll(m.stateDir, 0o700); err != nil {
			return nil, fmt.Errorf("create state dir: %w", err)
		}
		st, err := store.OpenBolt(filepath.Join(m.stateDir, "netmgr.db"), store.WithLogger(m.log))
		if err != nil {
			return nil, err
		}
		rt, err := OpenRuntimeStore(ctx, filepath.Join(m.runDir, "runtime.db"), store.WithLogger(m.log))
		if err != nil {
			return nil, err
		}
		m.st, m.rt, m.ownStore = st, rt, true
	} else {
		// A store given by the caller may be shared by several hosts.
		m.shared = true
		m.rt = store.WithPrefix(m.rt, keyNodes+m.node+"/")
	}
	var err error
	if m.hostPath == "" {
		m.host, err = sandbox.Current()
	} else {
		m.host, err = sandbox.Open(m.hostPath)
	}
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("open host namespace: %w", err)
	}
	if m.hh, err = m.host.NewHandle(); err != nil {
		m.Close()
		return nil, err
	}
	if m.fw, err = firewall.New(m.host.Fd(), m.log); err != nil {
		m.Close()
		return nil, err
	}
	// A state file that cannot be read (corrupt, or its lock not had before ctx ended) fails New with
	// the store's own error, which names the file, instead of a warning and a second failure later.
	if err := m.recoverIntents(ctx); errors.Is(err, errUnreadable) {
		m.Close()
		return nil, errors.Unwrap(err)
	} else if err != nil {
		m.log.Warn("repair of interrupted operations incomplete", "error", err)
	}
	return m, nil
}

// Close releases the Manager's handles. Networks and sandboxes stay.
func (m *Manager) Close() error {
	var errs []error
	if m.fw != nil {
		errs = append(errs, m.fw.Close())
	}
	if m.hh != nil {
		m.hh.Close()
	}
	if m.host != nil {
		errs = append(errs, m.host.Close())
	}
	if m.ownStore && m.st != nil {
		errs = append(errs, m.st.Close(), m.rt.Close())
	}
	return errors.Join(errs...)
}

// HostNetNS returns the path of the namespace the Manager treats as the host.
func (m *Manager) HostNetNS() string { return m.host.Path() }

// Node returns the name of this host (see WithNode).
func (m *Manager) Node() string { return m.node }

// NetworkStore is the store the Manager keeps networks in: a cluster's etcd (WithStores), or on one
// host its own bbolt file. The node agent's controllers keep their objects (services) beside them.
func (m *Manager) NetworkStore() store.Store { return m.st }

// RunDir returns the run directory.
func (m *Manager) RunDir() string { return m.runDir }

// StateDir is the directory of the Manager's persistent state.
func (m *Manager) StateDir() string { return m.stateDir }

// driver returns the Manager's instance of the named driver, building it on first use.
func (m *Manager) driver(name string) (drivers.Driver, error) {
	m.drvMu.Lock()
	defer m.drvMu.Unlock()
	if d, ok := m.drivers[name]; ok {
		return d, nil
	}
	if d := legacyModeDriver(name); d != nil {
		return d, nil // a network an older netmgr recorded with driver host or link
	}
	f, ok := m.factories[name]
	if !ok {
		f, ok = drivers.Lookup(name)
	}
	if !ok {
		return nil, fmt.Errorf("%w: unknown driver %q (available: %v)", ErrInvalid, name, m.driverNames())
	}
	d, err := f(drivers.Env{Host: m.host, HostHandle: m.hh, Logger: m.log})
	if err != nil {
		return nil, err
	}
	m.drivers[name] = d
	return d, nil
}

// driverNames returns the names of the drivers this Manager can use, sorted.
func (m *Manager) driverNames() []string {
	names := drivers.Names()
	for n := range m.factories {
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	return names
}

// OpenRuntimeStore opens the runtime state file, unsynced. If it was written during another boot,
// whatever it describes died with that boot (and an unsynced file may be torn by the crash that ended
// it), so it is replaced by an empty one; Recover then removes the stale pins the run dir may still
// hold. The boot it belongs to is kept in a small file beside it (PATH.boot), so that the decision
// needs no read of a file that may be torn, and a file of this boot is never discarded for an error.
func OpenRuntimeStore(ctx context.Context, path string, opts ...store.BoltOption) (*store.Bolt, error) {
	boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return nil, fmt.Errorf("read boot id: %w", err)
	}
	if b, err := os.ReadFile(path + ".boot"); err != nil || string(b) != string(boot) {
		// One process at a time decides, so that two first starts after a reboot cannot both
		// replace the file, the second one after the first has started using it.
		lf, err := os.OpenFile(path+".init", os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("open runtime state: %w", err)
		}
		defer lf.Close()
		if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX); err != nil {
			return nil, fmt.Errorf("lock runtime state: %w", err)
		}
		if b, err := os.ReadFile(path + ".boot"); err != nil || string(b) != string(boot) {
			if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("discard runtime state of another boot: %w", err)
			}
			// A run dir that outlived the boot (not on tmpfs) keeps the pin files of namespaces
			// that died with it; their names would stay taken until a gc. Live pins are mounts.
			pins, _ := filepath.Glob(filepath.Join(filepath.Dir(path), "netns", "*"))
			for _, p := range pins {
				if !sandbox.IsPinned(p) {
					_ = os.Remove(p)
				}
			}
			tmp := path + ".boot.tmp"
			if err := os.WriteFile(tmp, boot, 0o600); err != nil {
				return nil, fmt.Errorf("record boot id: %w", err)
			}
			if err := os.Rename(tmp, path+".boot"); err != nil {
				return nil, fmt.Errorf("record boot id: %w", err)
			}
		}
	}
	rt, err := store.OpenBolt(path, append([]store.BoltOption{store.WithNoSync()}, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("open runtime state: %w", err)
	}
	return rt, nil
}

func newID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b[:])
}

func (m *Manager) netnsPath(name string) string {
	return filepath.Join(m.runDir, "netns", name)
}
