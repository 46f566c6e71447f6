package testutil

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/netmgr/netmgr/sandbox"
)

// Router is a routing namespace between segments ("racks"): each segment is a bridge in the router's
// namespace that carries the segment's gateway addresses, and hosts plug into a segment by a veth.
// IPv4 and IPv6 forwarding are on in the router's namespace (and only there), so hosts on different
// segments reach each other through it. Run a BGP router in it with StartBird.
type Router struct {
	NS   *sandbox.NetNS
	Name string
	tb   testing.TB
	segs map[string]*Segment
}

// Segment is one bridge of a Router. Prefix and Gateway are the first prefix given to AddSegment and
// the gateway on it (the prefix's first address); Prefixes and Gateways list every family given.
type Segment struct {
	Name     string // also the bridge's name in the router namespace
	Prefix   netip.Prefix
	Gateway  netip.Addr
	Prefixes []netip.Prefix
	Gateways []netip.Addr
	r        *Router
	ports    int
}

// NewRouter makes the router namespace (named name, gone with the test) with forwarding on.
func NewRouter(tb testing.TB, name string) *Router {
	tb.Helper()
	r := &Router{NS: NewNS(tb, name), Name: name, tb: tb, segs: map[string]*Segment{}}
	err := r.NS.Do(func() error {
		// /proc/sys/net resolves to the namespace of the thread that opens it: this one's.
		for _, k := range []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"} {
			if err := os.WriteFile(k, []byte("1"), 0o644); err != nil {
				return fmt.Errorf("router %s: %w", name, err)
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return r
}

// AddSegment adds a segment: a bridge named name in the router namespace with the first address of
// each prefix as the segment's gateway (172.31.1.0/24 gives 172.31.1.1/24). Give at most one prefix
// per family (an IPv4 and an IPv6 one make a dual-stack segment). name is at most 10 characters, so
// that the ports named after it (name-N) fit an interface name.
func (r *Router) AddSegment(name string, prefixes ...netip.Prefix) *Segment {
	tb := r.tb
	tb.Helper()
	if name == "" || len(name) > 10 {
		tb.Fatalf("segment name %q: want 1 to 10 characters", name)
	}
	if r.segs[name] != nil {
		tb.Fatalf("segment %q added twice", name)
	}
	if len(prefixes) == 0 || len(prefixes) > 2 || (len(prefixes) == 2 && prefixes[0].Addr().Is4() == prefixes[1].Addr().Is4()) {
		tb.Fatalf("segment %s: want one prefix, or one IPv4 and one IPv6 prefix, got %v", name, prefixes)
	}
	s := &Segment{Name: name, r: r}
	for _, p := range prefixes {
		p = p.Masked()
		gw := p.Addr().Next()
		if !p.IsValid() || !p.Contains(gw) || !p.Contains(gw.Next()) {
			tb.Fatalf("segment %s: prefix %v has no room for a gateway and a host", name, p)
		}
		s.Prefixes = append(s.Prefixes, p)
		s.Gateways = append(s.Gateways, gw)
	}
	s.Prefix, s.Gateway = s.Prefixes[0], s.Gateways[0]
	h, err := r.NS.Handle()
	if err != nil {
		tb.Fatal(err)
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if err := h.LinkAdd(br); err != nil {
		tb.Fatalf("segment %s: add bridge: %v", name, err)
	}
	for i, p := range s.Prefixes {
		if err := addAddr(h, br, s.Gateways[i], p.Bits()); err != nil {
			tb.Fatalf("segment %s: %v", name, err)
		}
	}
	if err := h.LinkSetUp(br); err != nil {
		tb.Fatal(err)
	}
	r.segs[name] = s
	return s
}

// Plug puts ns (a new namespace named name when nil) on the segment with addr on a new ethN (eth0
// for a namespace's first plug), and a default route via the segment's gateway unless ns has one of
// that family already. It returns ns.
func (s *Segment) Plug(name string, addr netip.Addr, ns *sandbox.NetNS) *sandbox.NetNS {
	s.r.tb.Helper()
	return s.PlugAddrs(name, ns, addr)
}

// PlugAddrs is Plug with an address of each of the segment's families (a dual-stack host).
func (s *Segment) PlugAddrs(name string, ns *sandbox.NetNS, addrs ...netip.Addr) *sandbox.NetNS {
	tb := s.r.tb
	tb.Helper()
	if len(addrs) == 0 {
		tb.Fatalf("plug %s into %s: no address", name, s.Name)
	}
	bits := make([]int, len(addrs))
	gws := make([]netip.Addr, len(addrs))
	for i, a := range addrs {
		for j, p := range s.Prefixes {
			if p.Contains(a) && a != s.Gateways[j] {
				bits[i], gws[i] = p.Bits(), s.Gateways[j]
			}
		}
		if !gws[i].IsValid() {
			tb.Fatalf("plug %s into %s: %v is not a host address of %v", name, s.Name, a, s.Prefixes)
		}
	}
	if ns == nil {
		ns = NewNS(tb, name)
	}
	rh, err := s.r.NS.Handle()
	if err != nil {
		tb.Fatal(err)
	}
	hh, err := ns.NewHandle()
	if err != nil {
		tb.Fatal(err)
	}
	defer hh.Close()
	dev := ""
	for i := 0; dev == ""; i++ {
		if _, err := hh.LinkByName(fmt.Sprintf("eth%d", i)); err != nil {
			dev = fmt.Sprintf("eth%d", i)
		}
	}
	s.ports++
	port := fmt.Sprintf("%s-%d", s.Name, s.ports)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: port}, PeerName: dev, PeerNamespace: netlink.NsFd(ns.Fd())}
	if err := rh.LinkAdd(veth); err != nil {
		tb.Fatalf("plug %s into %s: %v", name, s.Name, err)
	}
	br, err := rh.LinkByName(s.Name)
	if err != nil {
		tb.Fatal(err)
	}
	pl, err := rh.LinkByName(port)
	if err != nil {
		tb.Fatal(err)
	}
	if err := rh.LinkSetMaster(pl, br); err != nil {
		tb.Fatal(err)
	}
	if err := rh.LinkSetUp(pl); err != nil {
		tb.Fatal(err)
	}
	eth, err := hh.LinkByName(dev)
	if err != nil {
		tb.Fatal(err)
	}
	for i, a := range addrs {
		if err := addAddr(hh, eth, a, bits[i]); err != nil {
			tb.Fatalf("plug %s into %s: %v", name, s.Name, err)
		}
	}
	if err := hh.LinkSetUp(eth); err != nil {
		tb.Fatal(err)
	}
	for i, a := range addrs {
		family := netlink.FAMILY_V4
		dst := &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}
		if !a.Is4() {
			family = netlink.FAMILY_V6
			dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
		}
		routes, err := hh.RouteListFiltered(family, &netlink.Route{Dst: dst}, netlink.RT_FILTER_DST)
		if err != nil {
			tb.Fatal(err)
		}
		if len(routes) > 0 {
			continue
		}
		if err := hh.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Dst: dst, Gw: gws[i].AsSlice()}); err != nil {
			tb.Fatalf("plug %s into %s: default route via %v: %v", name, s.Name, gws[i], err)
		}
	}
	return ns
}

// addAddr puts addr/bits on l, without duplicate address detection (an IPv6 address is usable at once).
func addAddr(h *netlink.Handle, l netlink.Link, addr netip.Addr, bits int) error {
	a := &netlink.Addr{IPNet: &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(bits, addr.BitLen())}}
	if !addr.Is4() {
		a.Flags = 0x02 // IFA_F_NODAD
	}
	if err := h.AddrAdd(l, a); err != nil {
		return fmt.Errorf("add %v/%d to %s: %w", addr, bits, l.Attrs().Name, err)
	}
	return nil
}
