package firewall

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"

	"github.com/google/nftables/expr"
)

// HairpinIfaces narrows the hairpin masquerade to the interfaces where client and server share an L2
// segment (an overlay's bridge, not its VXLAN device); nil keeps every interface, and a name that is
// not one of the network's interfaces is refused.
func TestHairpinIfaces(t *testing.T) {
	base := Network{Name: "ov", Ifaces: []string{"nmob7", "nmox7"}, Subnets: []netip.Prefix{netip.MustParsePrefix("10.60.1.0/24")}, Masquerade: true}
	oifs := func(n Network) []string {
		var out []string
		for _, r := range hairpinRules(n) {
			for _, e := range r {
				if c, ok := e.(*expr.Cmp); ok && len(c.Data) == 16 {
					out = append(out, string(bytes.TrimRight(c.Data, "\x00")))
				}
			}
		}
		return out
	}
	if got := oifs(base); len(got) != 2 {
		t.Fatalf("hairpin interfaces without HairpinIfaces: %v, want both", got)
	}
	narrow := base
	narrow.HairpinIfaces = []string{"nmob7"}
	nets, err := normalize([]Network{narrow})
	if err != nil {
		t.Fatal(err)
	}
	if got := oifs(nets[0]); len(got) != 1 || got[0] != "nmob7" {
		t.Fatalf("hairpin interfaces with HairpinIfaces [nmob7]: %v", got)
	}
	bad := base
	bad.HairpinIfaces = []string{"eth0"}
	if _, err := normalize([]Network{bad}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("hairpin interface not of the network: %v, want ErrInvalid", err)
	}
}
