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

	"github.com/netmgr/netmgr/sandbox"
)

// Errors drivers return, wrapped with detail; netmgr maps them to its own sentinels of the same name.
var (
	ErrInvalid  = errors.New("invalid argument")
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
	ErrFull     = errors.New("no room")
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

// DriverLogger checks that env has a host namespace, as every driver needs, and returns the logger
// a driver named name logs through (a discarding one when env has none).
func (e Env) DriverLogger(name string) (*slog.Logger, error) {
	if e.Host == nil || e.HostHandle == nil {
		return nil, fmt.Errorf("%s driver: %w: no host namespace", name, ErrInvalid)
	}
	log := e.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return log.With("driver", name), nil
}

// Network is a network as drivers see it. Options are the driver's own; PrepareNetwork may add
// defaults to them, and netmgr stores what it returns.
type Network struct {
	ID       string
	Name     string
	Driver   string
	Subnets  []netip.Prefix
	Gateways []netip.Addr // one per subnet, same order
	// Cluster holds, on a node that joined a network that spans nodes (drivers.Joiner), the
	// network's cluster CIDRs; Subnets and Gateways are then the node's own. Empty otherwise.
	Cluster  []netip.Prefix
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
	// Gateways are the network gateways netmgr offers the endpoint as default routes, at most one per
	// family, leaving out families another attachment of the sandbox routes already. They are an
	// offer: the driver decides the routes (see Routes). After Attach they are the gateways of the
	// default routes it set, for the record and the CNI result.
	Gateways []netip.Addr
	// Routes are the routes of the sandbox side, the driver's decision: PrepareEndpoint fills them
	// (a bridge endpoint: a default route via each offered gateway; a routed one might use an on-link
	// link-local next hop instead), and Attach sets them, leaving out a default route of a family the
	// namespace routes already (another attachment's), so that after Attach they are the routes it
	// set. netmgr records them and gives them back unchanged to RestoreEndpoint.
	Routes []Route
	MAC    string // requested MAC if set before Attach; the actual one after
	MTU    int
}

// Route is one route inside a sandbox, through the endpoint's interface.
type Route struct {
	Dst netip.Prefix `json:"dst"`         // 0.0.0.0/0 or ::/0 for a default route
	Gw  netip.Addr   `json:"gw,omitzero"` // next hop; none for a directly connected destination
	// OnLink says the next hop is reachable on the interface though no address of the interface
	// covers it (a routed driver's 169.254.1.1): the kernel's RTNH_F_ONLINK.
	OnLink bool `json:"onlink,omitempty"`
}

// IsDefault reports whether r is a default route.
func (r Route) IsDefault() bool { return r.Dst.IsValid() && r.Dst.Bits() == 0 }

// DefaultRoutes turns gateways into default routes, one per gateway: what a driver whose sandboxes
// reach the world through the network's gateways (bridge, macvlan) puts into Endpoint.Routes.
func DefaultRoutes(gws []netip.Addr) []Route {
	var out []Route
	for _, gw := range gws {
		dst := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		if gw.Is6() {
			dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		}
		out = append(out, Route{Dst: dst, Gw: gw})
	}
	return out
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

// AddressProvider is implemented by drivers whose endpoints get their addresses from elsewhere than
// netmgr's IPAM, such as the cni driver, where the delegated plugin's own IPAM decides. For a network
// where ProvidesAddresses is true, netmgr keeps no subnets (CreateNetwork refuses them), so it allocates
// nothing and passes Attach no Addrs or Gateways; Attach reports in ep.Addrs, ep.Gateways and
// ep.HostName what it got, and netmgr records that as it records its own allocations (so that deleting
// a network in use, listing a network's sandboxes and Recover see those addresses too).
type AddressProvider interface {
	ProvidesAddresses(n *Network) bool
}

// FirewallSpec is what a network needs of the host firewall: the Manager turns the specs of all
// networks into one ruleset (masquerade, isolation) and the published-port rules. The type belongs
// to this contract, not to the firewall package, so that drivers do not depend on how rules are
// made.
type FirewallSpec struct {
	// HostIfaces are the host-side interfaces the network's traffic enters and leaves the host by
	// (a bridge network: its bridge). A name ending in "*" is a prefix wildcard (a routed network's
	// veths, "nmr1a2b*"). A network without any gets no interface-keyed rules.
	HostIfaces []string
	// HairpinIfaces are the HostIfaces on which a translated connection from the network's own
	// subnets is masqueraded, because client and server share an L2 segment there (a bridge);
	// nil: all of HostIfaces.
	HairpinIfaces []string
	// Masquerade SNATs traffic from the network's subnets leaving by other interfaces.
	Masquerade bool
	// NoMasqueradeTo are destinations Masquerade leaves alone although the traffic leaves by
	// another interface: a cluster network's CIDR, so that pods on other nodes see the sender's own
	// pod address.
	NoMasqueradeTo []netip.Prefix
	// Routed lets hosts that route the network's subnets via this host open connections to its
	// sandboxes (gateway_mode=routed).
	Routed bool
	// PortTargets says that the network's endpoints can be targets of published ports: the host
	// reaches them through HostIfaces (netmgr sets route_localnet on those, so that 127.0.0.1 is
	// forwarded too). A sandbox's ports go to its first attachment to such a network that is not
	// internal.
	PortTargets bool
}

// Firewaller is implemented by drivers whose networks need host firewall rules.
type Firewaller interface {
	Firewall(n *Network) (FirewallSpec, bool)
}

// DefaultSubnetter is implemented by drivers whose networks need a subnet even when none is given:
// netmgr then picks the first free prefix of Bits bits in Pool (skipping other networks' subnets
// and what the host routes). Without it a network created without a subnet has none.
type DefaultSubnetter interface {
	DefaultSubnet(n *Network) (pool netip.Prefix, bits int)
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
