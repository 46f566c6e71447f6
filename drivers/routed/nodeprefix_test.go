package routed

import (
	"errors"
	"net/netip"
	"strconv"
	"testing"

	"github.com/netmgr/netmgr/drivers"
	"github.com/netmgr/netmgr/netmgr/ipam"
)

// TestGlobalNodePrefixLimit: a routed-global network accepts exactly the node prefixes the agent
// can lease (ipam.CheckNodePrefix: room for a gateway and a pod). It took /31 and /127 before, which
// the agent's subnet pool then refused: the network was created and no node ever joined it.
func TestGlobalNodePrefixLimit(t *testing.T) {
	g := &GlobalDriver{&Driver{global: true}}
	for _, c := range []struct {
		cidr netip.Prefix
		opt  string
	}{{netip.MustParsePrefix("10.60.0.0/16"), OptNodePrefix}, {netip.MustParsePrefix("fd60::/48"), OptNodePrefix6}} {
		for bits := c.cidr.Bits() + 1; bits <= c.cidr.Addr().BitLen(); bits++ {
			n := &drivers.Network{ID: "id", Name: "rg", Driver: GlobalName, Subnets: []netip.Prefix{c.cidr},
				Options: map[string]string{c.opt: strconv.Itoa(bits)}}
			derr := g.PrepareNetwork(n, nil)
			ierr := ipam.CheckNodePrefix(c.cidr, bits)
			if (derr == nil) != (ierr == nil) {
				t.Errorf("%s=%d on %s: driver %v, agent's pool %v: they must agree", c.opt, bits, c.cidr, derr, ierr)
			}
			if derr != nil && !errors.Is(derr, drivers.ErrInvalid) {
				t.Errorf("%s=%d: %v, want ErrInvalid", c.opt, bits, derr)
			}
		}
	}
}
