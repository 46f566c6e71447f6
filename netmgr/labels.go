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
	return opErr("label", "sandbox", name, m.setLabels(ctx, name, labels))
}

func (m *Manager) setLabels(ctx context.Context, name string, labels map[string]string) error {
	if err := checkName("sandbox", name); err != nil {
		return err
	}
	for k := range labels {
		if k == "" || strings.ContainsAny(k, " \t\r\n=,") {
			return fmt.Errorf("%w: label key %q must be non-empty, without whitespace, '=' or ','", ErrInvalid, k)
		}
	}
	// The sandbox lock orders this with Attach and Detach, which rewrite the record under it without
	// a compare; the compare below orders it with everything else that writes the record.
	l, err := m.lock(ctx, "sandbox-"+name)
	if err != nil {
		return err
	}
	var missing bool // no such sandbox: its lock file goes, unless a crashed operation needs it
	defer func() { l.Unlock(missing && !m.sandboxKnown(context.WithoutCancel(ctx), name)) }()
	rec, kv, err := m.readSandbox(ctx, name)
	if err != nil {
		missing = errors.Is(err, ErrNotFound)
		return err
	}
	if maps.Equal(rec.Labels, labels) {
		return nil
	}
	if m.sandboxIntent(ctx, name) {
		// We hold the sandbox lock, so no live process owns it: a crashed one left it.
		return fmt.Errorf("%w: an interrupted operation on the sandbox awaits repair (podctl gc)", ErrBusy)
	}
	rec.Labels = nil
	if len(labels) > 0 {
		rec.Labels = maps.Clone(labels)
	}
	err = m.rt.Txn(ctx, []store.Cmp{{Key: kv.Key, Rev: kv.Rev}, store.Absent(intent.SandboxKey(name))},
		[]store.Op{store.Put(kv.Key, mustJSON(rec))})
	if errors.Is(err, store.ErrConflict) {
		return fmt.Errorf("%w: sandbox changed concurrently; try again", ErrBusy)
	}
	return err
}
