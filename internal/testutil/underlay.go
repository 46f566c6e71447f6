package testutil

import (
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/netmgr/netmgr/sandbox"
)

// Underlay is the shared segment of a cluster test (DESIGN.md's test topology): a bridge ul0 in a
// namespace of its own, to which Plug connects each host namespace by a veth (eth0 in the host).
type Underlay struct {
	NS *sandbox.NetNS
	tb testing.TB
}

// NewUnderlay makes the underlay namespace and its bridge; they go with the test.
func NewUnderlay(tb testing.TB) *Underlay {
	tb.Helper()
	u := &Underlay{NS: NewNS(tb, "underlay"), tb: tb}
	h, err := u.NS.NewHandle()
	if err != nil {
		tb.Fatal(err)
	}
	defer h.Close()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "ul0"}}
	if err := h.LinkAdd(br); err != nil {
		tb.Fatal(err)
	}
	if err := h.LinkSetUp(br); err != nil {
		tb.Fatal(err)
	}
	return u
}

// Plug puts ns (a new namespace named name when nil) on the underlay with addr/24 on its eth0, and
// returns it. The underlay's port is named after addr's last byte, so addresses must differ there.
func (u *Underlay) Plug(name string, addr netip.Addr, ns *sandbox.NetNS) *sandbox.NetNS {
	tb := u.tb
	tb.Helper()
	if ns == nil {
		ns = NewNS(tb, name)
	}
	uh, err := u.NS.NewHandle()
	if err != nil {
		tb.Fatal(err)
	}
	defer uh.Close()
	hh, err := ns.NewHandle()
	if err != nil {
		tb.Fatal(err)
	}
	defer hh.Close()
	port := fmt.Sprintf("ul-%d", addr.As4()[3])
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: port}, PeerName: "eth0", PeerNamespace: netlink.NsFd(ns.Fd())}
	if err := uh.LinkAdd(veth); err != nil {
		tb.Fatal(err)
	}
	br, err := uh.LinkByName("ul0")
	if err != nil {
		tb.Fatal(err)
	}
	pl, err := uh.LinkByName(port)
	if err != nil {
		tb.Fatal(err)
	}
	if err := uh.LinkSetMaster(pl, br); err != nil {
		tb.Fatal(err)
	}
	if err := uh.LinkSetUp(pl); err != nil {
		tb.Fatal(err)
	}
	eth, err := hh.LinkByName("eth0")
	if err != nil {
		tb.Fatal(err)
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(24, 32)}}
	if err := hh.AddrAdd(eth, a); err != nil {
		tb.Fatal(err)
	}
	if err := hh.LinkSetUp(eth); err != nil {
		tb.Fatal(err)
	}
	return ns
}
