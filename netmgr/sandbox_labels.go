package netmgr

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/netmgr/netmgr/internal/flock"
	"github.com/netmgr/netmgr/netmgr/store"
)

// SetSandboxLabels changes labels on a sandbox's record: each key of set gets its value, and a key
// whose value is empty is removed. It holds the sandbox's lock, so it orders with attach, detach and
// delete. The pod keeper records a pod's readiness this way (pod.LabelReady). A sandbox that does
// not exist is ErrNotFound.
func (m *Manager) SetSandboxLabels(ctx context.Context, name string, set map[string]string) (*Sandbox, error) {
	sb, err := m.setSandboxLabels(ctx, name, set)
	return sb, opErr("label", "sandbox", name, err)
}

func (m *Manager) setSandboxLabels(ctx context.Context, name string, set map[string]string) (*Sandbox, error) {
	if err := checkName("sandbox", name); err != nil {
		return nil, err
	}
	// NoCreate: a sandbox that is gone leaves no lock file behind for this.
	l, err := m.locks().Lock(ctx, "sandbox-"+name, flock.Exclusive|flock.NoCreate)
	if errors.Is(err, flock.ErrNoFile) {
		return nil, fmt.Errorf("%w: no sandbox named %q", ErrNotFound, name)
	}
	if err != nil {
		return nil, err
	}
	defer l.Unlock(false)
	kv, err := m.rt.Get(ctx, keySandboxes+name)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: no sandbox named %q", ErrNotFound, name)
	}
	if err != nil {
		return nil, err
	}
	var rec sandboxRecord
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return nil, err
	}
	changed := false
	for k, v := range set {
		old, had := rec.Labels[k]
		switch {
		case v == "" && had:
			delete(rec.Labels, k)
			changed = true
		case v != "" && old != v:
			if rec.Labels == nil {
				rec.Labels = map[string]string{}
			}
			rec.Labels[k] = v
			changed = true
		}
	}
	if !changed {
		return rec.public(), nil
	}
	if err := m.rt.Txn(ctx, []store.Cmp{{Key: kv.Key, Rev: kv.Rev}}, []store.Op{store.Put(kv.Key, mustJSON(&rec))}); err != nil {
		return nil, err
	}
	return rec.public(), nil
}
