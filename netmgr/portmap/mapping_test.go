package portmap

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"
)

func TestParse(t *testing.T) {
	a := netip.MustParseAddr
	cases := []struct {
		in   string
		want []Mapping // nil: an error is expected
	}{
		{"8080:80", []Mapping{{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}}},
		{"8080:80/udp", []Mapping{{HostPort: 8080, ContainerPort: 80, Protocol: "udp"}}},
		{"8080:80/TCP", []Mapping{{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}}},
		{"192.0.2.1:53:5353/udp", []Mapping{{HostIP: a("192.0.2.1"), HostPort: 53, ContainerPort: 5353, Protocol: "udp"}}},
		{"0.0.0.0:1:65535", []Mapping{{HostIP: a("0.0.0.0"), HostPort: 1, ContainerPort: 65535, Protocol: "tcp"}}},
		{"[2001:db8::1]:443:8443", []Mapping{{HostIP: a("2001:db8::1"), HostPort: 443, ContainerPort: 8443, Protocol: "tcp"}}},
		{"[::]:443:8443/udp", []Mapping{{HostIP: a("::"), HostPort: 443, ContainerPort: 8443, Protocol: "udp"}}},
		{"8000-8002:80-82", []Mapping{
			{HostPort: 8000, ContainerPort: 80, Protocol: "tcp"},
			{HostPort: 8001, ContainerPort: 81, Protocol: "tcp"},
			{HostPort: 8002, ContainerPort: 82, Protocol: "tcp"},
		}},
		{"9-9:7-7/udp", []Mapping{{HostPort: 9, ContainerPort: 7, Protocol: "udp"}}},
		{"", nil},
		{"80", nil},
		{"8080:80/sctp", nil},
		{"8080:80/", nil},
		{"0:80", nil},
		{"8080:0", nil},
		{"65536:80", nil},
		{"-1:80", nil},
		{"+80:80", nil},
		{"080:80", nil},
		{"8000-8010:80-85", nil},
		{"8010-8000:90-80", nil},
		{"8000-:80-", nil},
		{"8000-8001:80", nil},
		{"example.com:80:80", nil},
		{"2001:db8::1:80:80", nil},
		{"[192.0.2.1]:80:80", nil},
		{"[2001:db8::1]80:80", nil},
		{"[fe80::1%eth0]:80:80", nil},
		{"1.2.3.4:5:6:7", nil},
		{"[2001:db8::1]:1:2:3", nil},
	}
	for _, tc := range cases {
		got, err := Parse(tc.in)
		if tc.want == nil {
			if err == nil {
				t.Errorf("Parse(%q) = %v, want an error", tc.in, got)
			} else if !errors.Is(err, ErrInvalid) {
				t.Errorf("Parse(%q) error %v does not wrap ErrInvalid", tc.in, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("Parse(%q): %v", tc.in, err)
			continue
		}
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("Parse(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestMappingStringRoundTrip(t *testing.T) {
	for _, s := range []string{"8080:80/tcp", "192.0.2.1:53:53/udp", "[2001:db8::1]:443:8443/tcp", "[::]:1:2/udp"} {
		m, err := Parse(s)
		if err != nil || len(m) != 1 {
			t.Fatalf("Parse(%q) = %v, %v", s, m, err)
		}
		if got := m[0].String(); got != s {
			t.Errorf("String() = %q, want %q", got, s)
		}
	}
	if got := (Mapping{HostPort: 1, ContainerPort: 2}).String(); got != "1:2/tcp" {
		t.Errorf("empty protocol prints %q, want 1:2/tcp", got)
	}
}
