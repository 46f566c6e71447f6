package netmgr_test

import (
	"context"
	"slices"
	"testing"

	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr/store"
)

// TestGCRemovesLeftoverMacvlanShim: a macvlan network's host shim that no network names any more (its
// record lost with a state file, or a delete interrupted between the two) is collected by gc, as the
// bridge driver's leftovers are; a shim that a network names stays.
func TestGCRemovesLeftoverMacvlanShim(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	newLAN(t, e, "lan0", 1500, "10.52.0.1/24")
	newLAN(t, e, "lan1", 1500, "10.53.0.1/24")
	gone, err := e.m.CreateNetwork(ctx, macvlanNet("mvgone", "lan0", map[string]string{"shim": "true"}, "10.52.0.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	kept, err := e.m.CreateNetwork(ctx, macvlanNet("mvkept", "lan1", map[string]string{"shim": "true"}, "10.53.0.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.st.Txn(ctx, nil, []store.Op{store.Del("networks/mvgone")}); err != nil {
		t.Fatal(err)
	}
	rep, err := e.m.Recover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	shim := gone.Options["shim_name"]
	if testutil.HasLink(t, e.host, shim) {
		t.Errorf("shim %s of a network no record names is still there after gc", shim)
	}
	if !slices.Contains(rep.Bridges, shim) {
		t.Errorf("gc reported devices %v, want %s", rep.Bridges, shim)
	}
	if !testutil.HasLink(t, e.host, kept.Options["shim_name"]) {
		t.Errorf("shim %s of a live network removed by gc", kept.Options["shim_name"])
	}
	if err := e.m.DeleteNetwork(ctx, "mvkept"); err != nil {
		t.Error(err)
	}
}
