package netmgr_test

import (
	"context"
	"fmt"
	"log"
	"net/netip"

	// The bridge driver, linked in by its import (it registers itself as "bridge").
	_ "github.com/netmgr/netmgr/drivers/bridge"
	"github.com/netmgr/netmgr/netmgr"
)

// Create a bridge network, attach a sandbox to it, print the address it got, and remove both. It
// needs CAP_NET_ADMIN and CAP_SYS_ADMIN and changes the host's network namespace (a bridge, a veth,
// nftables rules), so it is compiled but not run.
func ExampleManager() {
	ctx := context.Background()
	// The state directory holds what outlives a reboot (the network definitions), the run
	// directory what does not (namespace pins, lock files). Every call takes the locks it needs, so
	// several processes may use one pair of directories at once.
	m, err := netmgr.New(ctx,
		netmgr.WithStateDir("/var/lib/example-netmgr"),
		netmgr.WithRunDir("/run/example-netmgr"))
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()

	n, err := m.CreateNetwork(ctx, netmgr.NetworkSpec{
		Name:    "web",
		Driver:  "bridge",
		Subnets: []netip.Prefix{netip.MustParsePrefix("10.88.0.0/24")},
	})
	if err != nil {
		log.Fatal(err) // errors.Is(err, netmgr.ErrExists) if "web" exists, netmgr.ErrInvalid for a bad spec
	}
	defer m.DeleteNetwork(ctx, n.Name)

	// A sandbox is a network namespace, pinned under the run directory, with one interface per
	// network it attaches to; containers or processes join it by its path.
	sb, err := m.CreateSandbox(ctx, netmgr.SandboxSpec{
		Name:     "web-1",
		Networks: []netmgr.AttachSpec{{Network: "web"}},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("namespace:", sb.NetNS)
	fmt.Println("address:", sb.Attachments[0].IPv4)

	if err := m.DeleteSandbox(ctx, sb.Name); err != nil {
		log.Fatal(err)
	}
}
