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

// TestCluster runs the whole suite (clustertest.Run) on the in-memory store; the same suite runs on
// etcd from the etcd store's tests.
func TestCluster(t *testing.T) { clustertest.Run(t, memBackend) }
