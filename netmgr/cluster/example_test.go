package cluster_test

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/netmgr/netmgr/netmgr/cluster"
	"github.com/netmgr/netmgr/netmgr/cluster/internal/memstore"
	"github.com/netmgr/netmgr/netmgr/ipam"
)

// An agent's use of the package: register the node, lease its subnet of a cluster network, publish
// the driver's attribute, and follow the live nodes. On SIGTERM it calls Close (the lease expires and
// the data path stays); Leave would drop it from its peers at once.
func Example() {
	ctx := context.Background()
	st := memstore.NewManual().Client() // in a cluster: the etcd store
	m, err := cluster.Register(ctx, st, cluster.Node{Name: "host1", Address: netip.MustParseAddr("198.18.0.1")})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer m.Close()
	pool, _ := ipam.NewSubnetPool(netip.MustParsePrefix("10.0.0.0/16"), 24)
	subnets, err := m.LeaseSubnets(ctx, "pods", []ipam.SubnetPool{pool}, netip.MustParsePrefix("10.0.7.0/24"))
	fmt.Println(subnets, err)
	m.SetAttrs(ctx, "pods", map[string]string{"vtep-mac": "02:00:c6:12:00:01"})
	m.SetReady(ctx, true)

	wctx, stop := context.WithCancel(ctx)
	defer stop()
	for nodes := range cluster.WatchNodes(wctx, st) {
		for _, n := range nodes {
			fmt.Println(n.Name, n.Address, n.Subnets(), n.Networks["pods"].Attrs["vtep-mac"], n.Ready)
		}
		stop()
	}
	// Output:
	// [10.0.7.0/24] <nil>
	// host1 198.18.0.1 [10.0.7.0/24] 02:00:c6:12:00:01 true
}
