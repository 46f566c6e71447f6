package netmgr

import (
	"testing"
	"time"
)

// TestIntentBoot: a network intent carries the boot it was recorded in; one of another boot, or a
// create without a boot ID whose record predates this boot, is from an earlier boot, and nothing else
// is (a delete's record dates the network, not the delete).
func TestIntentBoot(t *testing.T) {
	id, start := currentBoot()
	if id == "" || start.IsZero() {
		t.Skip("no boot id or btime in /proc")
	}
	if kind, boot := parseIntent(string(bootIntent(intentCreate))); kind != intentCreate || boot != id {
		t.Fatalf("networkIntent round trip: %q %q", kind, boot)
	}
	old, now := start.Add(-time.Hour), time.Now()
	for _, c := range []struct {
		intent  string
		created time.Time
		want    bool
	}{
		{string(bootIntent(intentCreate)), old, false},
		{string(bootIntent(intentDelete)), old, false},
		{"create boot=another", now, true},
		{"delete boot=another", now, true},
		{"create", old, true},
		{"create", now, false},
		{"create", time.Time{}, false},
		{"delete", old, false},
	} {
		if got := fromEarlierBoot(c.intent, c.created); got != c.want {
			t.Errorf("fromEarlierBoot(%q, %v) = %v, want %v", c.intent, c.created, got, c.want)
		}
	}
}
