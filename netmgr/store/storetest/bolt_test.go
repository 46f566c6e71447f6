package storetest

import (
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/netmgr/netmgr/netmgr/store"
)

// changeLog is the history the bolt harness keeps: Compact writes past it.
const changeLog = 20

func boltHarness(t *testing.T) Harness {
	b, err := store.OpenBolt(filepath.Join(t.TempDir(), "s.db"), store.WithNoSync(),
		store.WithWatchInterval(10*time.Millisecond), store.WithChangeLog(changeLog))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return Harness{
		Store: b,
		Compact: func(t *testing.T) {
			for i := 0; i < 4*changeLog; i++ {
				Txn(t, b, store.Put(FillerPrefix+strconv.Itoa(i%3), nil))
			}
		},
	}
}

// TestBolt runs the contract against the bolt store.
func TestBolt(t *testing.T) { Run(t, boltHarness) }

// TestPrefixedBolt runs it through store.WithPrefix.
func TestPrefixedBolt(t *testing.T) {
	Run(t, func(t *testing.T) Harness {
		h := boltHarness(t)
		h.Store, h.Close = store.WithPrefix(h.Store, "nodes/n1/"), h.Store.Close
		return h
	})
}
