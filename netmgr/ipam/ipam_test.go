package ipam

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestParseSubnet(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"10.0.0.0/24", true},
		{"fd00::/64", true},
		{"10.0.0.1/24", false},
		{"10.0.0.0/33", false},
		{"banana", false},
		{"10.0.0.0/31", false},
		{"10.0.0.0/30", true},
		{"192.0.2.0/24", true},
		{"2001:db8::/64", true},
	} {
		_, err := ParseSubnet(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("ParseSubnet(%q) err=%v, want ok=%v", tc.in, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseSubnet(%q) err=%v does not wrap ErrInvalid", tc.in, err)
		}
	}
}

func TestNextRoundRobinAndExhaustion(t *testing.T) {
	p, err := NewPool(netip.MustParsePrefix("10.1.0.0/29"), netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Gateway != netip.MustParseAddr("10.1.0.1") {
		t.Fatalf("gateway %s", p.Gateway)
	}
	taken := map[netip.Addr]bool{}
	var cursor netip.Addr
	var got []string
	for i := 0; i < p.Size(); i++ {
		a, err := p.Next(cursor, func(a netip.Addr) bool { return taken[a] })
		if err != nil {
			t.Fatal(err)
		}
		taken[a] = true
		cursor = a
		got = append(got, a.String())
	}
	want := []string{"10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6"}
	if len(got) != len(want) {
		t.Fatalf("got %v want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %v want %v", got, want)
		}
	}
	if _, err := p.Next(cursor, func(a netip.Addr) bool { return taken[a] }); !errors.Is(err, ErrExhausted) {
		t.Fatalf("want ErrExhausted, got %v", err)
	}
	// Freeing an address makes it available again, after the cursor wraps.
	delete(taken, netip.MustParseAddr("10.1.0.3"))
	a, err := p.Next(cursor, func(a netip.Addr) bool { return taken[a] })
	if err != nil || a.String() != "10.1.0.3" {
		t.Fatalf("got %v %v", a, err)
	}
}

func TestCheck(t *testing.T) {
	p, _ := NewPool(netip.MustParsePrefix("10.2.0.0/24"), netip.MustParseAddr("10.2.0.254"))
	none := func(netip.Addr) bool { return false }
	for _, tc := range []struct {
		ip   string
		want error
	}{
		{"10.2.0.10", nil},
		{"10.2.1.10", ErrOutOfRange},
		{"10.2.0.0", ErrOutOfRange},
		{"10.2.0.255", ErrOutOfRange},
		{"10.2.0.254", ErrTaken},
	} {
		err := p.Check(netip.MustParseAddr(tc.ip), none)
		if !errors.Is(err, tc.want) && !(err == nil && tc.want == nil) {
			t.Errorf("Check(%s)=%v want %v", tc.ip, err, tc.want)
		}
	}
	if err := p.Check(netip.MustParseAddr("10.2.0.7"), func(a netip.Addr) bool { return true }); !errors.Is(err, ErrTaken) {
		t.Errorf("taken: %v", err)
	}
	if _, err := NewPool(netip.MustParsePrefix("10.2.0.0/24"), netip.MustParseAddr("10.3.0.1")); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("gateway outside: %v", err)
	}
}

func TestIPv6Pool(t *testing.T) {
	p, err := NewPool(netip.MustParsePrefix("fd00:1::/64"), netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	a, err := p.Next(netip.Addr{}, func(netip.Addr) bool { return false })
	if err != nil || a.String() != "fd00:1::2" {
		t.Fatalf("got %v %v", a, err)
	}
}

// TestParseSubnetRefusesSpecialPurpose: subnets overlapping loopback, multicast, link-local,
// "this network", reserved and limited-broadcast ranges were accepted (FAULTS §12).
func TestParseSubnetRefusesSpecialPurpose(t *testing.T) {
	for _, tc := range []struct{ in, names string }{
		{"127.0.0.0/24", "127.0.0.0/8"},
		{"224.0.0.0/24", "224.0.0.0/4"},
		{"239.255.255.0/24", "224.0.0.0/4"},
		{"255.255.255.0/24", "240.0.0.0/4"},
		{"240.0.0.0/24", "240.0.0.0/4"},
		{"169.254.0.0/24", "169.254.0.0/16"},
		{"0.0.0.0/24", "0.0.0.0/8"},
		{"0.0.0.0/0", "0.0.0.0/8"},
		{"128.0.0.0/1", "169.254.0.0/16"},
		{"fe80::/64", "fe80::/10"},
		{"ff00::/64", "ff00::/8"},
		{"ff02::/16", "ff00::/8"},
		{"::/64", "::/128"},
		{"::/0", "::/128"},
		{"fc00::/6", "fe80::/10"},
	} {
		_, err := ParseSubnet(tc.in)
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseSubnet(%q) = %v, want ErrInvalid", tc.in, err)
			continue
		}
		if !strings.Contains(err.Error(), tc.names) {
			t.Errorf("ParseSubnet(%q): %q does not name %s", tc.in, err, tc.names)
		}
	}
	for _, ok := range []string{"126.255.255.0/24", "128.0.0.0/24", "169.253.0.0/16", "223.255.255.0/24", "1.0.0.0/8", "fd00::/8", "fe00::/9", "2000::/3"} {
		if _, err := ParseSubnet(ok); err != nil {
			t.Errorf("ParseSubnet(%q) = %v, want ok", ok, err)
		}
	}
}
