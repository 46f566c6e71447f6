package netmgr

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/netmgr/netmgr/drivers"
	"github.com/netmgr/netmgr/internal/intent"
	"github.com/netmgr/netmgr/netmgr/firewall"
	"github.com/netmgr/netmgr/netmgr/ipam"
	"github.com/netmgr/netmgr/netmgr/store"
)

// NetworkSpec describes a network to create.
type NetworkSpec struct {
	Name    string
	Driver  string
	Subnets []netip.Prefix // at most one per family; when empty, a driver that wants one picks it (bridge: a free 10.89.x.0/24)
	// Gateways optionally sets the gateway of the subnet of the same family; default: first host address.
	Gateways []netip.Addr
	Options  map[string]string // driver options (--opt k=v)
	Internal bool              // no traffic leaves the network
	MTU      int
}

// Network is a network as the Manager reports it.
type Network struct {
	ID        string            `json:"id"`
	Name      string            `json:"name"`
	Driver    string            `json:"driver"`
	Subnets   []netip.Prefix    `json:"subnets"`
	Gateways  []netip.Addr      `json:"gateways"`
	Options   map[string]string `json:"options,omitempty"`
	Internal  bool              `json:"internal"`
	MTU       int               `json:"mtu,omitempty"`
	Created   time.Time         `json:"created"`
	Sandboxes []string          `json:"sandboxes"`
	// Node is the host a local network belongs to on a store several hosts share (see WithNode).
	Node string `json:"node,omitempty"`
	// Scope is "local" for a network plumbed on one host, "global" for one that spans nodes (its
	// Subnets are the cluster CIDR; each node that joins it has its own subnet out of them).
	Scope string `json:"scope"`
}

// validName is name =~ ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$, by hand: as a package-level regexp it was
// compiled at the start of every podctl process.
func validName(name string) bool {
	for i, c := range []byte(name) {
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '_' && c != '.' && c != '-') {
			return false
		}
	}
	return name != ""
}

func checkName(kind, name string) error {
	if len(name) == 0 || len(name) > 63 || !validName(name) {
		return fmt.Errorf("%w: %s name %q must be 1-63 characters of letters, digits, '_', '.', '-', starting with a letter or digit", ErrInvalid, kind, name)
	}
	return nil
}

// checkNames validates a sandbox name and a network name, before any path is derived from them.
func checkNames(sandbox, network string) error {
	if err := checkName("sandbox", sandbox); err != nil {
		return err
	}
	return checkName("network", network)
}

// CreateNetwork validates spec, records the network and creates its plumbing. Nothing is changed when
// validation fails, and a failure later is rolled back.
func (m *Manager) CreateNetwork(ctx context.Context, spec NetworkSpec) (*Network, error) {
	n, err := m.createNetwork(ctx, spec)
	return n, opErr("create", "network", spec.Name, err)
}

func (m *Manager) createNetwork(ctx context.Context, spec NetworkSpec) (_ *Network, err error) {
	if err := checkName("network", spec.Name); err != nil {
		return nil, err
	}
	if spec.Driver == "" {
		spec.Driver = "bridge"
	}
	if err := refuseModeDriver(spec.Driver); err != nil {
		return nil, err
	}
	drv, err := m.driver(spec.Driver)
	if err != nil {
		return nil, err
	}
	global := spansNodes(drv)
	if global {
		if err := m.refuseLocalStore(spec); err != nil {
			return nil, err
		}
	}
	l, err := m.lock(ctx, "network-"+spec.Name)
	if err != nil {
		return nil, err
	}
	// A create that failed before recording, or whose rollback finished, leaves no lock file behind;
	// otherwise it stays, so that Recover repairs the intent.
	clean := true
	defer func() { l.Unlock(err != nil && clean && !m.networkKnown(context.WithoutCancel(ctx), spec.Name)) }()

	rec, dn, err := m.reserveNetwork(ctx, spec, drv)
	if err != nil {
		return nil, err
	}
	m.step(StepNetworkReserved)
	// A network that spans nodes has no plumbing until a node joins it (JoinNetwork).
	if !global {
		if err := drv.CreateNetwork(ctx, dn); err != nil {
			return nil, m.rollbackNetwork(ctx, rec, err, &clean)
		}
		m.step(StepNetworkCreated)
		if err := m.syncFirewall(ctx); err != nil {
			return nil, m.rollbackNetwork(ctx, rec, err, &clean)
		}
	}
	rec.Creating = false
	if err := m.st.Txn(ctx, nil, []store.Op{store.Put(keyNetworks+spec.Name, mustJSON(rec)), store.Del(intent.NetworkKey(spec.Name))}); err != nil {
		return nil, m.rollbackNetwork(ctx, rec, err, &clean)
	}
	m.log.Info("network created", "network", rec.Name, "driver", rec.Driver, "subnets", rec.Subnets)
	return rec.public(nil), nil
}

// keyNetGuard is rewritten by every network create, which compares it at the revision it read: of two
// concurrent creates (of any names) that chose subnets and bridges from the same list, one commits
// and the other reads again, so two networks never share a subnet or a bridge.
const keyNetGuard = "guards/networks"

// reserveNetwork validates spec against the other networks and records the network with a create
// intent, reading again and retrying when a concurrent create committed first.
func (m *Manager) reserveNetwork(ctx context.Context, spec NetworkSpec, drv drivers.Driver) (*networkRecord, *drivers.Network, error) {
	// The host's routes are dumped at most once per create, however often a conflict makes it plan again.
	hostRoutes := sync.OnceValue(m.hostRoutes)
	for attempt := 0; ; attempt++ {
		rec, dn, cmps, err := m.planNetwork(ctx, spec, drv, hostRoutes)
		if err != nil {
			return nil, nil, err
		}
		err = m.st.Txn(ctx, cmps, []store.Op{
			store.Put(keyNetworks+spec.Name, mustJSON(rec)),
			intent.Put(intent.NetworkKey(spec.Name), m.networkIntent(intent.Create)),
			store.Put(keyNetGuard, []byte(spec.Name)),
		})
		if err == nil {
			return rec, dn, nil
		}
		if !errors.Is(err, store.ErrConflict) || attempt >= 20 {
			if errors.Is(err, store.ErrConflict) {
				return nil, nil, fmt.Errorf("%w: networks changed concurrently; try again", ErrBusy)
			}
			return nil, nil, err
		}
		select {
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		case <-time.After(time.Duration(rand.IntN(2000)+200) * time.Microsecond):
		}
	}
}

// planNetwork builds the record of a network to create from the networks recorded now, and the
// compares that make its transaction fail if another create commits first.
func (m *Manager) planNetwork(ctx context.Context, spec NetworkSpec, drv drivers.Driver, hostRoutes func() []netip.Prefix) (*networkRecord, *drivers.Network, []store.Cmp, error) {
	guard, err := m.st.Get(ctx, keyNetGuard)
	guardCmp := store.Cmp{Key: keyNetGuard, Rev: guard.Rev}
	if errors.Is(err, store.ErrNotFound) {
		guardCmp = store.Absent(keyNetGuard)
	} else if err != nil {
		return nil, nil, nil, err
	}
	all, _, err := m.st.List(ctx, keyNetworks)
	if err != nil {
		return nil, nil, nil, err
	}
	rec := &networkRecord{
		ID: newID(), Name: spec.Name, Driver: spec.Driver, Internal: spec.Internal, MTU: spec.MTU,
		Options: map[string]string{}, Created: time.Now().UTC(), Creating: true,
	}
	// A driver that joins nodes to its networks (drivers.Joiner: overlay, routed) makes networks of
	// every node; any other network's plumbing is on the host that made it.
	if _, everyNode := drv.(drivers.Joiner); m.shared && !everyNode {
		rec.Node = m.node
	}
	for k, v := range spec.Options {
		rec.Options[k] = v
	}
	var existing []*drivers.Network
	var taken []netip.Prefix
	for _, kv := range all {
		var o networkRecord
		if err := json.Unmarshal(kv.Value, &o); err != nil {
			continue
		}
		if o.Name == spec.Name {
			return nil, nil, nil, fmt.Errorf("%w: a network named %q exists", ErrExists, spec.Name)
		}
		if o.Driver == spec.Driver {
			existing = append(existing, o.driverNetwork())
		}
		taken = append(taken, o.Subnets...)
	}
	if providesAddresses(drv, rec) && (len(spec.Subnets) > 0 || len(spec.Gateways) > 0) {
		return nil, nil, nil, fmt.Errorf("%w: driver %s assigns addresses itself; give no subnet or gateway", ErrInvalid, spec.Driver)
	}
	if err := m.chooseSubnets(rec, spec, taken, drv, hostRoutes); err != nil {
		return nil, nil, nil, err
	}
	if spansNodes(drv) {
		if len(spec.Gateways) > 0 {
			return nil, nil, nil, fmt.Errorf("%w: a network that spans nodes has a gateway per node subnet; give no gateway", ErrInvalid)
		}
		if len(rec.Subnets) == 0 {
			return nil, nil, nil, fmt.Errorf("%w: driver %s needs a cluster CIDR (--subnet)", ErrInvalid, spec.Driver)
		}
		rec.Gateways = nil // each node's subnet has its own
		rec.Global = true
	}
	dn := rec.driverNetwork()
	if err := drv.PrepareNetwork(dn, existing); err != nil {
		return nil, nil, nil, err
	}
	if err := allocateNetwork(ctx, drv, dn, existing); err != nil {
		return nil, nil, nil, err
	}
	rec.Options = dn.Options
	cmps := []store.Cmp{guardCmp, store.Absent(keyNetworks + spec.Name), store.Absent(intent.NetworkKey(spec.Name))}
	return rec, dn, cmps, nil
}

// chooseSubnets validates the requested subnets and gateways, or picks a free default subnet for
// drivers that need one.
func (m *Manager) chooseSubnets(rec *networkRecord, spec NetworkSpec, taken []netip.Prefix, drv drivers.Driver, hostRoutes func() []netip.Prefix) error {
	seen := map[bool]bool{}
	for _, sn := range spec.Subnets {
		if !sn.IsValid() {
			return fmt.Errorf("%w: subnet %v is not a CIDR", ErrInvalid, sn)
		}
		if _, err := ipam.ParseSubnet(sn.String()); err != nil {
			return err
		}
		if seen[sn.Addr().Is4()] {
			return fmt.Errorf("%w: more than one subnet of the same family (%s)", ErrInvalid, sn)
		}
		seen[sn.Addr().Is4()] = true
		for _, t := range taken {
			if t.Overlaps(sn) {
				return fmt.Errorf("%w: subnet %s overlaps %s of another network", ErrInUse, sn, t)
			}
		}
		rec.Subnets = append(rec.Subnets, sn)
	}
	if len(rec.Subnets) == 0 && !providesAddresses(drv, rec) {
		sn, ok, err := m.defaultSubnet(drv, rec.driverNetwork(), taken, hostRoutes)
		if err != nil {
			return err
		}
		if ok {
			rec.Subnets = append(rec.Subnets, sn)
		}
	}
	for _, gw := range spec.Gateways {
		found := false
		for _, sn := range rec.Subnets {
			if sn.Addr().Is4() == gw.Is4() {
				found = true
			}
		}
		if !found {
			return fmt.Errorf("%w: gateway %s has no subnet of its family", ErrInvalid, gw)
		}
	}
	for _, sn := range rec.Subnets {
		var gw netip.Addr
		for _, g := range spec.Gateways {
			if g.Is4() == sn.Addr().Is4() {
				gw = g
			}
		}
		pool, err := ipam.NewPool(sn, gw)
		if err != nil {
			return err
		}
		rec.Gateways = append(rec.Gateways, pool.Gateway)
	}
	return nil
}

// hostRoutes lists the IPv4 destinations the host namespace routes (its main table), other than the
// default route: a default subnet must not overlap them.
func (m *Manager) hostRoutes() []netip.Prefix {
	routes, err := drivers.RetryDump(func() ([]netlink.Route, error) { return m.hh.RouteList(nil, netlink.FAMILY_V4) })
	if err != nil {
		m.log.Warn("cannot list host routes; the default subnet may overlap one", "error", err)
		return nil
	}
	var out []netip.Prefix
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		a, ok := netip.AddrFromSlice(r.Dst.IP)
		if !ok || ones == 0 {
			continue
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), ones).Masked())
	}
	return out
}

// networkKnown reports whether the store has a record or an intent for the name (or cannot tell).
func (m *Manager) networkKnown(ctx context.Context, name string) bool {
	for _, k := range []string{keyNetworks + name, intent.NetworkKey(name)} {
		if _, err := m.st.Get(ctx, k); !errors.Is(err, store.ErrNotFound) {
			return true
		}
	}
	return false
}

// rollbackNetwork undoes a failed create even if ctx is what failed, and clears *clean when the undo
// itself failed, so that the lock file stays for Recover.
func (m *Manager) rollbackNetwork(ctx context.Context, rec *networkRecord, cause error, clean *bool) error {
	if err := m.undoNetwork(context.WithoutCancel(ctx), rec); err != nil {
		*clean = false
		return errors.Join(cause, err)
	}
	return cause
}

// undoNetwork rolls back a network whose create failed or was interrupted. It refuses, with a
// *usersError (ErrInUse), while anything uses the network (see networkUsers): an intent that bbolt's
// fallback to its previous meta page brought back belongs to a network that is whole and may carry
// sandboxes, and one whose creator was killed may have had an attach finish after it died.
func (m *Manager) undoNetwork(ctx context.Context, rec *networkRecord) error {
	users, err := m.networkUsers(ctx, rec)
	if err != nil {
		return fmt.Errorf("undo network %s: look for users: %w", rec.Name, err)
	}
	if len(users) > 0 {
		return &usersError{what: "network " + rec.Name, users: users}
	}
	var errs []error
	if drv, err := m.driver(rec.Driver); err == nil {
		errs = append(errs, drv.DeleteNetwork(ctx, rec.driverNetwork()))
	}
	errs = append(errs, m.st.Txn(ctx, nil, []store.Op{store.Del(keyNetworks + rec.Name), store.Del(intent.NetworkKey(rec.Name))}))
	errs = append(errs, m.syncFirewall(ctx))
	return errors.Join(errs...)
}

// DeleteNetwork removes a network that has no attachments. It is idempotent only in the sense that a
// missing network reports ErrNotFound and changes nothing.
func (m *Manager) DeleteNetwork(ctx context.Context, name string) error {
	return opErr("delete", "network", name, m.deleteNetwork(ctx, name))
}

func (m *Manager) deleteNetwork(ctx context.Context, name string) error {
	if err := checkName("network", name); err != nil {
		return err
	}
	l, err := m.lock(ctx, "network-"+name)
	if err != nil {
		return err
	}
	removed := false
	defer func() { l.Unlock(removed) }()
	kv, err := m.st.Get(ctx, keyNetworks+name)
	if errors.Is(err, store.ErrNotFound) {
		removed = !m.networkKnown(ctx, name) // keep the lock file a crashed create's intent needs
		return fmt.Errorf("%w: no network named %q", ErrNotFound, name)
	}
	if err != nil {
		return err
	}
	var rec networkRecord
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return fmt.Errorf("decode network record: %w", err)
	}
	if err := m.refuseForeign(&rec); err != nil {
		return err
	}
	if err := m.refuseInUse(ctx, name); err != nil {
		return err // the common case, answered before anything is written
	}
	// Mark first: re-writing the record bumps its revision, so an attach that read the old one fails its
	// compare and sees the delete intent on retry. Then look for attachments.
	if err := m.st.Txn(ctx, []store.Cmp{{Key: kv.Key, Rev: kv.Rev}}, []store.Op{
		store.Put(kv.Key, kv.Value),
		intent.Put(intent.NetworkKey(name), m.networkIntent(intent.Delete)),
	}); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return fmt.Errorf("%w: network changed concurrently; try again", ErrBusy)
		}
		return err
	}
	if err := m.refuseInUse(ctx, name); err != nil {
		// An attach committed between the check above and the mark.
		return errors.Join(err, intent.Clear(ctx, m.st, intent.NetworkKey(name)))
	}
	m.step(StepNetworkDeleting)
	err = m.finishNetworkDelete(ctx, &rec)
	removed = err == nil
	return err
}

// refuseInUse returns ErrInUse naming the sandboxes attached to the network, if any.
func (m *Manager) refuseInUse(ctx context.Context, name string) error {
	users, _, err := m.rt.List(ctx, ipamPrefix(name))
	if err != nil {
		return err
	}
	if len(users) == 0 {
		return m.refuseAttaching(ctx, name)
	}
	sbs := map[string]bool{}
	for _, u := range users {
		sbs[string(u.Value)] = true
	}
	return fmt.Errorf("%w: %d sandbox(es) attached (%s); remove them first", ErrInUse, len(sbs), strings.Join(sortedKeys(sbs), ", "))
}

func (m *Manager) finishNetworkDelete(ctx context.Context, rec *networkRecord) error {
	drv, err := m.driver(rec.Driver)
	if err != nil {
		return err
	}
	if spansNodes(drv) {
		// Every node's agent leaves it when the record goes; this node's own host side goes now.
		if j, err := m.joined(ctx, rec.Name); err == nil {
			if err := drv.(drivers.Joiner).Leave(ctx, j.Network.driverNetwork(), j.View); err != nil {
				return err
			}
			if err := m.rt.Txn(ctx, nil, []store.Op{store.Del(keyJoined + rec.Name)}); err != nil {
				return err
			}
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
	}
	if err := drv.DeleteNetwork(ctx, rec.driverNetwork()); err != nil {
		return err
	}
	m.step(StepNetworkRemoved)
	if err := m.st.Txn(ctx, nil, []store.Op{store.Del(keyNetworks + rec.Name), store.Del(intent.NetworkKey(rec.Name))}); err != nil {
		return err
	}
	m.log.Info("network deleted", "network", rec.Name)
	return m.syncFirewall(ctx)
}

// Network returns one network with the sandboxes attached to it.
func (m *Manager) Network(ctx context.Context, name string) (*Network, error) {
	if err := checkName("network", name); err != nil {
		return nil, opErr("inspect", "network", name, err)
	}
	kv, err := m.st.Get(ctx, keyNetworks+name)
	if errors.Is(err, store.ErrNotFound) {
		return nil, opErr("inspect", "network", name, fmt.Errorf("%w: no network named %q", ErrNotFound, name))
	}
	if err != nil {
		return nil, err
	}
	var rec networkRecord
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return nil, err
	}
	users, _, err := m.rt.List(ctx, ipamPrefix(name))
	if err != nil {
		return nil, err
	}
	return rec.public(users), nil
}

// Networks returns every network, sorted by name.
func (m *Manager) Networks(ctx context.Context) ([]*Network, error) {
	recs, err := m.networkRecords(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]*Network, 0, len(recs))
	for _, r := range recs {
		users, _, err := m.rt.List(ctx, ipamPrefix(r.Name))
		if err != nil {
			return nil, err
		}
		out = append(out, r.public(users))
	}
	return out, nil
}

func (m *Manager) networkRecords(ctx context.Context) ([]*networkRecord, error) {
	kvs, _, err := m.st.List(ctx, keyNetworks)
	if err != nil {
		return nil, err
	}
	out := make([]*networkRecord, 0, len(kvs))
	for _, kv := range kvs {
		var r networkRecord
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			m.log.Warn("skipping undecodable network record", "key", kv.Key, "error", err)
			continue
		}
		out = append(out, &r)
	}
	return out, nil
}

func (r *networkRecord) public(users []store.KV) *Network {
	n := &Network{
		ID: r.ID, Name: r.Name, Driver: r.Driver, Subnets: r.Subnets, Gateways: r.Gateways,
		Options: r.Options, Internal: r.Internal, MTU: r.MTU, Created: r.Created, Sandboxes: []string{},
		Node: r.Node, Scope: "local",
	}
	if r.Global {
		n.Scope = "global"
	}
	if n.Subnets == nil {
		n.Subnets = []netip.Prefix{}
	}
	if n.Gateways == nil {
		n.Gateways = []netip.Addr{}
	}
	seen := map[string]bool{}
	for _, u := range users {
		seen[string(u.Value)] = true
	}
	n.Sandboxes = append(n.Sandboxes, sortedKeys(seen)...)
	return n
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// syncFirewall rebuilds the nftables ruleset from the recorded networks, under a host-wide lock so
// that concurrent processes apply in turn and the last one applies the latest records.
func (m *Manager) syncFirewall(ctx context.Context) error {
	l, err := m.lock(ctx, "firewall")
	if err != nil {
		return err
	}
	defer l.Unlock(false)
	recs, err := m.networkRecords(ctx)
	if err != nil {
		return err
	}
	joined, err := m.joinedRecords(ctx)
	if err != nil {
		return err
	}
	var local []*networkRecord
	for _, r := range recs {
		if m.foreign(r) {
			continue // its bridge is on another host
		}
		if drv, err := m.driver(r.Driver); err == nil && spansNodes(drv) {
			continue // the cluster's record: a node that joined the network has its own view below
		}
		local = append(local, r)
	}
	for _, j := range joined {
		local = append(local, j.nodeNetwork())
	}
	var nets []firewall.Network
	for _, r := range local {
		drv, err := m.driver(r.Driver)
		if err != nil {
			continue
		}
		dn := r.driverNetwork()
		if fs, ok := firewallSpec(drv, dn); ok {
			nets = append(nets, firewallNetworkOf(dn, fs))
		}
	}
	if err := m.fw.Apply(ctx, nets); err != nil {
		return fmt.Errorf("apply firewall: %w", err)
	}
	return nil
}
