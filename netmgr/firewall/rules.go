package firewall

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

const (
	chainForward     = "forward"
	chainPostrouting = "postrouting"
	chainHairpin     = "hairpin"
	chainInput       = "input"
	setIfaces        = "ifaces"

	commentPrefix = "network="

	// ifacesSetID names the set within the batch so that rules in the same
	// batch can refer to it. It is chosen here because AddSet's own
	// allocator is a package-level counter that is not safe for concurrent
	// use by several Conns.
	ifacesSetID = 1

	// All expressions use one register; nft itself does the same.
	reg = 1
)

func table() *nftables.Table {
	return &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
}

// queueDeleteTable queues the deletion of the netmgr table. The table is
// added first so that the deletion succeeds whether or not it existed.
func queueDeleteTable(c *nftables.Conn) *nftables.Table {
	t := table()
	c.AddTable(t)
	c.DelTable(t)
	return t
}

// queueRuleset queues the replacement of the netmgr table by the ruleset for
// nets, which must be normalized, and returns the number of rules queued.
func queueRuleset(c *nftables.Conn, nets []Network) (int, error) {
	t := queueDeleteTable(c)
	if len(nets) == 0 {
		// Published ports target sandboxes on bridge networks: with no network left, none remain.
		queueDeletePortsTable(c)
		return 0, nil
	}
	c.AddTable(t)

	accept := nftables.ChainPolicyAccept
	forward := c.AddChain(&nftables.Chain{
		Name:     chainForward,
		Table:    t,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookForward,
		Priority: nftables.ChainPriorityFilter,
		Policy:   &accept,
	})
	postrouting := c.AddChain(&nftables.Chain{
		Name:     chainPostrouting,
		Table:    t,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityNATSource,
		Policy:   &accept,
	})
	hairpin := c.AddChain(&nftables.Chain{
		Name:     chainHairpin,
		Table:    t,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityNATSource,
		Policy:   &accept,
	})

	input := c.AddChain(&nftables.Chain{
		Name:     chainInput,
		Table:    t,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookInput,
		Priority: nftables.ChainPriorityFilter,
		Policy:   &accept,
	})

	// The host interfaces of every network, for the rule that keeps networks apart.
	ifaces := &nftables.Set{
		Table:   t,
		ID:      ifacesSetID,
		Name:    setIfaces,
		KeyType: nftables.TypeIFName,
		// nft records ifname sets as host byte order; without it nft
		// cannot print the elements as strings.
		KeyByteOrder: binaryutil.NativeEndian,
	}
	elems := make([]nftables.SetElement, 0, len(nets))
	var globs []string // wildcard names, which an exact-match set cannot hold
	for _, n := range nets {
		for _, i := range n.Ifaces {
			if isWildcard(i) {
				globs = append(globs, i)
				continue
			}
			elems = append(elems, nftables.SetElement{Key: ifname(i)})
		}
	}
	if err := c.AddSet(ifaces, elems); err != nil {
		return 0, fmt.Errorf("add set %s: %w", setIfaces, err)
	}

	var count int
	add := func(ch *nftables.Chain, n Network, exprs []expr.Any) {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: exprs, UserData: networkUserData(n.Name)})
		count++
	}
	for _, n := range nets {
		for _, exprs := range forwardRules(n, ifaces, globs) {
			add(forward, n, exprs)
		}
		for _, exprs := range postroutingRules(n) {
			add(postrouting, n, exprs)
		}
		for _, exprs := range hairpinRules(n) {
			add(hairpin, n, exprs)
		}
		for _, exprs := range inputRules(n) {
			add(input, n, exprs)
		}
	}
	return count, nil
}

func forwardRules(n Network, ifaces *nftables.Set, globs []string) [][]expr.Any {
	var rules [][]expr.Any
	for _, b := range n.Ifaces { // B is one interface of the network, !N none of them
		if n.Internal {
			rules = append(rules,
				// iifname B oifname !N drop
				concat(ifnameCmp(expr.MetaKeyIIFNAME, expr.CmpOpEq, b), notIn(expr.MetaKeyOIFNAME, n.Ifaces), drop()),
				// oifname B iifname !N drop
				concat(ifnameCmp(expr.MetaKeyOIFNAME, expr.CmpOpEq, b), notIn(expr.MetaKeyIIFNAME, n.Ifaces), drop()),
			)
		}
		// iifname B oifname !N oifname @ifaces drop
		rules = append(rules, concat(
			ifnameCmp(expr.MetaKeyIIFNAME, expr.CmpOpEq, b),
			notIn(expr.MetaKeyOIFNAME, n.Ifaces),
			[]expr.Any{
				&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: reg},
				&expr.Lookup{SourceRegister: reg, SetName: ifaces.Name, SetID: ifaces.ID},
			},
			drop(),
		))
		// The other networks' wildcard names, which the set cannot hold (normalize keeps a
		// wildcard from matching another network's names):
		// iifname B oifname G drop
		for _, g := range globs {
			if !slices.Contains(n.Ifaces, g) {
				rules = append(rules, concat(
					ifnameCmp(expr.MetaKeyIIFNAME, expr.CmpOpEq, b),
					ifnameCmp(expr.MetaKeyOIFNAME, expr.CmpOpEq, g),
					drop(),
				))
			}
		}
		if !n.Internal && !n.Routed {
			// Connections from elsewhere into the network only through a published port (the ports
			// table's DNAT), or as replies (established and related, which also covers ICMP errors).
			// Hairpin traffic enters from the network itself and the host's own from no interface, so
			// neither meets this rule. IPv4 and IPv6 alike: no family match.
			// A packet without a conntrack entry (invalid, untracked) has no status to test, and the
			// status rule would not match it, so the first rule drops those.
			//
			// oifname B iifname !N ct state invalid,untracked drop
			// oifname B iifname !N ct status & dnat == 0 ct state & (established|related) == 0 drop
			rules = append(rules, concat(
				ifnameCmp(expr.MetaKeyOIFNAME, expr.CmpOpEq, b),
				notIn(expr.MetaKeyIIFNAME, n.Ifaces),
				[]expr.Any{
					&expr.Ct{Register: reg, Key: expr.CtKeySTATE},
					&expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: 4,
						Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitINVALID | expr.CtStateBitUNTRACKED), Xor: make([]byte, 4)},
					&expr.Cmp{Op: expr.CmpOpNeq, Register: reg, Data: make([]byte, 4)},
				},
				drop(),
			), concat(
				ifnameCmp(expr.MetaKeyOIFNAME, expr.CmpOpEq, b),
				notIn(expr.MetaKeyIIFNAME, n.Ifaces),
				ctBitsZero(expr.CtKeySTATUS, ipsDstNAT),
				ctBitsZero(expr.CtKeySTATE, expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED),
				drop(),
			))
		}
	}
	return rules
}

// notIn matches packets whose interface (key: iifname or oifname) is none of names.
func notIn(key expr.MetaKey, names []string) []expr.Any {
	var out []expr.Any
	for _, name := range names {
		out = append(out, ifnameCmp(key, expr.CmpOpNeq, name)...)
	}
	return out
}

// inputRules keep an internal network's sandboxes off the host itself: forward rules alone would
// still let them reach every address of the host through the gateway (FAULTS §16). Replies to the
// host's own connections come back, and so does IPv6 neighbour discovery, without which the host
// could not resolve a sandbox's address (ARP is not IP and never meets these rules). DHCP is not
// used. Services that netmgr itself may later serve on the gateway (DNS) are to be accepted here,
// in a rule before the drop.
func inputRules(n Network) [][]expr.Any {
	if !n.Internal {
		return nil
	}
	var rules [][]expr.Any
	for _, b := range n.Ifaces {
		for _, typ := range []byte{135, 136} { // nd-neighbor-solicit, nd-neighbor-advert
			// iifname B icmpv6 type T accept
			rules = append(rules, concat(
				ifnameCmp(expr.MetaKeyIIFNAME, expr.CmpOpEq, b),
				[]expr.Any{
					&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg},
					&expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: []byte{unix.NFPROTO_IPV6}},
					&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg},
					&expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: []byte{unix.IPPROTO_ICMPV6}},
					&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
					&expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: []byte{typ}},
					&expr.Verdict{Kind: expr.VerdictAccept},
				},
			))
		}
		// iifname B ct state & (established|related) == 0 drop
		rules = append(rules, concat(
			ifnameCmp(expr.MetaKeyIIFNAME, expr.CmpOpEq, b),
			ctBitsZero(expr.CtKeySTATE, expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED),
			drop(),
		))
	}
	return rules
}

// ctBitsZero matches packets whose conntrack key (status or state) has none of the bits of mask.
func ctBitsZero(key expr.CtKey, mask uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: reg, Key: key},
		&expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(mask), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: make([]byte, 4)},
	}
}

func postroutingRules(n Network) [][]expr.Any {
	// Without an interface of its own there is no "leaving the network" to tell from traffic between
	// its sandboxes, so such a network gets no masquerade from here.
	if !n.Masquerade || n.Internal || len(n.Ifaces) == 0 {
		return nil
	}
	rules := make([][]expr.Any, 0, len(n.Subnets))
	for _, p := range n.Subnets {
		// meta nfproto ipvX ip[6] saddr S oifname !N [ip[6] daddr != D]... masquerade
		var keep []expr.Any
		for _, d := range n.NoMasqueradeTo {
			if d.Addr().Is4() == p.Addr().Is4() {
				keep = append(keep, daddrNotIn(d)...)
			}
		}
		rules = append(rules, concat(
			saddrMatch(p),
			notIn(expr.MetaKeyOIFNAME, n.Ifaces),
			keep,
			[]expr.Any{&expr.Masq{}},
		))
	}
	return rules
}

// daddrNotIn matches packets whose destination address is outside p, in a rule that has matched
// p's family already (saddrMatch): nft's "ip daddr != P".
func daddrNotIn(p netip.Prefix) []expr.Any {
	exprs := daddrMatch(p)[2:] // without the family check
	exprs[len(exprs)-1].(*expr.Cmp).Op = expr.CmpOpNeq
	return exprs
}

// normalizeNoMasquerade validates n.NoMasqueradeTo and returns it masked, sorted and without
// duplicates, so that equal inputs give equal rulesets.
func normalizeNoMasquerade(n Network) ([]netip.Prefix, error) {
	if len(n.NoMasqueradeTo) == 0 {
		return nil, nil
	}
	out := make([]netip.Prefix, 0, len(n.NoMasqueradeTo))
	for _, p := range n.NoMasqueradeTo {
		if !p.IsValid() || p.Addr().Is4In6() {
			return nil, fmt.Errorf("network %q: no-masquerade destination %q is not a valid IPv4 or IPv6 prefix: %w", n.Name, p, ErrInvalid)
		}
		out = append(out, p.Masked())
	}
	slices.SortFunc(out, comparePrefix)
	return slices.Compact(out), nil
}

// hairpinRules masquerade connections from a network's pods that were translated (a published port
// or a service reached through a host address) back to a pod on the same network. Without it the
// target would answer the client directly over the bridge, from an address the client never asked.
// Unlike postroutingRules they apply whatever Masquerade says, since no traffic leaves the network.
func hairpinRules(n Network) [][]expr.Any {
	if n.Internal {
		return nil
	}
	ifaces := n.Ifaces
	if n.HairpinIfaces != nil {
		ifaces = n.HairpinIfaces
	}
	rules := make([][]expr.Any, 0, len(n.Subnets)*len(ifaces))
	for _, b := range ifaces {
		for _, p := range n.Subnets {
			// ct status dnat meta nfproto ipvX ip[6] saddr S oifname B masquerade
			rules = append(rules, concat(
				ctStatusDNAT(),
				saddrMatch(p),
				ifnameCmp(expr.MetaKeyOIFNAME, expr.CmpOpEq, b),
				[]expr.Any{&expr.Masq{}},
			))
		}
	}
	return rules
}

// ifnameCmp compares an interface name the way nft does: a name without a
// wildcard over all IFNAMSIZ bytes, zero padded, so "br1" does not match
// "br10"; a wildcard "P*" over the bytes of P only, so that it matches every
// name that starts with P.
func ifnameCmp(key expr.MetaKey, op expr.CmpOp, name string) []expr.Any {
	data := ifname(name)
	if isWildcard(name) {
		data = []byte(strings.TrimSuffix(name, "*"))
	}
	return []expr.Any{
		&expr.Meta{Key: key, Register: reg},
		&expr.Cmp{Op: op, Register: reg, Data: data},
	}
}

// isWildcard reports whether an interface name of Network.Ifaces is a prefix
// wildcard ("nmr1a2b*").
func isWildcard(name string) bool { return strings.HasSuffix(name, "*") }

func ifname(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

// saddrMatch matches packets whose source address is in p. In an inet table
// the network header may be IPv4 or IPv6, so the protocol is checked first,
// as nft does for "ip saddr" and "ip6 saddr".
func saddrMatch(p netip.Prefix) []expr.Any {
	proto, offset := byte(unix.NFPROTO_IPV4), uint32(12) // iphdr.saddr
	if p.Addr().Is6() {
		proto, offset = unix.NFPROTO_IPV6, 8 // ipv6hdr.saddr
	}
	size := uint32(p.Addr().BitLen() / 8)
	exprs := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: []byte{proto}},
		&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: size},
	}
	if p.Bits() < p.Addr().BitLen() {
		exprs = append(exprs, &expr.Bitwise{
			SourceRegister: reg,
			DestRegister:   reg,
			Len:            size,
			Mask:           prefixMask(p.Bits(), int(size)),
			Xor:            make([]byte, size),
		})
	}
	return append(exprs, &expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: p.Addr().AsSlice()})
}

func prefixMask(bits, size int) []byte {
	m := make([]byte, size)
	for i := range m {
		switch {
		case bits >= 8:
			m[i] = 0xff
			bits -= 8
		case bits > 0:
			m[i] = ^byte(0xff >> bits)
			bits = 0
		}
	}
	return m
}

func drop() []expr.Any {
	return []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}
}

func concat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// networkUserData encodes name as a libnftnl comment, which nft shows as
// `comment "network=<name>"`.
func networkUserData(name string) []byte {
	return userdata.AppendString(nil, userdata.TypeComment, commentPrefix+name)
}

// networkFromUserData decodes what networkUserData encodes. It walks the TLVs
// itself because userdata.Get panics on a truncated TLV, and UserData is
// whatever the last writer of the table put there.
func networkFromUserData(ud []byte) (string, bool) {
	for len(ud) >= 2 {
		typ, n := userdata.Type(ud[0]), int(ud[1])
		if len(ud) < 2+n {
			return "", false
		}
		if typ == userdata.TypeComment {
			comment, _ := bytes.CutSuffix(ud[2:2+n], []byte{0})
			name, ok := strings.CutPrefix(string(comment), commentPrefix)
			if !ok || name == "" {
				return "", false
			}
			return name, true
		}
		ud = ud[2+n:]
	}
	return "", false
}
