package firewall_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/netmgr/netmgr/netmgr/firewall"
)

// Program the current network namespace with one masquerading network and
// one internal network. It needs CAP_NET_ADMIN, so it is compiled but not run.
func ExampleFirewall_Apply() {
	ctx := context.Background()
	fw, err := firewall.New(-1, slog.Default())
	if err != nil {
		panic(err)
	}
	defer fw.Close()

	err = fw.Apply(ctx, []firewall.Network{
		{
			Name:       "web",
			Ifaces:     []string{"br-web"},
			Subnets:    []netip.Prefix{netip.MustParsePrefix("10.2.0.0/24"), netip.MustParsePrefix("fd00:2::/64")},
			Masquerade: true,
		},
		{
			Name:     "backend",
			Ifaces:   []string{"br-backend"},
			Subnets:  []netip.Prefix{netip.MustParsePrefix("10.3.0.0/24")},
			Internal: true,
		},
	})
	if err != nil {
		panic(err)
	}
	names, err := fw.Networks(ctx)
	if err != nil {
		panic(err)
	}
	fmt.Println(names) // [backend web]
}
