package overlay

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/netmgr/netmgr/drivers"
)

func pfx(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, x := range s {
		out = append(out, netip.MustParsePrefix(x))
	}
	return out
}

// TestPrepareAndAllocate: the cluster-wide choices at network create, and the bad input each one
// refuses with one clear line and without touching n's recorded choices of another network.
func TestPrepareAndAllocate(t *testing.T) {
	d := &Driver{}
	taken := []*drivers.Network{
		{ID: "a", Name: "a", Options: map[string]string{OptVNI: "4096"}},
		{ID: "b", Name: "b", Options: map[string]string{OptVNI: "4098"}},
	}
	cases := []struct {
		name    string
		subnets []netip.Prefix
		opts    map[string]string
		mtu     int
		want    error
		check   map[string]string
	}{
		{"defaults", pfx("10.60.0.0/16"), nil, 0, nil, map[string]string{OptVNI: "4097", OptPort: "4789", OptNodePrefix: "24"}},
		{"dual stack", pfx("10.60.0.0/16", "fd00:60::/48"), nil, 0, nil, map[string]string{OptNodePrefix: "24", OptNodePrefix6: "64"}},
		{"given vni and port", pfx("10.60.0.0/16"), map[string]string{OptVNI: "7", OptPort: "8472", OptNodePrefix: "26"}, 0, nil, map[string]string{OptVNI: "7", OptPort: "8472", OptNodePrefix: "26"}},
		{"two node subnets", pfx("10.60.0.0/23"), nil, 0, nil, nil},
		{"taken vni", pfx("10.60.0.0/16"), map[string]string{OptVNI: "4098"}, 0, drivers.ErrExists, nil},
		{"no cidr", nil, nil, 0, drivers.ErrInvalid, nil},
		{"two v4 cidrs", pfx("10.60.0.0/16", "10.61.0.0/16"), nil, 0, drivers.ErrInvalid, nil},
		{"vni 0", pfx("10.60.0.0/16"), map[string]string{OptVNI: "0"}, 0, drivers.ErrInvalid, nil},
		{"vni too big", pfx("10.60.0.0/16"), map[string]string{OptVNI: "16777216"}, 0, drivers.ErrInvalid, nil},
		{"bad port", pfx("10.60.0.0/16"), map[string]string{OptPort: "65536"}, 0, drivers.ErrInvalid, nil},
		{"node prefix shorter than cidr", pfx("10.60.0.0/16"), map[string]string{OptNodePrefix: "15"}, 0, drivers.ErrInvalid, nil},
		{"node prefix one subnet", pfx("10.60.0.0/24"), nil, 0, drivers.ErrInvalid, nil},
		{"node prefix too long", pfx("10.60.0.0/16"), map[string]string{OptNodePrefix: "31"}, 0, drivers.ErrInvalid, nil},
		{"node prefix not a number", pfx("10.60.0.0/16"), map[string]string{OptNodePrefix: "x"}, 0, drivers.ErrInvalid, nil},
		{"node-prefix6 without v6", pfx("10.60.0.0/16"), map[string]string{OptNodePrefix6: "64"}, 0, drivers.ErrInvalid, nil},
		{"v6 one subnet", pfx("fd00:60::/64"), nil, 0, drivers.ErrInvalid, nil},
		{"unknown option", pfx("10.60.0.0/16"), map[string]string{"bridge": "br0"}, 0, drivers.ErrInvalid, nil},
		{"bad masquerade", pfx("10.60.0.0/16"), map[string]string{OptMasquerade: "maybe"}, 0, drivers.ErrInvalid, nil},
		{"bad mtu", pfx("10.60.0.0/16"), nil, 20, drivers.ErrInvalid, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			opts := map[string]string{}
			for k, v := range tc.opts {
				opts[k] = v
			}
			n := &drivers.Network{ID: "n", Name: "n", Subnets: tc.subnets, Options: opts, MTU: tc.mtu}
			err := d.PrepareNetwork(n, taken)
			if err == nil {
				err = d.Allocate(t.Context(), n, taken)
			}
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
			} else {
				if !errors.Is(err, tc.want) {
					t.Fatalf("got %v, want %v", err, tc.want)
				}
				if strings.Contains(err.Error(), "\n") {
					t.Errorf("error %q is more than one line", err)
				}
				return
			}
			for k, v := range tc.check {
				if n.Options[k] != v {
					t.Errorf("option %s = %q, want %q (options %v)", k, n.Options[k], v, n.Options)
				}
			}
		})
	}
}

// TestVTEPMAC: stable per node and VNI, distinct otherwise, locally administered unicast.
func TestVTEPMAC(t *testing.T) {
	a, b, c := vtepMAC("node1", 4096), vtepMAC("node1", 4096), vtepMAC("node2", 4096)
	if a.String() != b.String() || a.String() == c.String() || a.String() == vtepMAC("node1", 4097).String() {
		t.Errorf("%s %s %s", a, b, c)
	}
	if _, err := drivers.ParseMAC(a.String()); err != nil || a[0]&0x02 == 0 {
		t.Errorf("%s is not a locally administered unicast MAC: %v", a, err)
	}
}

// TestFirewallSpec: the bridge and the VXLAN device are the network's interfaces, egress is
// masqueraded except towards the cluster CIDR.
func TestFirewallSpec(t *testing.T) {
	n := &drivers.Network{Name: "n", Subnets: pfx("10.60.0.0/16"), Options: map[string]string{OptVNI: "42", OptPort: "4789"}}
	fs, ok := (&Driver{}).Firewall(n)
	if !ok || strings.Join(fs.HostIfaces, ",") != "nmob42,nmox42" || !fs.Masquerade || len(fs.NoMasqueradeTo) != 1 ||
		fs.NoMasqueradeTo[0] != n.Subnets[0] || !fs.PortTargets {
		t.Errorf("Firewall = %+v, %v", fs, ok)
	}
	n.Internal = true
	if fs, _ := (&Driver{}).Firewall(n); fs.Masquerade {
		t.Errorf("internal network masquerades: %+v", fs)
	}
}
