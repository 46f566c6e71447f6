package netmgr

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netmgr/netmgr/drivers"
	"github.com/netmgr/netmgr/drivers/bridge"
	"github.com/netmgr/netmgr/netmgr/store"
	"github.com/netmgr/netmgr/sandbox"
)

// Report says what Recover repaired.
type Report struct {
	Networks  []string `json:"networks,omitempty"`  // networks whose interrupted create or delete was finished
	Sandboxes []string `json:"sandboxes,omitempty"` // sandboxes whose interrupted create or delete was finished
	Stale     []string `json:"stale,omitempty"`     // sandboxes whose namespace had vanished (e.g. after a reboot)
	Addresses []string `json:"addresses,omitempty"` // allocations without a sandbox, freed
	Pins      []string `json:"pins,omitempty"`      // namespace pins without a sandbox, removed
	Links     []string `json:"links,omitempty"`     // host interfaces without an endpoint, deleted
	Restored  []string `json:"restored,omitempty"`  // networks whose plumbing was re-created
	Ports     []string `json:"ports,omitempty"`     // published ports: keys and rules without a sandbox removed, missing rules re-added
	Errors    []string `json:"errors,omitempty"`
}

// recoverIntents finishes or undoes operations that a crashed process left half done: it is cheap
// (one List of the intents, normally empty) and runs in New.
func (m *Manager) recoverIntents(ctx context.Context) error {
	var rep Report
	m.repairIntents(ctx, &rep)
	if len(rep.Errors) > 0 {
		return errors.New(strings.Join(rep.Errors, "; "))
	}
	return nil
}

func (m *Manager) repairIntents(ctx context.Context, rep *Report) {
	sbi, _, err := m.rt.List(ctx, keyIntentSB)
	if err != nil {
		rep.Errors = append(rep.Errors, err.Error())
		return
	}
	for _, kv := range sbi {
		name := strings.TrimPrefix(kv.Key, keyIntentSB)
		l, err := m.tryLockExisting("sandbox-" + name)
		if err != nil {
			continue // a live process is working on it, or has just finished
		}
		// The intent was listed before the lock was ours: its owner may have finished since, and
		// then the sandbox is whole and must be left alone. Only an intent still there now, under
		// the lock, is one whose owner died.
		if kv, err = m.rt.Get(ctx, kv.Key); err != nil {
			l.unlock(false)
			continue
		}
		if network, ok := isEndpointIntent(string(kv.Value)); ok {
			err = m.dropEndpoint(ctx, name, network)
			l.unlock(false)
		} else {
			err = m.repairSandbox(ctx, name)
			l.unlock(err == nil)
		}
		if err != nil {
			rep.Errors = append(rep.Errors, fmt.Sprintf("sandbox %s: %v", name, err))
		} else {
			rep.Sandboxes = append(rep.Sandboxes, name)
		}
	}
	ni, _, err := m.st.List(ctx, keyIntentNet)
	if err != nil {
		rep.Errors = append(rep.Errors, err.Error())
		return
	}
	for _, kv := range ni {
		name := strings.TrimPrefix(kv.Key, keyIntentNet)
		l, err := m.tryLockExisting("network-" + name)
		if err != nil {
			continue
		}
		if kv, err = m.st.Get(ctx, kv.Key); err != nil { // see above: finished meanwhile
			l.unlock(false)
			continue
		}
		err = m.repairNetwork(ctx, name, string(kv.Value))
		l.unlock(false)
		if err != nil {
			rep.Errors = append(rep.Errors, fmt.Sprintf("network %s: %v", name, err))
		} else {
			rep.Networks = append(rep.Networks, name)
		}
	}
}

// repairSandbox rolls an interrupted create back, or finishes an interrupted delete: both end with the
// sandbox gone, which is what its owner last asked for or never got confirmed.
func (m *Manager) repairSandbox(ctx context.Context, name string) error {
	kv, err := m.rt.Get(ctx, keySandboxes+name)
	if errors.Is(err, store.ErrNotFound) {
		return m.rt.Txn(ctx, nil, []store.Op{store.Del(keyIntentSB + name)})
	}
	if err != nil {
		return err
	}
	var rec sandboxRecord
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return err
	}
	m.log.Info("repairing interrupted sandbox operation", "sandbox", name)
	return m.teardownSandbox(ctx, &rec)
}

func (m *Manager) repairNetwork(ctx context.Context, name, intent string) error {
	kv, err := m.st.Get(ctx, keyNetworks+name)
	if errors.Is(err, store.ErrNotFound) {
		return errors.Join(m.st.Txn(ctx, nil, []store.Op{store.Del(keyIntentNet + name)}), m.syncFirewall(ctx))
	}
	if err != nil {
		return err
	}
	var rec networkRecord
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return err
	}
	m.log.Info("repairing interrupted network operation", "network", name, "intent", intent)
	if intent == intentCreate {
		return m.undoNetwork(ctx, &rec)
	}
	users, _, err := m.rt.List(ctx, keyIPAM+name+"/")
	if err != nil {
		return err
	}
	if len(users) > 0 { // the delete would have been refused; keep the network
		return m.st.Txn(ctx, nil, []store.Op{store.Del(keyIntentNet + name)})
	}
	return m.finishNetworkDelete(ctx, &rec)
}

// namespaceGone reports whether the namespace a sandbox uses has vanished (after a reboot, or because a
// runtime removed an external one, or the target of a link sandbox is gone).
func (m *Manager) namespaceGone(s *sandboxRecord, live map[string]*sandboxRecord) bool {
	if s.Mode == ModeLink {
		t, ok := live[s.Join]
		return !ok || (t.owned() && !sandbox.IsPinned(t.NetNS))
	}
	return s.hasInterfaces() && !sandbox.IsPinned(s.NetNS)
}

// sandboxIntent reports whether an operation's intent is recorded for the sandbox (or cannot tell).
func (m *Manager) sandboxIntent(ctx context.Context, name string) bool {
	_, err := m.rt.Get(ctx, keyIntentSB+name)
	return !errors.Is(err, store.ErrNotFound)
}

// Recover reconciles the records with the kernel: it repairs interrupted operations, re-creates network
// plumbing that vanished (after a reboot), drops sandboxes whose namespace vanished, frees addresses that
// no sandbox holds, and removes namespace pins and host interfaces that no record names. It is what
// `podctl gc` runs, and safe to run while other processes work: objects they hold locked are skipped,
// and kernel objects are listed before records, so anything created meanwhile has its record already.
func (m *Manager) Recover(ctx context.Context) (*Report, error) {
	rep := &Report{}
	m.repairIntents(ctx, rep)

	// Kernel inventory first (see above), then records.
	pins, _ := filepath.Glob(filepath.Join(m.runDir, "netns", "*"))
	links, err := m.hh.LinkList()
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
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
	sbs, err := m.sandboxRecords(ctx)
	if err != nil {
		return rep, err
	}
	intents, _, err := m.rt.List(ctx, keyIntentSB)
	if err != nil {
		return rep, err
	}
	busy := map[string]bool{}
	for _, kv := range intents {
		busy[strings.TrimPrefix(kv.Key, keyIntentSB)] = true
	}

	// Networks: re-create missing plumbing (idempotent) and rules.
	var byDriver = map[string][]*drivers.Network{}
	for _, n := range nets {
		byDriver[n.Driver] = append(byDriver[n.Driver], n.driverNetwork())
	}
	for name, dn := range byDriver {
		drv, err := m.driver(name)
		if err != nil {
			rep.Errors = append(rep.Errors, err.Error())
			continue
		}
		if r, ok := drv.(drivers.Restorer); ok {
			if err := r.Restore(ctx, dn); err != nil {
				rep.Errors = append(rep.Errors, err.Error())
			}
			continue
		}
		for _, n := range dn {
			if err := drv.CreateNetwork(ctx, n); err != nil {
				rep.Errors = append(rep.Errors, fmt.Sprintf("restore network %s: %v", n.Name, err))
			}
		}
	}
	if err := m.syncFirewall(ctx); err != nil {
		rep.Errors = append(rep.Errors, err.Error())
	}

	// Sandboxes whose namespace is gone.
	live := map[string]*sandboxRecord{}
	for _, s := range sbs {
		live[s.Name] = s
	}
	for _, s := range sbs {
		if busy[s.Name] {
			continue
		}
		if !m.namespaceGone(s, live) {
			continue
		}
		l, err := m.tryLock("sandbox-" + s.Name)
		if err != nil {
			continue
		}
		// Read again under the lock: the sandbox may have been deleted and made anew since the list
		// (CNI names repeat), and only the record read now may be torn down.
		cur, _, err := m.readSandbox(ctx, s.Name)
		if err != nil || cur.ID != s.ID || m.sandboxIntent(ctx, s.Name) || !m.namespaceGone(cur, live) {
			l.unlock(false)
			continue
		}
		err = m.teardownSandbox(ctx, cur)
		l.unlock(err == nil)
		if err != nil {
			rep.Errors = append(rep.Errors, fmt.Sprintf("drop stale sandbox %s: %v", s.Name, err))
			continue
		}
		rep.Stale = append(rep.Stale, s.Name)
		delete(live, s.Name)
	}

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
			rep.Addresses = append(rep.Addresses, strings.TrimPrefix(kv.Key, keyIPAM))
		}
	}

	m.recoverPorts(ctx, rep)

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
		rep.Pins = append(rep.Pins, p)
	}

	// Host interfaces of endpoints that no longer exist.
	for _, l := range links {
		name := l.Attrs().Name
		if !strings.HasPrefix(name, bridge.HostIfPrefix) || l.Type() != "veth" || hostIfs[name] {
			continue
		}
		// The kernel may be destroying it already, with its namespace: ENODEV then is success.
		if err := m.hh.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) && !errors.Is(err, unix.ENOENT) {
			rep.Errors = append(rep.Errors, fmt.Sprintf("delete %s: %v", name, err))
			continue
		}
		rep.Links = append(rep.Links, name)
	}
	if len(rep.Errors) > 0 {
		return rep, fmt.Errorf("recover: %d problem(s): %s", len(rep.Errors), strings.Join(rep.Errors, "; "))
	}
	return rep, nil
}
