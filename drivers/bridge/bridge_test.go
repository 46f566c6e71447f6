package bridge

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/netmgr/netmgr/drivers"
)

func TestDefaultBridgeName(t *testing.T) {
	for _, n := range []string{"a", "net1", "exactly-12chr", "a-much-longer-network-name", "with.dots.and_underscores"} {
		b := DefaultBridgeName(n)
		if err := drivers.CheckIfName("bridge", b); err != nil {
			t.Errorf("%q -> %q: %v", n, b, err)
		}
		if !strings.HasPrefix(b, BridgePrefix) {
			t.Errorf("%q -> %q lacks prefix", n, b)
		}
	}
	if DefaultBridgeName("a-much-longer-network-name") == DefaultBridgeName("a-much-longer-network-nam2") {
		t.Error("long names collide")
	}
	if got := DefaultBridgeName("net1"); got != "nm-net1" {
		t.Errorf("short name: %q", got)
	}
}

func TestHostIfName(t *testing.T) {
	a, b := HostIfName("ep1"), HostIfName("ep2")
	if len(a) != drivers.MaxIfNameLen || a == b || !strings.HasPrefix(a, HostIfPrefix) {
		t.Errorf("%q %q", a, b)
	}
}

func TestPrepareNetwork(t *testing.T) {
	d := &Driver{}
	sn := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}
	other := &drivers.Network{Name: "other", Options: map[string]string{"bridge": "br-taken"}}
	cases := []struct {
		name string
		n    drivers.Network
		want error
	}{
		{"ok", drivers.Network{Name: "n", Subnets: sn}, nil},
		{"no subnet", drivers.Network{Name: "n"}, drivers.ErrInvalid},
		{"unknown option", drivers.Network{Name: "n", Subnets: sn, Options: map[string]string{"x": "1"}}, drivers.ErrInvalid},
		{"bad bool", drivers.Network{Name: "n", Subnets: sn, Options: map[string]string{"masquerade": "maybe"}}, drivers.ErrInvalid},
		{"long bridge", drivers.Network{Name: "n", Subnets: sn, Options: map[string]string{"bridge": "sixteen-bytes-xx"}}, drivers.ErrInvalid},
		{"bridge taken", drivers.Network{Name: "n", Subnets: sn, Options: map[string]string{"bridge": "br-taken"}}, drivers.ErrExists},
		{"bad mtu", drivers.Network{Name: "n", Subnets: sn, MTU: 20}, drivers.ErrInvalid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			n := tc.n
			err := d.PrepareNetwork(&n, []*drivers.Network{other})
			if !errors.Is(err, tc.want) && !(err == nil && tc.want == nil) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if err == nil && n.Options["bridge"] != "nm-n" {
				t.Errorf("default bridge %q", n.Options["bridge"])
			}
		})
	}
}
