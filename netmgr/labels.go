package netmgr

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"

	"github.com/netmgr/netmgr/internal/intent"
	"github.com/netmgr/netmgr/netmgr/store"
)

// SetLabels replaces a sandbox's labels with labels (nil or empty: none), as CreateSandbox's
// SandboxSpec.Labels would have set them; everything else of the sandbox stays. WatchSandboxes
// reports the change, so that what selects sandboxes by label (the service endpoints) follows it.
// Setting the labels a sandbox has already changes nothing.
//
// A label key must be non-empty and hold no whitespace, '=' or ',' (a selector K=V[,K=V] could not
// name it): ErrInvalid, and nothing changes. A sandbox that does not exist is ErrNotFound; one with an
// operation in flight, or an interrupted one awaiting repair, is ErrBusy.
func (m *Manager) SetLabels(ctx context.Context, name string, labels map[string]string) error {
	if err := checkLabelKeys(labels); err != nil {
		return opErr("label", "sandbox", name, err)
	}
	_, err := m.setLabels(ctx, name, func(map[string]string) map[string]string { return labels })
	return opErr("label", "sandbox", name, err)
}

// SetSandboxLabels changes some of a sandbox's labels: each key of set gets its value, and a key whose
// value is empty is removed; the others stay. It returns the sandbox as it is then. The pod keeper
// records a pod's readiness this way (pod.LabelReady); errors are SetLabels'.
func (m *Manager) SetSandboxLabels(ctx context.Context, name string, set map[string]string) (*Sandbox, error) {
	keys := maps.Clone(set)
	maps.DeleteFunc(keys, func(_, v string) bool { return v == "" })
	if err := checkLabelKeys(keys); err != nil {
		return nil, opErr("label", "sandbox", name, err)
	}
	rec, err := m.setLabels(ctx, name, func(old map[string]string) map[string]string {
		out := maps.Clone(old)
		if out == nil {
			out = map[string]string{}
		}
		for k, v := range set {
			if v == "" {
				delete(out, k)
			} else {
				out[k] = v
			}
		}
		return out
	})
	if err != nil {
		return nil, opErr("label", "sandbox", name, err)
	}
	return rec.public(), nil
}

func checkLabelKeys(labels map[string]string) error {
	for k := range labels {
		if k == "" || strings.ContainsAny(k, " \t\r\n=,") {
			return fmt.Errorf("%w: label key %q must be non-empty, without whitespace, '=' or ','", ErrInvalid, k)
		}
	}
	return nil
}

// setLabels replaces the sandbox's labels by what change makes of them, under the sandbox lock.
func (m *Manager) setLabels(ctx context.Context, name string, change func(map[string]string) map[string]string) (*sandboxRecord, error) {
	if err := checkName("sandbox", name); err != nil {
		return nil, err
	}
	// The sandbox lock orders this with Attach and Detach, which rewrite the record under it without
	// a compare; the compare below orders it with everything else that writes the record.
	l, err := m.lock(ctx, "sandbox-"+name)
	if err != nil {
		return nil, err
	}
	var missing bool // no such sandbox: its lock file goes, unless a crashed operation needs it
	defer func() { l.Unlock(missing && !m.sandboxKnown(context.WithoutCancel(ctx), name)) }()
	rec, kv, err := m.readSandbox(ctx, name)
	if err != nil {
		missing = errors.Is(err, ErrNotFound)
		return nil, err
	}
	labels := change(rec.Labels)
	if maps.Equal(rec.Labels, labels) {
		return rec, nil
	}
	if m.sandboxIntent(ctx, name) {
		// We hold the sandbox lock, so no live process owns it: a crashed one left it.
		return nil, fmt.Errorf("%w: an interrupted operation on the sandbox awaits repair (podctl gc)", ErrBusy)
	}
	rec.Labels = nil
	if len(labels) > 0 {
		rec.Labels = maps.Clone(labels)
	}
	err = m.rt.Txn(ctx, []store.Cmp{{Key: kv.Key, Rev: kv.Rev}, store.Absent(intent.SandboxKey(name))},
		[]store.Op{store.Put(kv.Key, mustJSON(rec))})
	if errors.Is(err, store.ErrConflict) {
		return nil, fmt.Errorf("%w: sandbox changed concurrently; try again", ErrBusy)
	}
	if err != nil {
		return nil, err
	}
	return rec, nil
}
