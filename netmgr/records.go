package netmgr

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/netmgr/netmgr/drivers"
	"github.com/netmgr/netmgr/sandbox"
)

// Store keys. Everything about one object lives under its own key so that a transaction compares and
// writes only what it touches.
const (
	keyNetworks  = "networks/"  // networks/NAME -> networkRecord
	keySandboxes = "sandboxes/" // sandboxes/NAME -> sandboxRecord
	keyIPAM      = "ipam/"      // ipam/NETWORK/ADDR -> sandbox name
	keyJoins     = "joins/"     // joins/TARGET/NAME -> "" (link sandboxes of a target)
	// Intents, under intents/sandbox/ and intents/network/, are package intent's.
)

// Sandbox modes.
const (
	ModeNetNS = "netns" // a namespace of its own, pinned under the run directory
	ModeHost  = "host"  // the host's namespace
	ModeLink  = "link"  // another sandbox's namespace
	// ModeExternal is a namespace someone else created and removes (a CNI runtime's); netmgr plumbs
	// interfaces into it and removes them, but never pins or removes the namespace.
	ModeExternal = "external"
)

type networkRecord struct {
	ID       string            `json:"id"`
	Name     string            `json:"name"`
	Driver   string            `json:"driver"`
	Subnets  []netip.Prefix    `json:"subnets,omitempty"`
	Gateways []netip.Addr      `json:"gateways,omitempty"`
	Options  map[string]string `json:"options,omitempty"`
	Internal bool              `json:"internal,omitempty"`
	MTU      int               `json:"mtu,omitempty"`
	Created  time.Time         `json:"created"`
	// Creating is set while the network's create is in flight: recorded with the create intent,
	// cleared with it. Seen by a caller that holds the network's shared lock, it means the create's
	// process died before finishing (a live one holds the exclusive lock), and attaching must wait
	// for the repair.
	Creating bool `json:"creating,omitempty"`
	// Node is the host a local network (bridge, macvlan: plumbing on one host) belongs to, on a store
	// several hosts may share; "" on a host's own state file, and for networks of every node.
	Node string `json:"node,omitempty"`
	// Global marks a network that spans nodes (its driver is a drivers.Joiner): its subnets are the
	// cluster CIDR, and each node that joins it has its own subnet out of them (JoinNetwork).
	Global bool `json:"global,omitempty"`
	// Cluster is set only in a joined network's node copy (joinedRecord.nodeNetwork): the cluster
	// CIDRs, while Subnets are the node's.
	Cluster []netip.Prefix `json:"-"`
}

// foreign reports whether the network is another node's local network: this node lists it but
// neither plumbs, repairs, attaches to nor deletes it.
func (m *Manager) foreign(r *networkRecord) bool { return r.Node != "" && r.Node != m.node }

func (m *Manager) refuseForeign(r *networkRecord) error {
	if m.foreign(r) {
		return fmt.Errorf("%w: network %q is local to node %q (this is node %q)", ErrInvalid, r.Name, r.Node, m.node)
	}
	return nil
}

func (r *networkRecord) driverNetwork() *drivers.Network {
	opts := make(map[string]string, len(r.Options))
	for k, v := range r.Options {
		opts[k] = v
	}
	return &drivers.Network{
		ID: r.ID, Name: r.Name, Driver: r.Driver,
		Subnets: r.Subnets, Gateways: r.Gateways, Options: opts,
		Internal: r.Internal, MTU: r.MTU, Cluster: r.Cluster,
	}
}

type endpointRecord struct {
	ID       string         `json:"id"`
	Network  string         `json:"network"`
	IfName   string         `json:"ifname"`
	HostName string         `json:"host_ifname,omitempty"`
	Addrs    []netip.Prefix `json:"addrs,omitempty"`
	Gateways []netip.Addr   `json:"gateways,omitempty"`
	// Routes are the routes the driver decided for the sandbox side (drivers.Endpoint.Routes): planned
	// at PrepareEndpoint, the ones set after Attach. Records of an older netmgr have none: their
	// routes are the default routes via Gateways.
	Routes []drivers.Route `json:"routes,omitempty"`
	MAC    string          `json:"mac,omitempty"`
	MTU    int             `json:"mtu,omitempty"`
	// Net is the network as it was when the endpoint was made (networks do not change), so that the
	// endpoint can be torn down when the network's record is gone (a torn or lost state file).
	Net *netSnapshot `json:"net,omitempty"`
}

// netSnapshot is what a driver needs of a network to detach an endpoint from it.
type netSnapshot struct {
	ID       string            `json:"id"`
	Driver   string            `json:"driver"`
	Subnets  []netip.Prefix    `json:"subnets,omitempty"`
	Gateways []netip.Addr      `json:"gateways,omitempty"`
	Options  map[string]string `json:"options,omitempty"`
	Internal bool              `json:"internal,omitempty"`
	MTU      int               `json:"mtu,omitempty"`
}

func (r *networkRecord) snapshot() *netSnapshot {
	return &netSnapshot{ID: r.ID, Driver: r.Driver, Subnets: r.Subnets, Gateways: r.Gateways, Options: r.Options, Internal: r.Internal, MTU: r.MTU}
}

func (s *netSnapshot) record(name string) *networkRecord {
	return &networkRecord{ID: s.ID, Name: name, Driver: s.Driver, Subnets: s.Subnets, Gateways: s.Gateways, Options: s.Options, Internal: s.Internal, MTU: s.MTU}
}

func (e *endpointRecord) driverEndpoint(sandbox string) *drivers.Endpoint {
	return &drivers.Endpoint{
		ID: e.ID, Sandbox: sandbox, IfName: e.IfName, HostName: e.HostName,
		Addrs: e.Addrs, Gateways: e.Gateways, Routes: e.Routes, MAC: e.MAC, MTU: e.MTU,
	}
}

// pauseRecord is the sandbox's pause process as recorded (and in its pid file).
type pauseRecord = sandbox.Process

type sandboxRecord struct {
	ID        string            `json:"id"`
	Name      string            `json:"name"`
	Mode      string            `json:"mode"`
	NetNS     string            `json:"netns"`
	Join      string            `json:"join,omitempty"`
	Endpoints []endpointRecord  `json:"endpoints,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
	Aliases   []string          `json:"aliases,omitempty"`
	Pause     *pauseRecord      `json:"pause,omitempty"`
	// WantPause is recorded before the pause process starts: a create killed between starting it
	// and recording its pid leaves a pause process that only a scan of the namespace finds.
	WantPause bool         `json:"want_pause,omitempty"`
	Ports     []portRecord `json:"ports,omitempty"`
	Created   time.Time    `json:"created"`

	going bool // set by DeleteSandbox's NamespaceGoing for this delete only; never stored
}

// owned reports whether netmgr created the namespace and so removes it.
func (r *sandboxRecord) owned() bool { return r.Mode == ModeNetNS }

// hasInterfaces reports whether netmgr plumbs interfaces into the sandbox's namespace.
func (r *sandboxRecord) hasInterfaces() bool { return r.Mode == ModeNetNS || r.Mode == ModeExternal }

// ipamKey is the key of an address allocated in a network; its value is the sandbox's name.
func ipamKey(network string, a netip.Addr) string {
	return ipamPrefix(network) + a.String()
}

// ipamPrefix is the prefix of a network's address keys (ipam.Request.Prefix).
func ipamPrefix(network string) string { return keyIPAM + network + "/" }

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // records are plain data; failing to marshal one is a programming error
	}
	return b
}

func lastSegment(key string) string {
	return key[strings.LastIndexByte(key, '/')+1:]
}
