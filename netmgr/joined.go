package netmgr

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"

	"github.com/netmgr/netmgr/drivers"
	"github.com/netmgr/netmgr/netmgr/store"
)

// Networks of a driver that joins nodes (drivers.Joiner: overlay, routed) span the cluster: one
// record in the cluster store, with the cluster CIDR as its subnets, and no plumbing anywhere until a
// node joins it. The node agent leases the node's own subnets out of the CIDR and calls JoinNetwork;
// the Manager then keeps a copy of the network with the node's view in its runtime store
// (joined/NAME), so that creating a sandbox on the network reads nothing but node-local state: no
// round trip to the cluster store, and it keeps working while that store is unreachable.
const keyJoined = "joined/" // joined/NAME -> joinedRecord (runtime store)

type joinedRecord struct {
	Network networkRecord    `json:"network"` // as recorded in the cluster store: subnets = cluster CIDR
	View    drivers.NodeView `json:"view"`    // with the attributes the driver's Join published
}

// spansNodes reports whether drv's networks are cluster-wide.
func spansNodes(drv drivers.Driver) bool {
	_, ok := drv.(drivers.Joiner)
	return ok
}

// refuseLocalStore refuses a cluster-wide network on a store that only this host can see.
func (m *Manager) refuseLocalStore(spec NetworkSpec) error {
	if _, err := store.Leases(m.st); err != nil {
		return fmt.Errorf("%w: driver %s makes networks that span nodes: they need a cluster store (--store etcd://HOST:2379), and this one has no leases", ErrInvalid, spec.Driver)
	}
	return nil
}

// nodeNetwork is the network as drivers see it in endpoint calls and firewall specs on this node: the
// node's subnets and gateways in place of the cluster CIDR, which is in Cluster. Join, Leave and
// SyncPeers get the network as recorded (the cluster CIDR in Subnets) and the node's view beside it.
func (j *joinedRecord) nodeNetwork() *networkRecord {
	r := j.Network
	r.Subnets = j.View.Subnets
	r.Gateways = j.View.Gateways
	r.Cluster = j.Network.Subnets
	return &r
}

func (m *Manager) joined(ctx context.Context, name string) (*joinedRecord, error) {
	kv, err := m.rt.Get(ctx, keyJoined+name)
	if err != nil {
		return nil, err
	}
	var j joinedRecord
	if err := json.Unmarshal(kv.Value, &j); err != nil {
		return nil, fmt.Errorf("decode joined network %q: %w", name, err)
	}
	return &j, nil
}

func (m *Manager) joinedRecords(ctx context.Context) ([]*joinedRecord, error) {
	kvs, _, err := m.rt.List(ctx, keyJoined)
	if err != nil {
		return nil, err
	}
	out := make([]*joinedRecord, 0, len(kvs))
	for _, kv := range kvs {
		var j joinedRecord
		if err := json.Unmarshal(kv.Value, &j); err != nil {
			m.log.Warn("skipping undecodable joined network", "key", kv.Key, "error", err)
			continue
		}
		out = append(out, &j)
	}
	return out, nil
}

// Joined is a cluster-wide network as this node carries it.
type Joined struct {
	Network string         `json:"network"`
	ID      string         `json:"id"`
	Driver  string         `json:"driver"`
	CIDRs   []netip.Prefix `json:"cidrs"`
	// View is the node's view as joined; its Attrs are what the driver's Join published for peers
	// (an overlay's VTEP MAC).
	View drivers.NodeView `json:"view"`
}

func (j *joinedRecord) public() *Joined {
	return &Joined{Network: j.Network.Name, ID: j.Network.ID, Driver: j.Network.Driver, CIDRs: j.Network.Subnets, View: j.View}
}

// JoinedNetworks lists the cluster-wide networks this node carries.
func (m *Manager) JoinedNetworks(ctx context.Context) ([]*Joined, error) {
	js, err := m.joinedRecords(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]*Joined, len(js))
	for i, j := range js {
		out[i] = j.public()
	}
	return out, nil
}

// JoinNetwork makes this node carry the cluster-wide network name with the node's view (its subnets
// out of the network's CIDR, one per family, their gateways, its underlay address): the driver creates
// the node's host side (drivers.Joiner.Join, idempotent) and the Manager records the network and view
// locally, for sandboxes created on this node. The node agent calls it after it leased the node's
// subnets; calling it again with the same view is harmless (and repairs plumbing that vanished). A
// changed view of a network in use by sandboxes of this node is refused. It returns what the driver
// published for peers.
func (m *Manager) JoinNetwork(ctx context.Context, name string, view drivers.NodeView) (*Joined, error) {
	j, err := m.joinNetwork(ctx, name, view)
	return j, opErr("join", "network", name, err)
}

func (m *Manager) joinNetwork(ctx context.Context, name string, view drivers.NodeView) (*Joined, error) {
	if err := checkName("network", name); err != nil {
		return nil, err
	}
	rec, err := m.readNetworkRecord(ctx, name)
	if err != nil {
		return nil, err
	}
	drv, err := m.driver(rec.Driver)
	if err != nil {
		return nil, err
	}
	if !spansNodes(drv) {
		return nil, fmt.Errorf("%w: network %q (driver %s) is local to a node; only networks that span nodes are joined", ErrInvalid, name, rec.Driver)
	}
	if view.Node == "" {
		view.Node = m.node
	}
	if view.Node != m.node {
		return nil, fmt.Errorf("%w: view of node %q given to node %q", ErrInvalid, view.Node, m.node)
	}
	if err := checkView(rec, view); err != nil {
		return nil, err
	}
	l, err := m.lock(ctx, "network-"+name)
	if err != nil {
		return nil, err
	}
	defer l.Unlock(false)
	if old, err := m.joined(ctx, name); err == nil {
		if old.Network.ID == rec.ID && !sameView(old.View, view) {
			if err := m.refuseInUse(ctx, name); err != nil {
				return nil, fmt.Errorf("node view of network %q changed (%v -> %v): %w", name, old.View.Subnets, view.Subnets, err)
			}
		}
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	j := &joinedRecord{Network: *rec, View: view}
	dn := j.Network.driverNetwork()
	joiner := drv.(drivers.Joiner)
	if err := joiner.Join(ctx, dn, &j.View); err != nil {
		return nil, err
	}
	if err := m.rt.Txn(ctx, nil, []store.Op{store.Put(keyJoined+name, mustJSON(j))}); err != nil {
		return nil, errors.Join(err, joiner.Leave(context.WithoutCancel(ctx), dn, j.View))
	}
	if err := m.syncFirewall(ctx); err != nil {
		return nil, err
	}
	m.log.Info("network joined", "network", name, "node", m.node, "subnets", view.Subnets)
	return j.public(), nil
}

func checkView(rec *networkRecord, view drivers.NodeView) error {
	if len(view.Gateways) != 0 && len(view.Gateways) != len(view.Subnets) {
		return fmt.Errorf("%w: node view has %d subnets and %d gateways", ErrInvalid, len(view.Subnets), len(view.Gateways))
	}
	for i, sn := range view.Subnets {
		inside := false
		for _, c := range rec.Subnets {
			if c.Addr().Is4() == sn.Addr().Is4() && c.Bits() <= sn.Bits() && c.Contains(sn.Addr()) {
				inside = true
			}
		}
		if !inside {
			return fmt.Errorf("%w: node subnet %s is not inside network %q's CIDRs %v", ErrInvalid, sn, rec.Name, rec.Subnets)
		}
		if len(view.Gateways) > 0 && view.Gateways[i].IsValid() && !sn.Contains(view.Gateways[i]) {
			return fmt.Errorf("%w: gateway %s is outside node subnet %s", ErrInvalid, view.Gateways[i], sn)
		}
	}
	return nil
}

func sameView(a, b drivers.NodeView) bool {
	if a.Underlay != b.Underlay || len(a.Subnets) != len(b.Subnets) || len(a.Gateways) != len(b.Gateways) {
		return false
	}
	for i := range a.Subnets {
		if a.Subnets[i] != b.Subnets[i] {
			return false
		}
	}
	for i := range a.Gateways {
		if a.Gateways[i] != b.Gateways[i] {
			return false
		}
	}
	return true
}

// LeaveNetwork makes this node stop carrying a cluster-wide network: the driver removes the node's
// host side and the local record goes. Sandboxes of this node still attached to it are refused
// (ErrInUse) unless force is set, as when the network was deleted from the cluster: their endpoints
// keep what they need to be torn down later. It is idempotent.
func (m *Manager) LeaveNetwork(ctx context.Context, name string, force bool) error {
	return opErr("leave", "network", name, m.leaveNetwork(ctx, name, force))
}

func (m *Manager) leaveNetwork(ctx context.Context, name string, force bool) error {
	if err := checkName("network", name); err != nil {
		return err
	}
	l, err := m.lock(ctx, "network-"+name)
	if err != nil {
		return err
	}
	defer l.Unlock(false)
	j, err := m.joined(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if !force {
		if err := m.refuseInUse(ctx, name); err != nil {
			return err
		}
	}
	drv, err := m.driver(j.Network.Driver)
	if err != nil {
		return err
	}
	joiner, ok := drv.(drivers.Joiner)
	if !ok {
		return fmt.Errorf("%w: driver %s joins no nodes", ErrInvalid, j.Network.Driver)
	}
	if err := joiner.Leave(ctx, j.Network.driverNetwork(), j.View); err != nil {
		return err
	}
	if err := m.rt.Txn(ctx, nil, []store.Op{store.Del(keyJoined + name)}); err != nil {
		return err
	}
	m.log.Info("network left", "network", name, "node", m.node)
	return m.syncFirewall(ctx)
}

// SyncPeers makes this node's host side of the joined network name reach exactly the given peers
// (other nodes' views, with the attributes their drivers published): the driver adds what is missing
// and removes what no peer explains (drivers.PeerSyncer). A peer that names this node is ignored.
func (m *Manager) SyncPeers(ctx context.Context, name string, peers []drivers.NodeView) error {
	return opErr("sync peers of", "network", name, m.syncPeers(ctx, name, peers))
}

func (m *Manager) syncPeers(ctx context.Context, name string, peers []drivers.NodeView) error {
	j, err := m.joined(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("%w: node %q has not joined network %q", ErrNotFound, m.node, name)
	}
	if err != nil {
		return err
	}
	drv, err := m.driver(j.Network.Driver)
	if err != nil {
		return err
	}
	ps, ok := drv.(drivers.PeerSyncer)
	if !ok {
		return nil
	}
	others := make([]drivers.NodeView, 0, len(peers))
	for _, p := range peers {
		if p.Node != m.node {
			others = append(others, p)
		}
	}
	return ps.SyncPeers(ctx, j.Network.driverNetwork(), j.View, others)
}

// notJoined is the error of a sandbox create on a cluster-wide network this node does not carry.
func (m *Manager) notJoined(name string) error {
	return fmt.Errorf("%w: network %q spans nodes and node %q has not joined it (is the node agent running here?)", ErrNotFound, name, m.node)
}

// endpointNetwork is the network an endpoint on it is torn down or restored with: on a store several
// hosts share, this node's copy of a joined network (its own subnets, and no round trip to the
// cluster store, which may be unreachable), else the recorded network.
func (m *Manager) endpointNetwork(ctx context.Context, name string) (*networkRecord, error) {
	if m.shared {
		j, err := m.joined(ctx, name)
		if err == nil {
			return j.nodeNetwork(), nil
		}
		if !errors.Is(err, store.ErrNotFound) {
			return nil, err
		}
	}
	return m.readNetworkRecord(ctx, name)
}
