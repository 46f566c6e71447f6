package intent

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/netmgr/netmgr/netmgr/store"
)

// TestEncodeDecode: the values are those netmgr has always written (records of older releases, and
// other tools' tests, read them), and each reads back as it was.
func TestEncodeDecode(t *testing.T) {
	for _, c := range []struct {
		in   Intent
		want string
	}{
		{Intent{Kind: Create}, "create"},
		{Intent{Kind: Delete}, "delete"},
		{Endpoint(Attach, "web"), "attach web"},
		{Endpoint(Detach, "web"), "detach web"},
		{Intent{Kind: Create, Boot: "b-1"}, "create boot=b-1"},
		{Intent{Kind: Delete, Boot: "b-1", Node: "n1"}, "delete boot=b-1 node=n1"},
		{Intent{Kind: Create, Node: "n1"}, "create node=n1"},
	} {
		if got := string(c.in.Encode()); got != c.want {
			t.Errorf("%+v encodes as %q, want %q", c.in, got, c.want)
		}
		if got := Decode([]byte(c.want)); got != c.in {
			t.Errorf("Decode(%q) = %+v, want %+v", c.want, got, c.in)
		}
	}
	if got := Decode(nil); got != (Intent{}) {
		t.Errorf("Decode(empty) = %+v", got)
	}
	if in := Decode([]byte("attach web")); !in.IsEndpoint() || in.Network != "web" {
		t.Errorf("attach intent %+v", in)
	}
	if in := Decode([]byte("create boot=x")); in.IsEndpoint() {
		t.Errorf("create intent %+v taken for an attach or detach", in)
	}
	for _, c := range []struct {
		in   Intent
		node string
		want bool
	}{
		{Intent{Kind: Create}, "a", true}, // no node: a store of one host
		{Intent{Kind: Create, Node: "a"}, "a", true},
		{Intent{Kind: Create, Node: "b"}, "a", false},
	} {
		if got := c.in.Of(c.node); got != c.want {
			t.Errorf("%+v.Of(%q) = %v, want %v", c.in, c.node, got, c.want)
		}
	}
}

// TestFromEarlierBoot: an intent of another boot, or a create without a boot ID whose record predates
// this boot, is from an earlier boot, and nothing else is (a delete's record dates the object, not the
// delete).
func TestFromEarlierBoot(t *testing.T) {
	start := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	old, now := start.Add(-time.Hour), start.Add(time.Hour)
	for _, c := range []struct {
		in      string
		created time.Time
		want    bool
	}{
		{"create boot=this", old, false},
		{"delete boot=this", old, false},
		{"create boot=another", now, true},
		{"delete boot=another node=n1", now, true},
		{"create", old, true},
		{"create", now, false},
		{"create", time.Time{}, false},
		{"delete", old, false},
		{"attach web", old, false},
	} {
		if got := fromEarlierBoot(Decode([]byte(c.in)), c.created, "this", start); got != c.want {
			t.Errorf("fromEarlierBoot(%q, %v) = %v, want %v", c.in, c.created, got, c.want)
		}
	}
	// Without /proc's answers nothing is known to be from an earlier boot.
	if fromEarlierBoot(Decode([]byte("create boot=another")), now, "", time.Time{}) || fromEarlierBoot(Decode([]byte("create")), old, "", time.Time{}) {
		t.Error("an intent judged from an earlier boot with no boot ID or start known")
	}
	// This machine: an intent recorded now is of this boot.
	id, bootStart := CurrentBoot()
	if id == "" || bootStart.IsZero() {
		t.Skip("no boot id or btime in /proc")
	}
	in := Network(Create, "n1")
	if in.Boot != id || in.Node != "n1" || Decode(in.Encode()) != in {
		t.Fatalf("Network(create) = %+v (boot %q)", in, id)
	}
	if in.FromEarlierBoot(bootStart.Add(-time.Hour)) || !Decode([]byte("create")).FromEarlierBoot(bootStart.Add(-time.Hour)) {
		t.Error("FromEarlierBoot disagrees with this machine's boot")
	}
}

// TestStore: intents written in a transaction with other records, read, listed by node and cleared,
// against a real store (bbolt, no root needed).
func TestStore(t *testing.T) {
	ctx := context.Background()
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "s.db"), store.WithNoSync())
	if err != nil {
		t.Fatal(err)
	}
	if Recorded(ctx, st, SandboxKey("a")) {
		t.Error("an intent recorded in an empty store")
	}
	err = st.Txn(ctx, []store.Cmp{store.Absent(SandboxKey("a"))}, []store.Op{
		store.Put("sandboxes/a", []byte("{}")),
		Put(SandboxKey("a"), Intent{Kind: Create}),
		Put(NetworkKey("mine"), Intent{Kind: Delete, Boot: "b", Node: "n1"}),
		Put(NetworkKey("theirs"), Intent{Kind: Create, Boot: "b", Node: "n2"}),
		Put(NetworkKey("old"), Intent{Kind: Create}),
	})
	if err != nil {
		t.Fatal(err)
	}
	in, kv, err := Get(ctx, st, SandboxKey("a"))
	if err != nil || in.Kind != Create || kv.Key != "intents/sandbox/a" || !Recorded(ctx, st, SandboxKey("a")) {
		t.Errorf("Get = %+v %+v %v", in, kv, err)
	}
	if _, _, err := Get(ctx, st, SandboxKey("b")); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get of a missing intent: %v, want store.ErrNotFound", err)
	}
	nets, err := List(ctx, st, NetworkPrefix)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range OfNode(nets, "n1") {
		names = append(names, e.Name+"="+e.Intent.Kind)
	}
	if !slices.Equal(names, []string{"mine=delete", "old=create"}) {
		t.Errorf("node n1's network intents %v, want mine and old (not n2's)", names)
	}
	if all := Names(nets); len(all) != 3 || !all["theirs"] {
		t.Errorf("names %v, want all three", all)
	}
	if sbs, err := List(ctx, st, SandboxPrefix); err != nil || len(sbs) != 1 || sbs[0].Name != "a" {
		t.Errorf("sandbox intents %+v, %v", sbs, err)
	}
	if err := Clear(ctx, st, SandboxKey("a")); err != nil {
		t.Fatal(err)
	}
	if Recorded(ctx, st, SandboxKey("a")) {
		t.Error("intent recorded after Clear")
	}
	if err := Clear(ctx, st, SandboxKey("a")); err != nil {
		t.Errorf("Clear of a cleared intent: %v", err)
	}
	st.Close()
	if !Recorded(ctx, st, SandboxKey("a")) {
		t.Error("a store that cannot answer is taken for one without the intent")
	}
}
