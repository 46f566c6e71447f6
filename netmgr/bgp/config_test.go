package bgp

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestParseASN(t *testing.T) {
	for s, want := range map[string]uint32{"65001": 65001, "1": 1, "4294967294": 4294967294, "1.10": 65546, "0.1": 1} {
		if got, err := ParseASN(s); err != nil || got != want {
			t.Errorf("ParseASN(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
	for _, s := range []string{"", "0", "-1", "4294967295", "4294967296", "23456", "abc", "65001x", "1.", ".1", "65536.1", "1.2.3"} {
		if _, err := ParseASN(s); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseASN(%q): %v, want ErrInvalid", s, err)
		}
	}
}

func TestParsePeer(t *testing.T) {
	for s, want := range map[string]Peer{
		"172.31.1.1":       {Addr: netip.MustParseAddr("172.31.1.1")},
		"172.31.1.1:65000": {Addr: netip.MustParseAddr("172.31.1.1"), ASN: 65000},
		"fd00::1":          {Addr: netip.MustParseAddr("fd00::1")},
		"[fd00::1]:65000":  {Addr: netip.MustParseAddr("fd00::1"), ASN: 65000},
		"[fd00::1]":        {Addr: netip.MustParseAddr("fd00::1")},
		"::ffff:10.0.0.1":  {Addr: netip.MustParseAddr("10.0.0.1")},
		"10.0.0.1:1.10":    {Addr: netip.MustParseAddr("10.0.0.1"), ASN: 65546},
	} {
		got, err := ParsePeer(s)
		if err != nil || got != want {
			t.Errorf("ParsePeer(%q) = %v, %v; want %v", s, got, err, want)
		}
		if err == nil {
			if back, err := ParsePeer(got.String()); err != nil || back != got {
				t.Errorf("ParsePeer(%q.String() = %q) = %v, %v", s, got.String(), back, err)
			}
		}
	}
	for _, s := range []string{"", "router", "10.0.0.1:0", "10.0.0.1:x", "0.0.0.0", "127.0.0.1", "224.0.0.1", "::", "[fd00::1", "[fd00::1]x", "fe80::1%eth0", "10.0.0.1:65000:1", "255.255.255.255"} {
		if _, err := ParsePeer(s); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParsePeer(%q): %v, want ErrInvalid", s, err)
		}
	}
}

func TestValidate(t *testing.T) {
	p := []Peer{{Addr: netip.MustParseAddr("172.31.1.1"), ASN: 65000}}
	c := Config{ASN: 65001, Peers: p}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.HoldTime != DefaultHoldTime || c.RestartTime != DefaultHoldTime || c.ListenPort != DefaultPort || c.PeerPort != DefaultPort || c.ConnectRetry != DefaultConnectRetry {
		t.Errorf("defaults not filled: %+v", c)
	}
	for name, bad := range map[string]Config{
		"no ASN":        {Peers: p},
		"AS_TRANS":      {ASN: 23456, Peers: p},
		"no peers":      {ASN: 65001},
		"twice":         {ASN: 65001, Peers: append(p, p...)},
		"hold 2s":       {ASN: 65001, Peers: p, HoldTime: 2 * time.Second},
		"restart 5000s": {ASN: 65001, Peers: p, RestartTime: 5000 * time.Second},
		"retry 1s":      {ASN: 65001, Peers: p, ConnectRetry: time.Second},
		"router id v6":  {ASN: 65001, Peers: p, RouterID: netip.MustParseAddr("fd00::1")},
		"port 70000":    {ASN: 65001, Peers: p, ListenPort: 70000},
		"loopback peer": {ASN: 65001, Peers: []Peer{{Addr: netip.MustParseAddr("127.0.0.1")}}},
	} {
		if err := bad.Validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Validate = %v, want ErrInvalid", name, err)
		}
	}
	var a Config
	if err := ParseAdvertise(&a, []string{"cluster-ips"}); err != nil || !a.AdvertiseClusterIPs {
		t.Errorf("ParseAdvertise(cluster-ips) = %v, %v", a.AdvertiseClusterIPs, err)
	}
	if err := ParseAdvertise(&a, []string{"pod-cidrs"}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "cluster-ips") {
		t.Errorf("ParseAdvertise(pod-cidrs) = %v, want ErrInvalid naming cluster-ips", err)
	}
}
