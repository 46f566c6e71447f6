package netmgr

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/netmgr/netmgr/drivers"
	"github.com/netmgr/netmgr/internal/intent"
	"github.com/netmgr/netmgr/netmgr/store"
	"github.com/netmgr/netmgr/sandbox"
)

// Attach adds an existing sandbox to one more network; the new interface is the first free ethN.
func (m *Manager) Attach(ctx context.Context, sandboxName string, spec AttachSpec) (*Attachment, error) {
	a, err := m.attach(ctx, sandboxName, spec)
	return a, opErr("attach", "sandbox", sandboxName, err)
}

func (m *Manager) attach(ctx context.Context, name string, spec AttachSpec) (*Attachment, error) {
	if err := checkNames(name, spec.Network); err != nil {
		return nil, err
	}
	l, err := m.lock(ctx, "sandbox-"+name)
	if err != nil {
		return nil, err
	}
	var missing bool // no such sandbox: its lock file goes, unless a crashed operation needs it
	defer func() { l.Unlock(missing && !m.sandboxKnown(context.WithoutCancel(ctx), name)) }()
	unlockNet, err := m.lockNetworksShared(ctx, spec.Network)
	if err != nil {
		return nil, err
	}
	defer unlockNet()
	var rec *sandboxRecord
	var ns *netState
	var ep endpointRecord
	for attempt := 0; ; attempt++ {
		var kv store.KV
		var err error
		rec, kv, err = m.readSandbox(ctx, name)
		if err != nil {
			missing = errors.Is(err, ErrNotFound)
			return nil, err
		}
		if !rec.hasInterfaces() {
			return nil, fmt.Errorf("%w: a %s sandbox has no interfaces of its own to attach", ErrInvalid, rec.Mode)
		}
		if m.sandboxIntent(ctx, name) {
			// We hold the sandbox lock, so no live process owns it: a crashed one left it.
			return nil, fmt.Errorf("%w: an interrupted operation on the sandbox awaits repair (podctl gc)", ErrBusy)
		}
		for _, e := range rec.Endpoints {
			if e.Network == spec.Network {
				return nil, fmt.Errorf("%w: already attached to network %q", ErrExists, spec.Network)
			}
		}
		if ns, err = m.readNetwork(ctx, spec.Network); err != nil {
			return nil, err
		}
		ep = endpointRecord{ID: newID(), Network: spec.Network, IfName: spec.IfName, MAC: spec.MAC, MTU: ns.rec.MTU, Net: ns.rec.snapshot()}
		if ep.IfName == "" {
			ep.IfName = freeIfName(rec.Endpoints)
		}
		for _, e := range rec.Endpoints {
			if e.IfName == ep.IfName {
				return nil, fmt.Errorf("%w: interface %q exists in the sandbox", ErrExists, ep.IfName)
			}
		}
		alloc, err := m.allocate(ctx, ns.rec, spec.IPs, name)
		if err != nil {
			return nil, err
		}
		release := func() { m.ipam.Release(alloc.Keys...) }
		ep.Addrs = alloc.Addrs
		ep.Gateways = gatewayOffer(ns.rec, rec.Endpoints)
		de := ep.driverEndpoint(name)
		if err := ns.drv.PrepareEndpoint(ns.rec.driverNetwork(), de); err != nil {
			release()
			return nil, err
		}
		ep.HostName, ep.MTU, ep.Routes = de.HostName, de.MTU, de.Routes
		rec.Endpoints = append(rec.Endpoints, ep)
		cmps := []store.Cmp{{Key: kv.Key, Rev: kv.Rev}, store.Absent(intent.SandboxKey(name))}
		ops := []store.Op{store.Put(kv.Key, mustJSON(rec)), intent.Put(intent.SandboxKey(name), intent.Endpoint(intent.Attach, spec.Network))}
		cmps, ops = append(cmps, alloc.Cmps...), append(ops, alloc.Ops...)
		err = m.rt.Txn(ctx, cmps, ops)
		release()
		if err == nil {
			break
		}
		if !errors.Is(err, store.ErrConflict) || attempt >= 50 {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Duration(rand.IntN(2000)+200) * time.Microsecond):
		}
	}
	m.step(StepAttachReserved)
	sb, err := sandbox.Open(rec.NetNS)
	if err != nil {
		return nil, errors.Join(err, m.dropEndpoint(context.WithoutCancel(ctx), name, spec.Network))
	}
	defer sb.Close()
	de := ep.driverEndpoint(name)
	if err := ns.drv.Attach(ctx, ns.rec.driverNetwork(), de, sb); err != nil {
		return nil, errors.Join(err, m.dropEndpoint(context.WithoutCancel(ctx), name, spec.Network))
	}
	m.step(StepAttachPlumbed)
	last := len(rec.Endpoints) - 1
	adoptAttached(rec.Endpoints[last:], de, ns)
	kv, err := m.rt.Get(ctx, keySandboxes+name)
	if err == nil {
		err = m.rt.Txn(ctx, []store.Cmp{{Key: kv.Key, Rev: kv.Rev}}, append([]store.Op{store.Put(kv.Key, mustJSON(rec)), store.Del(intent.SandboxKey(name))},
			providedAllocations(name, rec.Endpoints[last:], []*netState{ns})...))
	}
	if err != nil {
		return nil, errors.Join(err, m.dropEndpoint(context.WithoutCancel(ctx), name, spec.Network))
	}
	pub := rec.public()
	return &pub.Attachments[len(pub.Attachments)-1], nil
}

func freeIfName(eps []endpointRecord) string {
	used := map[string]bool{}
	for _, e := range eps {
		used[e.IfName] = true
	}
	for i := 0; ; i++ {
		if n := "eth" + strconv.Itoa(i); !used[n] {
			return n
		}
	}
}

// Detach removes a sandbox from one network. Detaching from a network the sandbox is not on is not an
// error.
func (m *Manager) Detach(ctx context.Context, sandboxName, network string) error {
	return opErr("detach", "sandbox", sandboxName, m.detach(ctx, sandboxName, network))
}

func (m *Manager) detach(ctx context.Context, name, network string) error {
	if err := checkNames(name, network); err != nil {
		return err
	}
	l, err := m.lock(ctx, "sandbox-"+name)
	if err != nil {
		return err
	}
	var missing bool
	defer func() { l.Unlock(missing && !m.sandboxKnown(context.WithoutCancel(ctx), name)) }()
	rec, kv, err := m.readSandbox(ctx, name)
	if err != nil {
		missing = errors.Is(err, ErrNotFound)
		return err
	}
	found := false
	for _, e := range rec.Endpoints {
		found = found || e.Network == network
	}
	if !found {
		return nil
	}
	if err := rec.refuseDetachPorted(network); err != nil {
		return err
	}
	if err := m.rt.Txn(ctx, []store.Cmp{{Key: kv.Key, Rev: kv.Rev}, store.Absent(intent.SandboxKey(name))},
		[]store.Op{store.Put(kv.Key, kv.Value), intent.Put(intent.SandboxKey(name), intent.Endpoint(intent.Detach, network))}); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return fmt.Errorf("%w: sandbox changed concurrently; try again", ErrBusy)
		}
		return err
	}
	m.step(StepDetachMarked)
	return m.dropEndpoint(ctx, name, network)
}

// dropEndpoint detaches the sandbox's endpoint on network, then removes it, its addresses and the
// sandbox's intent from the store. It is idempotent; Recover uses it to finish an interrupted attach or
// detach.
func (m *Manager) dropEndpoint(ctx context.Context, name, network string) error {
	rec, kv, err := m.readSandbox(ctx, name)
	if err != nil {
		return err
	}
	var keep []endpointRecord
	var drop *endpointRecord
	for i := range rec.Endpoints {
		if rec.Endpoints[i].Network == network {
			drop = &rec.Endpoints[i]
		} else {
			keep = append(keep, rec.Endpoints[i])
		}
	}
	ops := []store.Op{store.Del(intent.SandboxKey(name))}
	if drop != nil {
		sb, _ := sandbox.Open(rec.NetNS)
		err = m.detachEndpoint(ctx, name, drop, sb, drivers.DetachOptions{})
		if err == nil && sb != nil {
			m.moveDefaultRoutes(ctx, name, drop, keep, sb)
		}
		if sb != nil {
			sb.Close()
		}
		if err != nil {
			return err
		}
		for _, a := range drop.Addrs {
			ops = append(ops, store.Del(ipamKey(network, a.Addr())))
		}
		rec.Endpoints = keep
		ops = append(ops, store.Put(kv.Key, mustJSON(rec)))
	}
	return m.rt.Txn(ctx, []store.Cmp{{Key: kv.Key, Rev: kv.Rev}}, ops)
}

// detachEndpoint has the endpoint's driver undo it. The network is the recorded one if it is still the
// network the endpoint was made on, else the endpoint's own snapshot of it: a sandbox can always be
// torn down, also when its network's record is gone (a lost or torn state file). An endpoint recorded
// before snapshots existed, on a network that is gone, loses only its host-side interface.
func (m *Manager) detachEndpoint(ctx context.Context, sandboxName string, e *endpointRecord, sb *sandbox.NetNS, opts drivers.DetachOptions) error {
	nrec, err := m.endpointNetwork(ctx, e.Network)
	switch {
	case err == nil && (e.Net == nil || e.Net.ID == nrec.ID):
	case err != nil && !errors.Is(err, ErrNotFound):
		return fmt.Errorf("detach from %s: %w", e.Network, err)
	case e.Net != nil:
		m.log.Warn("network record gone; detaching with the endpoint's copy of it", "sandbox", sandboxName, "network", e.Network)
		nrec = e.Net.record(e.Network)
	default:
		m.log.Warn("network record gone; removing only the endpoint's host interface", "sandbox", sandboxName, "network", e.Network, "host_interface", e.HostName)
		return m.removeHostInterface(e.HostName)
	}
	drv, err := m.driver(nrec.Driver)
	if err != nil {
		return fmt.Errorf("detach from %s: %w", e.Network, err)
	}
	return drv.Detach(ctx, nrec.driverNetwork(), e.driverEndpoint(sandboxName), sb, opts)
}

// removeHostInterface deletes a host-side veth by name; a missing one is not an error.
func (m *Manager) removeHostInterface(name string) error {
	if name == "" {
		return nil
	}
	l, err := m.hh.LinkByName(name)
	if drivers.IsLinkNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("find %s: %w", name, err)
	}
	if l.Type() != "veth" {
		return nil // not one netmgr makes
	}
	if err := m.hh.LinkDel(l); err != nil && !drivers.IsLinkNotFound(err) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

func (m *Manager) readSandbox(ctx context.Context, name string) (*sandboxRecord, store.KV, error) {
	kv, err := m.rt.Get(ctx, keySandboxes+name)
	if errors.Is(err, store.ErrNotFound) {
		return nil, kv, fmt.Errorf("%w: no sandbox named %q", ErrNotFound, name)
	}
	if err != nil {
		return nil, kv, err
	}
	var rec sandboxRecord
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return nil, kv, fmt.Errorf("decode sandbox %q: %w", name, err)
	}
	return &rec, kv, nil
}

func (m *Manager) readNetworkRecord(ctx context.Context, name string) (*networkRecord, error) {
	kv, err := m.st.Get(ctx, keyNetworks+name)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: no network named %q", ErrNotFound, name)
	}
	if err != nil {
		return nil, err
	}
	var rec networkRecord
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return nil, fmt.Errorf("decode network %q: %w", name, err)
	}
	return &rec, nil
}
