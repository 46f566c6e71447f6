package netmgr_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr"
)

// concurrentCreates runs two network creates at once, rounds times, and returns how many rounds both
// succeeded with overlapping subnets.
func concurrentCreates(t *testing.T, e *env, rounds int, subnet string) (overlaps int) {
	ctx := context.Background()
	for round := range rounds {
		var wg sync.WaitGroup
		res := make([]*netmgr.Network, 2)
		errs := make([]error, 2)
		start := make(chan struct{})
		for i := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				spec := netmgr.NetworkSpec{Name: fmt.Sprintf("c%d-%d", round, i), Driver: "bridge"}
				if subnet != "" {
					spec.Subnets = prefixes(subnet)
				}
				<-start
				res[i], errs[i] = e.m.CreateNetwork(ctx, spec)
			}()
		}
		close(start)
		wg.Wait()
		if errs[0] == nil && errs[1] == nil && res[0].Subnets[0].Overlaps(res[1].Subnets[0]) {
			overlaps++
			t.Logf("round %d: both networks got %s", round, res[0].Subnets[0])
		}
		for i := range 2 {
			if errs[i] == nil {
				if err := e.m.DeleteNetwork(ctx, res[i].Name); err != nil {
					t.Fatal(err)
				}
			} else if subnet == "" || !errors.Is(errs[i], netmgr.ErrInUse) {
				t.Errorf("round %d: create %d: %v", round, i, errs[i])
			}
		}
	}
	return overlaps
}

// Two concurrent creates without a subnet each get their own /24 (issue 15 item 5).
func TestConcurrentDefaultSubnetsDiffer(t *testing.T) {
	e := newEnv(t)
	if n := concurrentCreates(t, e, 15, ""); n > 0 {
		t.Errorf("%d/15 rounds gave two networks the same subnet", n)
	}
}

// Of two concurrent creates with one explicit subnet, exactly one succeeds (issue 15 item 5).
func TestConcurrentOverlappingSubnetsRefused(t *testing.T) {
	e := newEnv(t)
	if n := concurrentCreates(t, e, 60, "10.77.0.0/24"); n > 0 {
		t.Errorf("%d/60 rounds created two networks on 10.77.0.0/24", n)
	}
}

// A default subnet skips what the host already routes, as Docker's default pools do (item 5).
func TestDefaultSubnetSkipsHostRoutes(t *testing.T) {
	e := newEnv(t)
	// The host's LAN is 10.89.0.0/23 here: an interface to an outside namespace carries it.
	testutil.NewOutsideNet(t, e.host, "10.89.0.1/23", "10.89.0.2/23", "lan0")
	n, err := e.m.CreateNetwork(context.Background(), netmgr.NetworkSpec{Name: "d1", Driver: "bridge"})
	if err != nil {
		t.Fatal(err)
	}
	defer e.m.DeleteNetwork(context.Background(), "d1") //nolint:errcheck
	lan := netip.MustParsePrefix("10.89.0.0/23")
	if len(n.Subnets) != 1 || n.Subnets[0].Overlaps(lan) {
		t.Fatalf("default subnet %v overlaps the host's route to %s", n.Subnets, lan)
	}
}
