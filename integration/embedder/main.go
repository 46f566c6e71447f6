// Command embedder is a program outside netmgr's module that embeds the Manager with the bridge driver
// and nothing else, the way a container runtime would. It exists to be built: TestEmbedderDeps
// (integration/embedder_test.go) checks that it links none of containerd, the CRI API, grpc, cobra,
// libcni or OpenTelemetry, and reports its size. Run, it lists the networks of the given state.
//
// Its go.mod replaces github.com/netmgr/netmgr with this checkout, so it builds against the code
// beside it, offline from the module cache.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	// The one driver this program offers besides the host and link modes every Manager has.
	_ "github.com/netmgr/netmgr/drivers/bridge"
	"github.com/netmgr/netmgr/netmgr"
)

func main() {
	stateDir := flag.String("state-dir", "", "netmgr state directory (required)")
	runDir := flag.String("run-dir", "", "netmgr run directory (required)")
	flag.Parse()
	if *stateDir == "" || *runDir == "" {
		fmt.Fprintln(os.Stderr, "usage: embedder --state-dir DIR --run-dir DIR")
		os.Exit(2)
	}
	ctx := context.Background()
	m, err := netmgr.New(ctx, netmgr.WithStateDir(*stateDir), netmgr.WithRunDir(*runDir))
	if err != nil {
		fmt.Fprintln(os.Stderr, "embedder:", err)
		os.Exit(1)
	}
	defer m.Close()
	nets, err := m.Networks(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "embedder:", err)
		os.Exit(1)
	}
	for _, n := range nets {
		fmt.Println(n.Name, n.Driver)
	}
}
