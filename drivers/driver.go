package drivers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"sync"

	"github.com/vishvananda/netlink"

	"github.com/netmgr/netmgr/netmgr/firewall"
	"github.com/netmgr/netmgr/sandbox"
)

// Errors drivers return, wrapped with detail; netmgr maps them to its own sentinels of the same name.
var (
	ErrInvalid  = errors.New("invalid argument")
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
	ErrFull     = errors.New("no room")
)

// Scope says where a network's configuration and addresses are valid.
type Scope string

const (
	// ScopeLocal networks exist on one host; their subnets are local to it.
	ScopeLocal Scope = "local"
	// ScopeGlobal networks span hosts; each host leases its own subnet from the cluster store.
	ScopeGlobal Scope = "global"
)

// Env is what a driver gets from its Manager.
type Env struct {
	// Host is the namespace that holds host-side plumbing (bridges, host ends of veths, firewall).
	Host *sandbox.NetNS
	// HostHandle is a netlink handle bound to Host, shared by all drivers; safe for concurrent use.
	HostHandle *netlink.Handle
	// Logger gets the driver's structured logs.
	Logger *slog.Logger
}

// Network is a network as drivers see it. Options are the driver's own; PrepareNetwork may add
// defaults to them, and netmgr stores what it returns.
type Network struct {
	ID       string
	Name     string
	Driver   string
	Subnets  []netip.Prefix
	Gateways []netip.Addr // one per subnet, same order
	Options  map[string]string
	Internal bool
	MTU      int
}

// Endpoint is one sandbox on one network.
type Endpoint struct {
	ID       string // unique and stable across restarts
	Sandbox  string // sandbox name
	IfName   string // interface name inside the sandbox (eth0, eth1, ...)
	HostName string // host-side interface name, if any; chosen by PrepareEndpoint
	Addrs    []netip.Prefix
	// Gateways are the default routes to set, at most one per family; Attach leaves out a family whose
	// default route the namespace has already (another attachment's), so after Attach they are the
	// routes it set.
	Gateways []netip.Addr
	MAC      string // requested MAC if set before Attach; the actual one after
	MTU      int
	// JoinPath is the namespace a NamespaceProvider endpoint joins (the target of a link sandbox).
	JoinPath string
}

// DetachOptions tell Detach what else is happening.
type DetachOptions struct {
	// NamespaceGoing is set when the sandbox namespace is about to be destroyed: interfaces inside it
	// vanish with it, so the driver need only undo what lives outside.
	NamespaceGoing bool
}

// Driver is the contract every network driver implements.
type Driver interface {
	// PrepareNetwork validates n and fills in defaults (into n.Options) before anything is created.
	// existing holds the other networks of this driver. It must not touch the kernel.
	PrepareNetwork(n *Network, existing []*Network) error
	// CreateNetwork creates the network's plumbing. It is idempotent (adopting what already exists)
	// and rolls back what it created when it fails.
	CreateNetwork(ctx context.Context, n *Network) error
	// DeleteNetwork removes the network's plumbing; it is idempotent.
	DeleteNetwork(ctx context.Context, n *Network) error
	// PrepareEndpoint validates ep and chooses its names, without touching the kernel.
	PrepareEndpoint(n *Network, ep *Endpoint) error
	// Attach plumbs ep into the sandbox namespace sb and records the MAC in ep. On failure it undoes
	// its own work.
	Attach(ctx context.Context, n *Network, ep *Endpoint, sb *sandbox.NetNS) error
	// Detach removes ep. It is idempotent, and works when sb is nil because the namespace is gone.
	Detach(ctx context.Context, n *Network, ep *Endpoint, sb *sandbox.NetNS, opts DetachOptions) error
}

// NamespaceProvider is implemented by drivers whose sandboxes use an existing namespace instead of a
// new one (host, link). Namespace returns its path; Attach and Detach are then no-ops.
type NamespaceProvider interface {
	Namespace(ctx context.Context, n *Network, ep *Endpoint) (string, error)
}

// AddressProvider is implemented by drivers whose endpoints get their addresses from elsewhere than
// netmgr's IPAM, such as the cni driver, where the delegated plugin's own IPAM decides. For a network
// where ProvidesAddresses is true, netmgr keeps no subnets (CreateNetwork refuses them), so it allocates
// nothing and passes Attach no Addrs or Gateways; Attach reports in ep.Addrs, ep.Gateways and
// ep.HostName what it got, and netmgr records that as it records its own allocations (so that deleting
// a network in use, listing a network's sandboxes and Recover see those addresses too).
type AddressProvider interface {
	ProvidesAddresses(n *Network) bool
}

// Peer is another host of a cluster-wide network.
type Peer struct {
	Node    string
	Address netip.Addr     // underlay address (VTEP)
	Subnets []netip.Prefix // pod subnets leased to that host
}

// PeerUpdater is implemented by cluster-scope drivers that learn other hosts from the store.
type PeerUpdater interface {
	UpdatePeers(ctx context.Context, n *Network, peers []Peer) error
}

// Firewaller is implemented by drivers whose networks need nftables rules (masquerade, isolation).
// netmgr collects these from every network and applies them as one ruleset.
type Firewaller interface {
	Firewall(n *Network) (firewall.Network, bool)
}

// Scoped is implemented by drivers whose networks are not ScopeLocal.
type Scoped interface {
	Scope() Scope
}

// ScopeOf returns the scope of d.
func ScopeOf(d Driver) Scope {
	if s, ok := d.(Scoped); ok {
		return s.Scope()
	}
	return ScopeLocal
}

// Factory builds a driver for one Manager.
type Factory func(env Env) (Driver, error)

var (
	regMu    sync.RWMutex
	registry = map[string]Factory{}
)

// Register makes a driver available under name. It panics on a duplicate name, like database/sql.
func Register(name string, f Factory) {
	regMu.Lock()
	defer regMu.Unlock()
	if _, dup := registry[name]; dup {
		panic(fmt.Sprintf("drivers: Register called twice for %q", name))
	}
	registry[name] = f
}

// Lookup returns the factory registered under name.
func Lookup(name string) (Factory, bool) {
	regMu.RLock()
	defer regMu.RUnlock()
	f, ok := registry[name]
	return f, ok
}

// Names returns the registered driver names, sorted.
func Names() []string {
	regMu.RLock()
	defer regMu.RUnlock()
	out := make([]string, 0, len(registry))
	for n := range registry {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
