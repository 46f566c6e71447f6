package ipam

import (
	"errors"
	"net/netip"
	"testing"
)

// TestCheckNodePrefix: a node prefix must cut the cluster CIDR into at least 2 subnets that each hold a
// gateway and a pod; every refusal is one line matching ErrInvalid.
func TestCheckNodePrefix(t *testing.T) {
	for _, tc := range []struct {
		cidr string
		bits int
		msg  string
	}{
		{"10.0.0.0/16", 24, ""},
		{"10.0.0.0/16", 17, ""},
		{"10.0.0.0/16", 30, ""},
		{"fd00::/48", 64, ""},
		{"fd00::/64", 126, ""},
		{"10.0.0.0/16", 8, "node prefix /8 is larger than the cluster CIDR 10.0.0.0/16: it must be longer than /16"},
		{"10.0.0.0/24", 24, "node prefix /24 leaves 1 node subnet in the cluster CIDR 10.0.0.0/24, fewer than 2: it must be longer than /24"},
		{"10.0.0.0/16", 31, "node prefix /31 leaves no room for a gateway and a pod in a node subnet: at most /30"},
		{"fd00::/48", 127, "node prefix /127 leaves no room for a gateway and a pod in a node subnet: at most /126"},
		{"fd00::/64", 48, "node prefix /48 is larger than the cluster CIDR fd00::/64: it must be longer than /64"},
	} {
		err := CheckNodePrefix(netip.MustParsePrefix(tc.cidr), tc.bits)
		if tc.msg == "" {
			if err != nil {
				t.Errorf("%s /%d: %v", tc.cidr, tc.bits, err)
			}
			continue
		}
		if !errors.Is(err, ErrInvalid) || err.Error() != tc.msg {
			t.Errorf("%s /%d: %v\n want %q", tc.cidr, tc.bits, err, tc.msg)
		}
	}
	if _, err := NewSubnetPool(netip.MustParsePrefix("10.0.0.1/16"), 24); !errors.Is(err, ErrInvalid) {
		t.Errorf("CIDR with host bits: %v", err)
	}
}

// TestSubnetPoolArithmetic: subnet numbers map to aligned subnets inside the CIDR, for IPv4 and for
// IPv6 with node subnets on either side of the 64-bit boundary.
func TestSubnetPoolArithmetic(t *testing.T) {
	for _, tc := range []struct {
		cidr  string
		bits  int
		i     uint64
		want  string
		count uint64
	}{
		{"10.0.0.0/16", 24, 0, "10.0.0.0/24", 256},
		{"10.0.0.0/16", 24, 255, "10.0.255.0/24", 256},
		{"10.8.0.0/14", 26, 5, "10.8.1.64/26", 4096},
		{"fd00::/48", 64, 0x1234, "fd00:0:0:1234::/64", 1 << 16},
		{"fd00::/56", 120, 0x1ff, "fd00::1:ff00/120", 1 << 62},
		{"fd00::/60", 68, 0x1f, "fd00:0:0:1:f000::/68", 256},
	} {
		p, err := NewSubnetPool(netip.MustParsePrefix(tc.cidr), tc.bits)
		if err != nil {
			t.Fatal(err)
		}
		got := p.Subnet(tc.i)
		if got.String() != tc.want || !p.Contains(got) || p.Count() != tc.count {
			t.Errorf("%s /%d #%d: %s (contains %v), count %d; want %s, %d", tc.cidr, tc.bits, tc.i, got, p.Contains(got), p.Count(), tc.want, tc.count)
		}
	}
	p, _ := NewSubnetPool(netip.MustParsePrefix("10.0.0.0/16"), 24)
	for _, s := range []string{"10.1.0.0/24", "10.0.1.0/25", "10.0.1.128/24", "fd00::/24"} {
		q, _ := netip.ParsePrefix(s)
		if p.Contains(q) {
			t.Errorf("%s is not a node subnet of %v", s, p)
		}
	}
}

// TestSubnetPoolFree: the search starts at the given subnet, skips taken ones, wraps around, and a full
// pool is ErrExhausted with the pool in the message.
func TestSubnetPoolFree(t *testing.T) {
	p, _ := NewSubnetPool(netip.MustParsePrefix("10.0.0.0/22"), 24)
	taken := map[netip.Prefix]bool{netip.MustParsePrefix("10.0.3.0/24"): true, netip.MustParsePrefix("10.0.0.0/24"): true}
	isTaken := func(s netip.Prefix) bool { return taken[s] }
	if s, err := p.Free(3, len(taken), isTaken); err != nil || s.String() != "10.0.1.0/24" {
		t.Fatalf("from #3: %v %v, want 10.0.1.0/24", s, err)
	}
	taken[netip.MustParsePrefix("10.0.1.0/24")] = true
	taken[netip.MustParsePrefix("10.0.2.0/24")] = true
	_, err := p.Free(1, 0, isTaken)
	if !errors.Is(err, ErrExhausted) || err.Error() != "address pool exhausted: no free /24 left in 10.0.0.0/22" {
		t.Fatalf("full: %v", err)
	}
	// A huge IPv6 pool is searched only limit+1 steps.
	big, _ := NewSubnetPool(netip.MustParsePrefix("fd00::/32"), 96)
	asked := 0
	if _, err := big.Free(1<<40, 3, func(netip.Prefix) bool { asked++; return true }); !errors.Is(err, ErrExhausted) || asked != 4 {
		t.Fatalf("limit: %v after %d asks", err, asked)
	}
}
