package bridge

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/netmgr/netmgr/drivers"
)

func TestGatewayMode(t *testing.T) {
	d := &Driver{}
	sn := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}
	for _, tc := range []struct {
		opts         map[string]string
		internal     bool
		err          error
		masq, routed bool
	}{
		{opts: nil, masq: true},
		{opts: map[string]string{OptGatewayMode: "nat"}, masq: true},
		{opts: map[string]string{OptGatewayMode: "routed"}, routed: true},
		{opts: map[string]string{OptGatewayMode: "routed", "masquerade": "true"}, masq: true, routed: true},
		{opts: map[string]string{OptGatewayMode: "nat", "masquerade": "false"}},
		{opts: map[string]string{OptGatewayMode: "Routed"}, err: drivers.ErrInvalid},
		{opts: map[string]string{OptGatewayMode: "nat-unprotected"}, err: drivers.ErrInvalid},
		{opts: map[string]string{OptGatewayMode: ""}, err: drivers.ErrInvalid},
		{opts: map[string]string{OptGatewayMode: "routed"}, internal: true, err: drivers.ErrInvalid},
		{opts: nil, internal: true},
	} {
		opts := map[string]string{}
		for k, v := range tc.opts {
			opts[k] = v
		}
		n := drivers.Network{Name: "n", Subnets: sn, Internal: tc.internal, Options: opts}
		err := d.PrepareNetwork(&n, nil)
		if !errors.Is(err, tc.err) {
			t.Errorf("%v internal=%v: PrepareNetwork = %v, want %v", tc.opts, tc.internal, err, tc.err)
			continue
		}
		if err != nil {
			continue
		}
		fw, _ := d.Firewall(&n)
		if fw.Masquerade != tc.masq || fw.Routed != tc.routed {
			t.Errorf("%v internal=%v: masquerade %v routed %v, want %v %v", tc.opts, tc.internal, fw.Masquerade, fw.Routed, tc.masq, tc.routed)
		}
	}
}
