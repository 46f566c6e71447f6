package main

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestParseNetworks(t *testing.T) {
	ip := netip.MustParseAddr
	for _, tc := range []struct {
		in   string
		want []extraNetwork
	}{
		{"", nil},
		{"extra", []extraNetwork{{Network: "extra", IfName: "net1"}}},
		{" a , b@st0,default/c", []extraNetwork{{Network: "a", IfName: "net1"}, {Network: "b", IfName: "st0"}, {Network: "c", IfName: "net3"}}},
		{`[{"name": "a"}, {"name": "b", "interface": "st0", "ips": ["10.1.0.5/24", "fd00::5"], "mac": "02:00:00:00:00:AA", "namespace": "default"}]`,
			[]extraNetwork{{Network: "a", IfName: "net1"}, {Network: "b", IfName: "st0", IPs: []netip.Addr{ip("10.1.0.5"), ip("fd00::5")}, MAC: "02:00:00:00:00:aa"}}},
	} {
		got, err := parseNetworks(tc.in, "default")
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("parseNetworks(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

// Every bad annotation is refused with a message naming the entry and what is wrong.
func TestParseNetworksRefuses(t *testing.T) {
	for in, want := range map[string]string{
		"a,,b":                                   "entry 2: no network name",
		"a,a":                                    `entry 2: network "a" is already entry 1`,
		"-x":                                     `entry 1: network name "-x" must be`,
		"other/a":                                `namespace "other"`,
		"a@eth0":                                 `interface "eth0": taken`,
		"a@averyveryverylongname":                "15 characters",
		"a@x,b@x":                                `entry 2: interface "x" is already entry 1's`,
		`{"name": "a"}`:                          "not a single object",
		`[{"name": "a"`:                          "not a JSON list",
		`[{"name": "a", "default-route": []}]`:   `unknown field "default-route"`,
		`[{"name": "a", "ips": ["10.1.0.300"]}]`: `entry 1: ips[0] "10.1.0.300"`,
		`[{"name": "a", "mac": "zz"}]`:           `entry 1: mac "zz"`,
		`[]`:                                     "empty JSON list",
		`[{"name": "a"}] x`:                      "after the JSON list",
	} {
		_, err := parseNetworks(in, "default")
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("parseNetworks(%q): %v, want an error containing %q", in, err, want)
		}
	}
}
