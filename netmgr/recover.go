package netmgr

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/netmgr/netmgr/drivers"
	"github.com/netmgr/netmgr/internal/intent"
	"github.com/netmgr/netmgr/netmgr/store"
	"github.com/netmgr/netmgr/sandbox"
)

// Report says what Recover repaired.
type Report struct {
	Networks  []string `json:"networks,omitempty"`  // networks whose interrupted create or delete was finished or undone
	Sandboxes []string `json:"sandboxes,omitempty"` // sandboxes whose interrupted operation was finished or undone
	Stale     []string `json:"stale,omitempty"`     // sandboxes whose namespace had vanished (e.g. after a reboot)
	Addresses []string `json:"addresses,omitempty"` // allocations without a sandbox, freed
	Pins      []string `json:"pins,omitempty"`      // namespace pins without a sandbox, removed
	Links     []string `json:"links,omitempty"`     // host interfaces without an endpoint, deleted
	Restored  []string `json:"restored,omitempty"`  // networks whose plumbing was re-created
	Endpoints []string `json:"endpoints,omitempty"` // endpoints (SANDBOX/NETWORK) whose plumbing was re-created or re-connected
	Bridges   []string `json:"bridges,omitempty"`   // network devices (bridges, shims) marked as netmgr's that no network names, removed
	Unowned   []string `json:"unowned,omitempty"`   // such devices left in place because they are in use
	Locks     []string `json:"locks,omitempty"`     // lock files of objects that no longer exist, removed
	Ports     []string `json:"ports,omitempty"`     // published ports: keys and rules without a sandbox removed, missing rules re-added
	Errors    []string `json:"errors,omitempty"`
}

// recoverIntents finishes or undoes operations that a crashed process left half done: it is cheap
// (one List of the intents, normally empty) and runs in New.
func (m *Manager) recoverIntents(ctx context.Context) error {
	var rep Report
	if err := m.repairIntents(ctx, &rep); err != nil {
		return unreadable{err}
	}
	if len(rep.Errors) > 0 {
		return errors.New(strings.Join(rep.Errors, "; "))
	}
	return nil
}

// errUnreadable marks the error of a state file that could not even be listed (unreadable{err}
// unwraps to the store's own error, which names the file).
var errUnreadable = errors.New("state unreadable")

type unreadable struct{ err error }

func (u unreadable) Error() string        { return u.err.Error() }
func (u unreadable) Unwrap() error        { return u.err }
func (u unreadable) Is(target error) bool { return target == errUnreadable }

// repairIntents repairs every interrupted operation it can lock; a store it cannot list is returned
// as an error, per-object failures go to rep.
func (m *Manager) repairIntents(ctx context.Context, rep *Report) error {
	sbi, err := intent.List(ctx, m.rt, intent.SandboxPrefix)
	if err != nil {
		return err
	}
	for _, e := range sbi {
		name := e.Name
		l, err := m.lockForRepair("sandbox-"+name, e.Intent, func() time.Time {
			rec, _, err := m.readSandbox(ctx, name)
			if err != nil {
				return time.Time{}
			}
			return rec.Created
		})
		if err != nil {
			continue // a live process is working on it, or its owner finished (see lockForRepair)
		}
		// The intent was listed before the lock was ours: its owner may have finished since, and
		// then the sandbox is whole and must be left alone. Only an intent still there now, under
		// the lock, is one whose owner died.
		in, _, err := intent.Get(ctx, m.rt, e.KV.Key)
		if err != nil {
			l.Unlock(!m.sandboxKnown(ctx, name))
			continue
		}
		gone := false
		if in.IsEndpoint() {
			m.log.Warn("repair: interrupted attach or detach undone", "sandbox", name, "network", in.Network)
			err = m.dropEndpoint(ctx, name, in.Network)
		} else {
			gone, err = m.repairSandbox(ctx, name, in.Kind)
		}
		l.Unlock(err == nil && gone)
		if err != nil {
			rep.Errors = append(rep.Errors, fmt.Sprintf("sandbox %s: %v", name, err))
		} else {
			rep.Sandboxes = append(rep.Sandboxes, name)
		}
	}
	ni, err := intent.List(ctx, m.st, intent.NetworkPrefix)
	if err != nil && m.shared {
		// The node's own state was read (above); the cluster's store was not: a node goes on working
		// from its own state while the cluster store is unreachable, and repairs its network
		// operations when it answers again.
		rep.Errors = append(rep.Errors, fmt.Sprintf("network intents not repaired (cluster store): %v", err))
		return nil
	}
	if err != nil {
		return err
	}
	// Another host's operations, on a shared store, are that host's to repair.
	for _, e := range intent.OfNode(ni, m.node) {
		name := e.Name
		l, err := m.lockForRepair("network-"+name, e.Intent, func() time.Time {
			rec, err := m.readNetworkRecord(ctx, name)
			if err != nil {
				return time.Time{}
			}
			return rec.Created
		})
		if err != nil {
			continue
		}
		in, _, err := intent.Get(ctx, m.st, e.KV.Key)
		if err != nil { // see above: finished meanwhile
			l.Unlock(!m.networkKnown(ctx, name))
			continue
		}
		gone, err := m.repairNetwork(ctx, name, in.Kind)
		l.Unlock(err == nil && gone)
		if err != nil {
			rep.Errors = append(rep.Errors, fmt.Sprintf("network %s: %v", name, err))
		} else {
			rep.Networks = append(rep.Networks, name)
		}
	}
	return nil
}

// repairSandbox rolls an interrupted create back, or finishes an interrupted delete: both end with the
// sandbox gone, which is what its owner last asked for or never got confirmed. A sandbox in use is
// kept instead (see sandboxUsers): its create is finished, its delete, which would have been refused,
// is forgotten. gone reports whether the sandbox is gone.
func (m *Manager) repairSandbox(ctx context.Context, name, kind string) (gone bool, err error) {
	kv, err := m.rt.Get(ctx, keySandboxes+name)
	if errors.Is(err, store.ErrNotFound) {
		m.log.Warn("repair: intent of a sandbox that does not exist cleared", "sandbox", name, "intent", kind)
		return true, intent.Clear(ctx, m.rt, intent.SandboxKey(name))
	}
	if err != nil {
		return false, err
	}
	var rec sandboxRecord
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return false, err
	}
	users, err := m.sandboxUsers(ctx, &rec, kind == intent.Create)
	if err != nil {
		return false, err
	}
	if len(users) > 0 {
		if kind == intent.Create {
			return false, m.finishSandboxCreate(ctx, &rec, users)
		}
		m.log.Warn("repair: interrupted sandbox delete dropped: the sandbox is in use and is kept", "sandbox", name, "users", users)
		return false, intent.Clear(ctx, m.rt, intent.SandboxKey(name))
	}
	if err := m.teardownSandbox(ctx, &rec); err != nil {
		return false, err
	}
	if kind == intent.Create {
		m.log.Warn("repair: interrupted sandbox create undone", "sandbox", name)
	} else {
		m.log.Warn("repair: interrupted sandbox delete finished", "sandbox", name)
	}
	return true, nil
}

// repairNetwork undoes an interrupted create or finishes an interrupted delete, unless the network is
// in use (see networkUsers): then the create is finished, and the delete, which would have been
// refused, is forgotten with the network's plumbing made sure of. gone reports whether the network is
// gone.
func (m *Manager) repairNetwork(ctx context.Context, name, kind string) (gone bool, err error) {
	kv, err := m.st.Get(ctx, keyNetworks+name)
	if errors.Is(err, store.ErrNotFound) {
		m.log.Warn("repair: intent of a network that does not exist cleared", "network", name, "intent", kind)
		return true, errors.Join(intent.Clear(ctx, m.st, intent.NetworkKey(name)), m.syncFirewall(ctx))
	}
	if err != nil {
		return false, err
	}
	var rec networkRecord
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return false, err
	}
	if kind == intent.Create {
		err := m.undoNetwork(ctx, &rec)
		var inUse *usersError
		if errors.As(err, &inUse) {
			return false, m.finishNetworkCreate(ctx, &rec, inUse.users)
		}
		if err == nil {
			m.log.Warn("repair: interrupted network create undone", "network", name)
		}
		return err == nil, err
	}
	users, err := m.networkUsers(ctx, &rec)
	if err != nil {
		return false, err
	}
	if len(users) > 0 {
		return false, m.finishNetworkCreate(ctx, &rec, users)
	}
	if err := m.finishNetworkDelete(ctx, &rec); err != nil {
		return false, err
	}
	m.log.Warn("repair: interrupted network delete finished", "network", name)
	return true, nil
}

// namespaceGone reports whether the namespace a sandbox uses has vanished (after a reboot, or because a
// runtime removed an external one, or the target of a link sandbox is gone). live holds the sandboxes
// not judged gone so far, so a link sandbox whose target was judged gone is gone too.
func (m *Manager) namespaceGone(s *sandboxRecord, live map[string]*sandboxRecord) bool {
	if s.Mode == ModeLink {
		t, ok := live[s.Join]
		return !ok || (t.hasInterfaces() && !sandbox.IsPinned(t.NetNS))
	}
	return s.hasInterfaces() && !sandbox.IsPinned(s.NetNS)
}

// sandboxIntent reports whether an operation's intent is recorded for the sandbox (or cannot tell).
func (m *Manager) sandboxIntent(ctx context.Context, name string) bool {
	return intent.Recorded(ctx, m.rt, intent.SandboxKey(name))
}

// Recover reconciles the records with the kernel: it repairs interrupted operations, re-creates network
// plumbing that vanished (after a reboot, or deleted by hand) and reconnects the endpoints of live
// sandboxes to it, drops sandboxes whose namespace vanished, frees addresses that no sandbox holds, and
// removes namespace pins, host interfaces, bridges and lock files that no record names. It is what
// `podctl gc` runs, and safe to run while other processes work: objects they hold locked are skipped,
// and kernel objects are listed before records, so anything created meanwhile has its record already.
// Every repair is logged at Warn level.
func (m *Manager) Recover(ctx context.Context) (*Report, error) {
	rep := &Report{}
	if err := m.repairIntents(ctx, rep); err != nil {
		return rep, err
	}

	// Kernel inventory first (see above), then records; lock files likewise.
	pins, _ := filepath.Glob(filepath.Join(m.runDir, "netns", "*"))
	lockFiles := m.lockFiles()
	// A dump interrupted by a concurrent change is retried, never taken as complete: a link missing
	// from a partial list would look like a vanished host end to be rebuilt.
	links, err := drivers.LinkList(m.hh)
	if err != nil {
		return rep, fmt.Errorf("list host links: %w", err)
	}
	// Allocations before sandbox records too: an allocation made after this list is not judged, and
	// one made before has its record by the time the records are read (or is gone, failing the
	// compare on its revision below). Read the other way round, a sandbox created in between looked
	// like it held nothing, and its fresh address was freed while in use.
	ipKVs, _, err := m.rt.List(ctx, keyIPAM)
	if err != nil {
		return rep, err
	}
	nets, err := m.networkRecords(ctx)
	if err != nil {
		return rep, err
	}
	netIntents, err := intent.List(ctx, m.st, intent.NetworkPrefix)
	if err != nil {
		return rep, err
	}
	sbs, err := m.sandboxRecords(ctx)
	if err != nil {
		return rep, err
	}
	intents, err := intent.List(ctx, m.rt, intent.SandboxPrefix)
	if err != nil {
		return rep, err
	}
	busy := intent.Names(intents)
	known := map[string]map[string]bool{"network": {}, "sandbox": {}}
	for _, n := range nets {
		known["network"][n.Name] = true
	}
	for name := range intent.Names(netIntents) {
		known["network"][name] = true
	}
	for _, s := range sbs {
		known["sandbox"][s.Name] = true
	}
	for name := range busy {
		known["sandbox"][name] = true
	}

	restored := m.recoverNetworks(ctx, rep, nets)
	if err := m.syncFirewall(ctx); err != nil {
		rep.Errors = append(rep.Errors, err.Error())
	}

	live := m.dropStale(ctx, rep, sbs, busy)
	m.recoverEndpoints(ctx, rep, sbs, live, busy, links, restored)

	// Addresses no sandbox holds.
	held := map[string]bool{}
	hostIfs := map[string]bool{}
	for _, s := range sbs {
		for _, e := range s.Endpoints {
			for _, a := range e.Addrs {
				held[ipamKey(e.Network, a.Addr())] = true
			}
			if e.HostName != "" {
				hostIfs[e.HostName] = true
			}
		}
	}
	for _, kv := range ipKVs {
		if held[kv.Key] || busy[string(kv.Value)] {
			continue
		}
		// Compare on the revision read: a create that re-took the address since is left alone.
		if err := m.rt.Txn(ctx, []store.Cmp{{Key: kv.Key, Rev: kv.Rev}}, []store.Op{store.Del(kv.Key)}); err == nil {
			m.log.Warn("gc: address no sandbox holds freed", "address", strings.TrimPrefix(kv.Key, keyIPAM), "holder", string(kv.Value))
			rep.Addresses = append(rep.Addresses, strings.TrimPrefix(kv.Key, keyIPAM))
		}
	}

	nPorts := len(rep.Ports)
	m.recoverPorts(ctx, rep)
	for _, p := range rep.Ports[nPorts:] {
		m.log.Warn("gc: published port repaired", "port", p)
	}

	// Pins without a sandbox.
	pinned := map[string]bool{}
	for _, s := range sbs {
		if s.owned() {
			pinned[s.NetNS] = true
		}
	}
	for _, p := range pins {
		if pinned[p] {
			continue
		}
		if err := sandbox.Remove(p); err != nil {
			rep.Errors = append(rep.Errors, err.Error())
			continue
		}
		m.log.Warn("gc: namespace pin no sandbox names removed", "netns", p)
		rep.Pins = append(rep.Pins, p)
	}

	// Host-side leftovers, by the drivers that made them.
	m.collectLeftovers(ctx, rep, links, nets, hostIfs)
	m.gcLocks(ctx, rep, lockFiles, known)
	if len(rep.Errors) > 0 {
		return rep, fmt.Errorf("recover: %d problem(s): %s", len(rep.Errors), strings.Join(rep.Errors, "; "))
	}
	return rep, nil
}

// recoverNetworks re-creates the plumbing of every recorded network where it vanished, and returns
// the networks whose plumbing was re-created. Each network is held by its shared lock meanwhile, taken
// without waiting, so that a delete in flight (which holds the exclusive lock) is never undone by
// re-creating its bridge; a network with an intent is left to repairIntents.
func (m *Manager) recoverNetworks(ctx context.Context, rep *Report, nets []*networkRecord) map[string]bool {
	restored := map[string]bool{}
	for _, n := range nets {
		if m.foreign(n) {
			continue // another node's local network: its plumbing is on that host
		}
		drv, err := m.driver(n.Driver)
		if err != nil {
			rep.Errors = append(rep.Errors, fmt.Sprintf("network %s: %v", n.Name, err))
			continue
		}
		if spansNodes(drv) {
			continue // its node plumbing is the agent's: JoinNetwork again re-creates it
		}
		l, err := m.tryLockShared("network-" + n.Name)
		if err != nil {
			continue // a create or delete is under way
		}
		cur, err := m.readNetworkRecord(ctx, n.Name)
		if err != nil || cur.ID != n.ID || m.networkKnownIntent(ctx, n.Name) {
			l.Unlock(false)
			continue
		}
		ok, err := m.restoreNetwork(ctx, drv, cur)
		l.Unlock(false)
		if err != nil {
			rep.Errors = append(rep.Errors, err.Error())
			continue
		}
		if ok {
			m.log.Warn("gc: network plumbing re-created", "network", n.Name, "driver", n.Driver)
			rep.Restored = append(rep.Restored, n.Name)
			restored[n.Name] = true
		}
	}
	return restored
}

// networkKnownIntent reports whether the network has an intent recorded (or cannot tell).
func (m *Manager) networkKnownIntent(ctx context.Context, name string) bool {
	return intent.Recorded(ctx, m.st, intent.NetworkKey(name))
}

// dropStale tears down the sandboxes whose namespace vanished, and returns the others by name. A link
// sandbox whose target is judged gone is gone too, and is torn down before its target, so that one
// pass leaves no joiner of a vanished namespace behind.
func (m *Manager) dropStale(ctx context.Context, rep *Report, sbs []*sandboxRecord, busy map[string]bool) map[string]*sandboxRecord {
	live := map[string]*sandboxRecord{}
	for _, s := range sbs {
		live[s.Name] = s
	}
	var stale []*sandboxRecord
	for changed := true; changed; {
		changed = false
		for _, s := range sbs {
			if _, ok := live[s.Name]; !ok || busy[s.Name] || !m.namespaceGone(s, live) {
				continue
			}
			delete(live, s.Name)
			stale = append(stale, s)
			changed = true
		}
	}
	// Joiners first: a target goes only once none is left.
	var ordered []*sandboxRecord
	for _, s := range stale {
		if s.Mode == ModeLink {
			ordered = append(ordered, s)
		}
	}
	for _, s := range stale {
		if s.Mode != ModeLink {
			ordered = append(ordered, s)
		}
	}
	for _, s := range ordered {
		l, err := m.tryLock("sandbox-" + s.Name)
		if err != nil {
			live[s.Name] = s
			continue
		}
		// Read again under the lock: the sandbox may have been deleted and made anew since the list
		// (CNI names repeat), and only the record read now may be torn down.
		cur, _, err := m.readSandbox(ctx, s.Name)
		if err != nil || cur.ID != s.ID || m.sandboxIntent(ctx, s.Name) || !m.namespaceGone(cur, live) {
			l.Unlock(false)
			if err == nil && cur.ID == s.ID {
				live[s.Name] = cur
			}
			continue
		}
		if joiners, _, err := m.rt.List(ctx, keyJoins+s.Name+"/"); err != nil || len(joiners) > 0 {
			l.Unlock(false) // a joiner is busy or failed to go: next time
			continue
		}
		err = m.teardownSandbox(ctx, cur)
		l.Unlock(err == nil)
		if err != nil {
			rep.Errors = append(rep.Errors, fmt.Sprintf("drop stale sandbox %s: %v", s.Name, err))
			continue
		}
		m.log.Warn("gc: sandbox whose namespace vanished removed", "sandbox", s.Name, "netns", s.NetNS)
		rep.Stale = append(rep.Stale, s.Name)
	}
	return live
}

// recoverEndpoints re-plumbs the endpoints of live sandboxes whose kernel side vanished or came loose:
// every endpoint of a network whose plumbing was re-created (a new bridge has no ports), and any whose
// host interface is missing, down or on no bridge. It works through the drivers'
// drivers.EndpointRestorer, holding the sandbox's lock (taken without waiting), so that a delete in
// flight, which sets host ends down, is never undone.
func (m *Manager) recoverEndpoints(ctx context.Context, rep *Report, sbs []*sandboxRecord, live map[string]*sandboxRecord,
	busy map[string]bool, links []netlink.Link, restored map[string]bool) {
	byName := map[string]netlink.Link{}
	for _, l := range links {
		byName[l.Attrs().Name] = l
	}
	suspect := func(e *endpointRecord) bool {
		if restored[e.Network] {
			return true
		}
		if e.HostName == "" {
			return false
		}
		l, ok := byName[e.HostName]
		return !ok || l.Attrs().Flags&net.FlagUp == 0 || l.Attrs().MasterIndex == 0
	}
	for _, s := range sbs {
		if live[s.Name] == nil || busy[s.Name] || !s.hasInterfaces() {
			continue
		}
		need := false
		for i := range s.Endpoints {
			need = need || suspect(&s.Endpoints[i])
		}
		if !need {
			continue
		}
		l, err := m.tryLock("sandbox-" + s.Name)
		if err != nil {
			continue
		}
		m.restoreSandboxEndpoints(ctx, rep, s)
		l.Unlock(false)
	}
}

// restoreSandboxEndpoints is recoverEndpoints for one sandbox, whose lock the caller holds.
func (m *Manager) restoreSandboxEndpoints(ctx context.Context, rep *Report, s *sandboxRecord) {
	cur, kv, err := m.readSandbox(ctx, s.Name)
	if err != nil || cur.ID != s.ID || m.sandboxIntent(ctx, s.Name) {
		return
	}
	ns, err := sandbox.Open(cur.NetNS)
	if err != nil {
		return // vanished since: the next gc drops it
	}
	defer ns.Close()
	changed := false
	for i := range cur.Endpoints {
		e := &cur.Endpoints[i]
		mac := e.MAC
		ok, err := m.restoreEndpoint(ctx, cur, i, ns)
		if err != nil {
			rep.Errors = append(rep.Errors, fmt.Sprintf("restore endpoint of sandbox %s on %s: %v", s.Name, e.Network, err))
			continue
		}
		changed = changed || e.MAC != mac
		if ok {
			m.log.Warn("gc: endpoint plumbing restored", "sandbox", s.Name, "network", e.Network, "ifname", e.IfName, "host_ifname", e.HostName)
			rep.Endpoints = append(rep.Endpoints, s.Name+"/"+e.Network)
		}
	}
	if changed {
		if err := m.rt.Txn(ctx, []store.Cmp{{Key: kv.Key, Rev: kv.Rev}}, []store.Op{store.Put(kv.Key, mustJSON(cur))}); err != nil {
			rep.Errors = append(rep.Errors, fmt.Sprintf("record restored endpoints of sandbox %s: %v", s.Name, err))
		}
	}
}
