// Package bgp is the node agent's BGP speaker (issue 13): it advertises the node's subnets of every
// routed network, and optionally the service cluster IPs, to the routers it peers with, so that
// routers between hosts that share no segment carry pod traffic with no tunnel (Calico's, kube-router's
// and Cilium's BGP model), and it puts the routes it learns for other nodes' subnets into the kernel
// where no better route exists. It runs inside the agent (a Controller), on the gobgp library in
// process: no extra daemon, no shelling out.
//
// Sessions are opened in the network namespace of the process (gobgp's sockets): run the agent in the
// host's namespace. Run refuses a Manager whose host namespace is another one.
//
// Stopping: by default the speaker closes its sessions without a NOTIFICATION (graceful restart,
// RFC 4724), so a router that negotiated graceful restart keeps the node's routes for RestartTime
// while the agent comes back; a speaker that comes back within it marks itself restarting, defers
// its updates until the routers' End-of-RIB, re-advertises and sends End-of-RIB, and the router's
// table never loses a route that is still true. A router drops the routes of an agent that does not
// come back (SIGKILL, a dead node) when RestartTime ends, or at once with WithdrawOnStop.
package bgp

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/netmgr/netmgr/netmgr"
)

// ErrInvalid is netmgr.ErrInvalid: a bad ASN, peer or timer.
var ErrInvalid = netmgr.ErrInvalid

// Defaults.
const (
	DefaultHoldTime = 90 * time.Second
	// DefaultRestartTime is the hold time's default: a router keeps the routes of a node that
	// died (its sessions closed, or silent) no longer than it would have without graceful restart.
	DefaultRestartTime  = DefaultHoldTime
	DefaultConnectRetry = 5 * time.Second
	DefaultPort         = 179
	// RouteProtocol marks the kernel routes the speaker installs from what it learned: a number of
	// netmgr's own (0xb2; the routed driver's is 0xb1), not RTPROT_BGP (186), which FRR's zebra and
	// others use for theirs: the speaker removes only routes so marked.
	RouteProtocol = 0xb2
)

// Peer is one BGP neighbour: its address and AS number (0: the speaker's own, iBGP).
type Peer struct {
	Addr netip.Addr `json:"addr"`
	ASN  uint32     `json:"asn,omitempty"`
}

func (p Peer) String() string {
	if p.ASN == 0 {
		return p.Addr.String()
	}
	if p.Addr.Is6() {
		return "[" + p.Addr.String() + "]:" + strconv.FormatUint(uint64(p.ASN), 10)
	}
	return p.Addr.String() + ":" + strconv.FormatUint(uint64(p.ASN), 10)
}

// ParseASN parses an AS number: decimal (asplain, 65001) or asdot (1.10). 0, AS_TRANS (23456) and
// 4294967295 are refused.
func ParseASN(s string) (uint32, error) {
	bad := fmt.Errorf("%w: BGP AS number %q is not a number from 1 to 4294967294 (asplain, or asdot X.Y)", ErrInvalid, s)
	var v uint64
	if hi, lo, ok := strings.Cut(s, "."); ok {
		h, err1 := strconv.ParseUint(hi, 10, 16)
		l, err2 := strconv.ParseUint(lo, 10, 16)
		if err1 != nil || err2 != nil {
			return 0, bad
		}
		v = h<<16 | l
	} else {
		var err error
		if v, err = strconv.ParseUint(s, 10, 32); err != nil {
			return 0, bad
		}
	}
	switch v {
	case 0, 4294967295:
		return 0, bad
	case 23456:
		return 0, fmt.Errorf("%w: BGP AS number %s is AS_TRANS (RFC 6793), not a real AS", ErrInvalid, s)
	}
	return uint32(v), nil
}

// ParsePeer parses IP[:ASN] ([IPv6]:ASN with an AS number); without an AS number the peer is in
// the speaker's own AS (iBGP).
func ParsePeer(s string) (Peer, error) {
	addr, asn := s, ""
	if strings.HasPrefix(s, "[") {
		end := strings.Index(s, "]")
		if end < 0 {
			return Peer{}, fmt.Errorf("%w: BGP peer %q: missing ]", ErrInvalid, s)
		}
		addr, asn = s[1:end], strings.TrimPrefix(s[end+1:], ":")
		if s[end+1:] != "" && !strings.HasPrefix(s[end+1:], ":") {
			return Peer{}, fmt.Errorf("%w: BGP peer %q: want [IPv6]:ASN", ErrInvalid, s)
		}
	} else if strings.Count(s, ":") == 1 {
		addr, asn, _ = strings.Cut(s, ":")
	}
	ip, err := netip.ParseAddr(addr)
	if err != nil || ip.Zone() != "" {
		return Peer{}, fmt.Errorf("%w: BGP peer %q: %q is not an IP address (want IP[:ASN], [IPv6]:ASN)", ErrInvalid, s, addr)
	}
	p := Peer{Addr: ip.Unmap()}
	if err := checkPeerAddr(p.Addr); err != nil {
		return Peer{}, fmt.Errorf("BGP peer %q: %w", s, err)
	}
	if asn != "" {
		if p.ASN, err = ParseASN(asn); err != nil {
			return Peer{}, fmt.Errorf("BGP peer %q: %w", s, err)
		}
	}
	return p, nil
}

func checkPeerAddr(a netip.Addr) error {
	if !a.IsValid() || a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() || (a.Is4() && a == netip.AddrFrom4([4]byte{255, 255, 255, 255})) {
		return fmt.Errorf("%w: %v is not a unicast address a router can have", ErrInvalid, a)
	}
	return nil
}

// Advertise values.
const (
	AdvertiseClusterIPs = "cluster-ips"
)

// Config configures the speaker.
type Config struct {
	// ASN is this node's AS number (required).
	ASN uint32
	// RouterID is the BGP identifier; default the agent's IPv4 underlay address.
	RouterID netip.Addr
	// Peers are the routers to peer with (at least one).
	Peers []Peer
	// HoldTime of the sessions (default 90 s; 0 or at least 3 s; keepalives every third of it).
	HoldTime time.Duration
	// RestartTime is the graceful-restart time this node announces: how long a router keeps its
	// routes while the agent restarts (default the hold time, at most 4095 s). It is also how long a
	// router keeps the routes of an agent that died with its sessions closed (SIGKILL): the kernel
	// closes them, and the router cannot tell that from a restart.
	RestartTime time.Duration
	// ConnectRetry is how often an unanswered peer is tried again (default 5 s, at least 2 s).
	ConnectRetry time.Duration
	// ListenPort is the TCP port routers may connect to (0: 179; -1: connect out only).
	ListenPort int
	// PeerPort is the routers' port (0: 179).
	PeerPort int
	// AdvertiseClusterIPs advertises every service's cluster IP as a host route from this node, so
	// that clients beyond the routers reach services (kube-router's and Calico's
	// --advertise-cluster-ip).
	AdvertiseClusterIPs bool
	// WithdrawOnStop withdraws the node's routes when the speaker stops, instead of leaving them to
	// the routers for RestartTime.
	WithdrawOnStop bool
}

// Validate checks c and fills in the defaults.
func (c *Config) Validate() error {
	if c.ASN == 0 || c.ASN == 23456 || c.ASN == 4294967295 {
		return fmt.Errorf("%w: BGP needs this node's AS number (1 to 4294967294, not 23456)", ErrInvalid)
	}
	if c.RouterID.IsValid() && (!c.RouterID.Is4() || c.RouterID.IsUnspecified()) {
		return fmt.Errorf("%w: BGP router ID %v must be a non-zero IPv4 address", ErrInvalid, c.RouterID)
	}
	if len(c.Peers) == 0 {
		return fmt.Errorf("%w: BGP needs at least one peer (IP[:ASN])", ErrInvalid)
	}
	seen := map[netip.Addr]bool{}
	for _, p := range c.Peers {
		if err := checkPeerAddr(p.Addr); err != nil {
			return fmt.Errorf("BGP peer %v: %w", p.Addr, err)
		}
		if seen[p.Addr] {
			return fmt.Errorf("%w: BGP peer %v given twice", ErrInvalid, p.Addr)
		}
		seen[p.Addr] = true
	}
	switch {
	case c.HoldTime == 0:
		c.HoldTime = DefaultHoldTime
	case c.HoldTime < 3*time.Second || c.HoldTime > 65535*time.Second:
		return fmt.Errorf("%w: BGP hold time %v: must be at least 3 s (RFC 4271) and at most 65535 s", ErrInvalid, c.HoldTime)
	}
	switch {
	case c.RestartTime == 0:
		c.RestartTime = min(c.HoldTime, 4095*time.Second)
	case c.RestartTime < time.Second || c.RestartTime > 4095*time.Second:
		return fmt.Errorf("%w: BGP graceful-restart time %v: must be 1 s to 4095 s", ErrInvalid, c.RestartTime)
	}
	switch {
	case c.ConnectRetry == 0:
		c.ConnectRetry = DefaultConnectRetry
	case c.ConnectRetry < 2*time.Second:
		return fmt.Errorf("%w: BGP connect retry %v: must be at least 2 s", ErrInvalid, c.ConnectRetry)
	}
	if c.ListenPort < -1 || c.ListenPort > 65535 || c.PeerPort < 0 || c.PeerPort > 65535 {
		return fmt.Errorf("%w: BGP port out of range", ErrInvalid)
	}
	if c.ListenPort == 0 {
		c.ListenPort = DefaultPort
	}
	if c.PeerPort == 0 {
		c.PeerPort = DefaultPort
	}
	return nil
}

// ParseAdvertise parses --bgp-advertise values (cluster-ips).
func ParseAdvertise(c *Config, vals []string) error {
	for _, v := range vals {
		for _, w := range strings.Split(v, ",") {
			switch strings.TrimSpace(w) {
			case AdvertiseClusterIPs:
				c.AdvertiseClusterIPs = true
			case "":
			default:
				return fmt.Errorf("%w: --bgp-advertise %q: known: %s", ErrInvalid, w, AdvertiseClusterIPs)
			}
		}
	}
	return nil
}
