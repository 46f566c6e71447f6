package netmgr

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/netmgr/netmgr/drivers"
	"github.com/netmgr/netmgr/internal/intent"
	"github.com/netmgr/netmgr/netmgr/store"
	"github.com/netmgr/netmgr/sandbox"
)

// Repair never undoes an object that something uses. An intent is normally what a crashed process
// left, but bbolt, after a torn write of its newest meta page, falls back to the previous one, which
// brings back an intent its owner had cleared: the object is then whole and may be in use. Users are
// what shows that: an interrupted create that has them is finished instead of undone.

// networkUsers names what uses a network: sandboxes that hold its addresses or name it in their
// records, and kernel objects its driver reports (ports on its bridge). The caller holds the network's
// exclusive lock, so no attach can add one meanwhile.
func (m *Manager) networkUsers(ctx context.Context, rec *networkRecord) ([]string, error) {
	seen := map[string]bool{}
	ipKVs, _, err := m.rt.List(ctx, ipamPrefix(rec.Name))
	if err != nil {
		return nil, err
	}
	for _, kv := range ipKVs {
		seen["sandbox "+string(kv.Value)] = true
	}
	sbs, err := m.sandboxRecords(ctx)
	if err != nil {
		return nil, err
	}
	for _, s := range sbs {
		for _, e := range s.Endpoints {
			if e.Network == rec.Name {
				seen["sandbox "+s.Name] = true
			}
		}
	}
	if drv, err := m.driver(rec.Driver); err == nil {
		if ur, ok := drv.(drivers.UsageReporter); ok {
			ifs, err := ur.NetworkUsers(ctx, rec.driverNetwork())
			if err != nil {
				return nil, err
			}
			for _, i := range ifs {
				seen["interface "+i] = true
			}
		}
	}
	return sortedKeys(seen), nil
}

// sandboxUsers names what uses a sandbox: sandboxes that joined its namespace and, for a namespace
// netmgr made, processes in it other than its own pause process (a container started into it). The
// process scan reads every /proc/PID/ns/net, which is cheap enough for repair time only.
func (m *Manager) sandboxUsers(ctx context.Context, rec *sandboxRecord, withProcesses bool) ([]string, error) {
	var users []string
	joiners, _, err := m.rt.List(ctx, keyJoins+rec.Name+"/")
	if err != nil {
		return nil, err
	}
	for _, j := range joiners {
		users = append(users, "sandbox "+lastSegment(j.Key))
	}
	if !withProcesses || !rec.owned() {
		return users, nil
	}
	// Its own pause process, recorded or not yet (a create killed before it wrote the pid), is not
	// a user.
	var own []int
	if p := m.pauseOf(rec); p != nil {
		own = append(own, p.PID)
	} else if rec.WantPause {
		own = m.unrecordedPauses(rec)
	}
	for _, pid := range sandbox.ProcessesIn(rec.NetNS, "", own...) {
		users = append(users, "process "+strconv.Itoa(pid))
	}
	return users, nil
}

// pauseOf returns the sandbox's pause process if it runs: the recorded one, or the one in the pid
// file that startPause writes before the record knows it (a create interrupted after starting it).
func (m *Manager) pauseOf(rec *sandboxRecord) *pauseRecord {
	pr := rec.Pause
	if pr == nil {
		var f pauseRecord
		if b, err := os.ReadFile(m.pauseFile(rec.Name)); err == nil && json.Unmarshal(b, &f) == nil {
			pr = &f
		}
	}
	if pr == nil {
		return nil
	}
	if !pr.Alive() {
		return nil
	}
	return pr
}

// finishNetworkCreate completes a create whose network is in use: its plumbing and rules are made
// sure of, and the intent is cleared.
func (m *Manager) finishNetworkCreate(ctx context.Context, rec *networkRecord, users []string) error {
	m.log.Warn("repair: interrupted network operation finished, not undone: the network is in use",
		"network", rec.Name, "users", users)
	drv, err := m.driver(rec.Driver)
	if err != nil {
		return err
	}
	if _, err := m.restoreNetwork(ctx, drv, rec); err != nil {
		return err
	}
	if err := m.syncFirewall(ctx); err != nil {
		return err
	}
	rec.Creating = false
	return m.st.Txn(ctx, nil, []store.Op{store.Put(keyNetworks+rec.Name, mustJSON(rec)), store.Del(intent.NetworkKey(rec.Name))})
}

// restoreNetwork re-creates the network's plumbing where it is missing, and reports whether it was;
// for drivers that cannot tell (no drivers.NetworkRestorer) it runs CreateNetwork and reports false.
func (m *Manager) restoreNetwork(ctx context.Context, drv drivers.Driver, rec *networkRecord) (bool, error) {
	if r, ok := drv.(drivers.NetworkRestorer); ok {
		restored, err := r.RestoreNetwork(ctx, rec.driverNetwork())
		if err != nil {
			return false, fmt.Errorf("restore network %s: %w", rec.Name, err)
		}
		return restored, nil
	}
	if err := drv.CreateNetwork(ctx, rec.driverNetwork()); err != nil {
		return false, fmt.Errorf("restore network %s: %w", rec.Name, err)
	}
	return false, nil
}

// finishSandboxCreate completes a create whose sandbox is in use: the pause process that runs is
// recorded, every endpoint's plumbing is made sure of (re-created where missing), and the intent is
// cleared.
func (m *Manager) finishSandboxCreate(ctx context.Context, rec *sandboxRecord, users []string) error {
	m.log.Warn("repair: interrupted sandbox create finished, not undone: the sandbox is in use",
		"sandbox", rec.Name, "users", users)
	if rec.Pause == nil {
		rec.Pause = m.pauseOf(rec)
	}
	if rec.hasInterfaces() && len(rec.Endpoints) > 0 {
		ns, err := sandbox.Open(rec.NetNS)
		if err != nil {
			return fmt.Errorf("finish create: %w", err)
		}
		defer ns.Close()
		for i := range rec.Endpoints {
			if _, err := m.restoreEndpoint(ctx, rec, i, ns); err != nil {
				return fmt.Errorf("finish create: %w", err)
			}
		}
	}
	return m.rt.Txn(ctx, nil, []store.Op{store.Put(keySandboxes+rec.Name, mustJSON(rec)), store.Del(intent.SandboxKey(rec.Name))})
}

// restoreEndpoint brings rec.Endpoints[i] back to what the record says through its driver's
// EndpointRestorer (drivers without one are left alone), and copies the MAC the driver reports into
// the record.
func (m *Manager) restoreEndpoint(ctx context.Context, rec *sandboxRecord, i int, ns *sandbox.NetNS) (bool, error) {
	e := &rec.Endpoints[i]
	nrec, err := m.endpointNetwork(ctx, e.Network)
	if err != nil {
		return false, err
	}
	drv, err := m.driver(nrec.Driver)
	if err != nil {
		return false, err
	}
	r, ok := drv.(drivers.EndpointRestorer)
	if !ok {
		return false, nil
	}
	de := e.driverEndpoint(rec.Name)
	restored, err := r.RestoreEndpoint(ctx, nrec.driverNetwork(), de, ns)
	if err != nil {
		return false, err
	}
	if de.MAC != "" {
		e.MAC = de.MAC
	}
	return restored, nil
}

// usersError refuses to undo an object in use; it matches ErrInUse.
type usersError struct {
	what  string
	users []string
}

func (e *usersError) Error() string {
	return fmt.Sprintf("%s is in use (%s); not undone", e.what, strings.Join(e.users, ", "))
}

func (e *usersError) Is(target error) bool { return target == ErrInUse }
