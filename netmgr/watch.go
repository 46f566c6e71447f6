package netmgr

import (
	"cmp"
	"context"
	"encoding/json"
	"slices"

	"github.com/netmgr/netmgr/netmgr/store"
)

// WatchSandboxes calls fn with every sandbox of this node, sorted by name, once at the start and
// again after each change to them (made by this process or any other sharing the runtime store),
// until ctx ends (it returns ctx's error) or fn fails (it returns fn's error). It follows the runtime
// store with store.Follow, so it survives compaction and store errors; a bolt runtime store is
// polled every 100 ms. fn must not keep the slice's sandboxes past the call if it changes them.
func (m *Manager) WatchSandboxes(ctx context.Context, fn func([]*Sandbox) error) error {
	return store.Follow(ctx, m.rt, keySandboxes, func(u store.Update) error {
		out := make([]*Sandbox, 0, len(u.State))
		for _, kv := range u.State {
			var r sandboxRecord
			if err := json.Unmarshal(kv.Value, &r); err != nil {
				m.log.Warn("skipping undecodable sandbox record", "key", kv.Key, "error", err)
				continue
			}
			out = append(out, r.public())
		}
		slices.SortFunc(out, func(a, b *Sandbox) int { return cmp.Compare(a.Name, b.Name) })
		return fn(out)
	}, store.FollowErrors(func(err error) { m.log.Warn("watch sandboxes (retrying)", "error", err) }))
}
