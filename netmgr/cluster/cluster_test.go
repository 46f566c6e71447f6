package cluster_test

import (
	"testing"
	"time"

	"github.com/netmgr/netmgr/netmgr/cluster/clustertest"
	"github.com/netmgr/netmgr/netmgr/cluster/internal/memstore"
	"github.com/netmgr/netmgr/netmgr/store"
)

// memBackend is the suite's backend on the in-memory store, with a manual lease clock: a lease expires
// when a test advances past its deadline, never because a goroutine was slow.
func memBackend(t *testing.T) clustertest.Backend {
	b := memstore.NewManual()
	return clustertest.Backend{
		Open: func(*testing.T) store.Store { return b.Client() },
		Compact: func(t *testing.T) {
			if err := b.Compact(0); err != nil {
				t.Fatal(err)
			}
		},
		Advance: b.Advance,
		TTL:     300 * time.Millisecond,
	}
}

// TestCluster runs the whole suite (clustertest.Run) on the in-memory store. On etcd the
// membership is exercised end to end by the agent's and integration cluster tests, not by this
// suite.
func TestCluster(t *testing.T) { clustertest.Run(t, memBackend) }

// TestClusterRealClock runs the suite on the in-memory store with leases on the real clock, as on
// etcd: Advance sleeps, and a lease lives only as long as the keep-alive goroutine renews it. The TTL
// is long enough (1 s, renewed every 333 ms) that only a goroutine stalled for most of a second could
// lose it.
func TestClusterRealClock(t *testing.T) {
	if testing.Short() {
		t.Skip("sleeps through lease TTLs")
	}
	clustertest.Run(t, func(t *testing.T) clustertest.Backend {
		b := memstore.New()
		t.Cleanup(b.Close)
		return clustertest.Backend{
			Open: func(*testing.T) store.Store { return b.Client() },
			Compact: func(t *testing.T) {
				if err := b.Compact(0); err != nil {
					t.Fatal(err)
				}
			},
			TTL: time.Second,
		}
	})
}
