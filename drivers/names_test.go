package drivers

import (
	"errors"
	"net/netip"
	"testing"
)

// TestParseMAC: multicast, broadcast and all-zero MACs reached the kernel, which answered with a bare
// "cannot assign requested address" (FAULTS §15).
func TestParseMAC(t *testing.T) {
	for _, ok := range []string{"02:00:00:00:00:01", "00:16:3e:12:34:56", "fe:ff:ff:ff:ff:ff"} {
		if _, err := ParseMAC(ok); err != nil {
			t.Errorf("ParseMAC(%q) = %v, want ok", ok, err)
		}
	}
	for _, bad := range []string{"ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01", "33:33:00:00:00:01", "00:00:00:00:00:00", "banana",
		"00:00:00:00:fe:80:00:00:00:00:00:00:02:00:5e:10:00:00:00:01", "02:00:00:00:00:00:00:01"} {
		if _, err := ParseMAC(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseMAC(%q) = %v, want ErrInvalid", bad, err)
		}
	}
}

// TestCheckIPv6MTU: an IPv6 network with an MTU below 1280 failed late with "set gateway ...: invalid
// argument" (FAULTS §15).
func TestCheckIPv6MTU(t *testing.T) {
	v4 := netip.MustParsePrefix("10.0.0.0/24")
	v6 := netip.MustParsePrefix("fd00::/64")
	for _, tc := range []struct {
		subnets []netip.Prefix
		mtu     int
		ok      bool
	}{
		{[]netip.Prefix{v4, v6}, 1279, false},
		{[]netip.Prefix{v6}, 576, false},
		{[]netip.Prefix{v4, v6}, 1280, true},
		{[]netip.Prefix{v4, v6}, 0, true},
		{[]netip.Prefix{v4}, 576, true},
	} {
		err := CheckIPv6MTU(&Network{Subnets: tc.subnets}, tc.mtu)
		if tc.ok != (err == nil) || (err != nil && !errors.Is(err, ErrInvalid)) {
			t.Errorf("%v mtu %d: %v, want ok=%v", tc.subnets, tc.mtu, err, tc.ok)
		}
	}
}
