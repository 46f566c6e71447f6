package dns

import (
	"context"
	"net/netip"
	"strconv"
	"strings"

	mdns "github.com/miekg/dns"
)

// Answer answers one query from src that reached the listener of network, forwarding it upstream
// when no local name matches. It never returns nil for a request with an ID to answer.
func (s *Server) Answer(ctx context.Context, network string, src netip.Addr, r *mdns.Msg, tcp bool) *mdns.Msg {
	resp, forward := s.local(s.tab.Load(), network, src, r)
	if !forward {
		return resp
	}
	return s.fwd.forward(ctx, r, tcp)
}

func reply(r *mdns.Msg, rcode int) *mdns.Msg {
	m := new(mdns.Msg)
	m.SetRcode(r, rcode)
	m.RecursionAvailable = true
	return m
}

// local answers from the table, or says the query is to be forwarded.
func (s *Server) local(t *table, network string, src netip.Addr, r *mdns.Msg) (*mdns.Msg, bool) {
	if r.Response || r.Opcode != mdns.OpcodeQuery {
		return reply(r, mdns.RcodeNotImplemented), false
	}
	if len(r.Question) != 1 {
		return reply(r, mdns.RcodeFormatError), false
	}
	nt := t.nets[network]
	if nt == nil || !nt.serves(src) {
		// Another network's client (it could reach this gateway through the host): it sees nothing
		// of this network.
		return reply(r, mdns.RcodeRefused), false
	}
	q := r.Question[0]
	if q.Qclass != mdns.ClassINET && q.Qclass != mdns.ClassANY {
		return reply(r, mdns.RcodeRefused), false
	}
	name := strings.ToLower(q.Name)
	if a, ok := reverseAddr(name); ok {
		target, found := nt.ptr[a]
		if !found {
			target, found = t.svcPtr[a]
		}
		switch {
		case found:
			m := reply(r, mdns.RcodeSuccess)
			m.Authoritative = true
			if q.Qtype == mdns.TypePTR || q.Qtype == mdns.TypeANY {
				m.Answer = append(m.Answer, &mdns.PTR{Hdr: s.hdr(q.Name, mdns.TypePTR), Ptr: target})
			}
			return m, false
		case nt.inSubnets(a):
			m := reply(r, mdns.RcodeNameError)
			m.Authoritative = true
			return m, false
		}
	}
	addrs, found := nt.names[name]
	if !found {
		addrs, found = t.svc[name]
	}
	if found {
		m := reply(r, mdns.RcodeSuccess)
		m.Authoritative = true
		for _, a := range addrs {
			switch {
			case a.Is4() && (q.Qtype == mdns.TypeA || q.Qtype == mdns.TypeANY):
				m.Answer = append(m.Answer, &mdns.A{Hdr: s.hdr(q.Name, mdns.TypeA), A: a.AsSlice()})
			case a.Is6() && (q.Qtype == mdns.TypeAAAA || q.Qtype == mdns.TypeANY):
				m.Answer = append(m.Answer, &mdns.AAAA{Hdr: s.hdr(q.Name, mdns.TypeAAAA), AAAA: a.AsSlice()})
			}
		}
		// Another type of a local name is an empty answer (NODATA), never a forward: an AAAA for a
		// v4-only sandbox must not wait on the upstreams.
		return m, false
	}
	if name == t.domain || strings.HasSuffix(name, "."+t.domain) || strings.HasSuffix(name, ".svc.") {
		m := reply(r, mdns.RcodeNameError)
		m.Authoritative = true
		return m, false
	}
	if nt.net.Internal {
		// An internal network's traffic never leaves it; neither do its queries.
		return reply(r, mdns.RcodeRefused), false
	}
	return nil, true
}

func (s *Server) hdr(name string, t uint16) mdns.RR_Header {
	return mdns.RR_Header{Name: name, Rrtype: t, Class: mdns.ClassINET, Ttl: s.cfg.TTL}
}

// serves reports whether src is a client of the network: an address in one of its subnets.
func (nt *netTable) serves(src netip.Addr) bool {
	return src.IsValid() && nt.inSubnets(src)
}

func (nt *netTable) inSubnets(a netip.Addr) bool {
	for _, p := range nt.net.Subnets {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// reverseAddr parses a PTR name (d.c.b.a.in-addr.arpa., or 32 nibbles .ip6.arpa.).
func reverseAddr(name string) (netip.Addr, bool) {
	switch {
	case strings.HasSuffix(name, ".in-addr.arpa."):
		parts := strings.Split(strings.TrimSuffix(name, ".in-addr.arpa."), ".")
		if len(parts) != 4 {
			return netip.Addr{}, false
		}
		var b [4]byte
		for i, p := range parts {
			n, err := strconv.ParseUint(p, 10, 8)
			if err != nil || (len(p) > 1 && p[0] == '0') {
				return netip.Addr{}, false
			}
			b[3-i] = byte(n)
		}
		return netip.AddrFrom4(b), true
	case strings.HasSuffix(name, ".ip6.arpa."):
		parts := strings.Split(strings.TrimSuffix(name, ".ip6.arpa."), ".")
		if len(parts) != 32 {
			return netip.Addr{}, false
		}
		var b [16]byte
		for i, p := range parts {
			if len(p) != 1 {
				return netip.Addr{}, false
			}
			n, err := strconv.ParseUint(p, 16, 8)
			if err != nil {
				return netip.Addr{}, false
			}
			j := 31 - i
			if j%2 == 0 {
				b[j/2] |= byte(n) << 4
			} else {
				b[j/2] |= byte(n)
			}
		}
		return netip.AddrFrom16(b), true
	}
	return netip.Addr{}, false
}
