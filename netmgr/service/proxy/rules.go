package proxy

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// TableName is the nftables table (family ip) the proxy owns.
const TableName = "netmgr_services"

// The table's fixed parts, after kube-proxy's nftables layout:
//
//	map service-ips            ipv4_addr . inet_proto . inet_service : verdict   (cluster IP -> goto svc-*)
//	map service-nodeports      inet_proto . inet_service : verdict               (node port -> goto ext-*/loc-*)
//	map no-endpoint-services   ipv4_addr . inet_proto . inet_service : verdict   (-> goto reject)
//	map no-endpoint-nodeports  inet_proto . inet_service : verdict               (-> goto reject, or drop)
//	set cluster-ips            ipv4_addr                                         (allocated cluster IPs)
//
//	chain filter-prerouting  filter prerouting dstnat-10: ct state new jump checks
//	chain filter-output      filter output dstnat-10:     ct state new jump checks
//	chain checks:   ip daddr . meta l4proto . th dport vmap @no-endpoint-services
//	                fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports
//	                ip daddr SERVICE_CIDR ip daddr != @cluster-ips drop
//	chain nat-prerouting  nat prerouting dstnat:  jump services
//	chain nat-output      nat output dstnat:      jump services
//	chain nat-postrouting nat postrouting srcnat: jump masquerading
//	chain services: ip daddr . meta l4proto . th dport vmap @service-ips
//	                fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports
//	chain mark-masq:    meta mark set meta mark | 0x4000
//	chain masquerading: meta mark & 0x4000 == 0 return; meta mark set meta mark ^ 0x4000; masquerade fully-random
//	chain reject:       meta l4proto tcp reject with tcp reset; reject
//
// and per service port (see plan): svc-NAME/PROTO/PORT (affinity lookups, then numgen random mod N vmap
// over the endpoint chains), ext-... (node port, policy Cluster: mark for masquerade, goto svc-...),
// loc-... (node port, policy Local: only this node's endpoints, no masquerade), and per endpoint
// ep-NAME/PROTO/PORT__IP/TARGET (hairpin masquerade mark, affinity update, dnat).
const (
	mapServiceIPs   = "service-ips"
	mapNodePorts    = "service-nodeports"
	mapNoEPServices = "no-endpoint-services"
	mapNoEPNodePort = "no-endpoint-nodeports"
	setClusterIPs   = "cluster-ips"

	chainChecks   = "checks"
	chainServices = "services"
	chainMarkMasq = "mark-masq"
	chainMasq     = "masquerading"
	chainReject   = "reject"

	masqMark = 0x4000

	regA    = 1 // NFT_REG_1 (16 bytes: NFT_REG32_00..03)
	reg3201 = 9 // NFT_REG32_01
	reg3202 = 10
)

var table = &nftables.Table{Name: TableName, Family: nftables.TableFamilyIPv4}

func mapSet(name string) *nftables.Set {
	switch name {
	case mapServiceIPs, mapNoEPServices:
		key, _ := nftables.ConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService)
		return &nftables.Set{Table: table, Name: name, IsMap: true, Concatenation: true, KeyType: key, DataType: nftables.TypeVerdict}
	case mapNodePorts, mapNoEPNodePort:
		key, _ := nftables.ConcatSetType(nftables.TypeInetProto, nftables.TypeInetService)
		return &nftables.Set{Table: table, Name: name, IsMap: true, Concatenation: true, KeyType: key, DataType: nftables.TypeVerdict}
	case setClusterIPs:
		return &nftables.Set{Table: table, Name: name, KeyType: nftables.TypeIPAddr}
	}
	panic("proxy: unknown map " + name)
}

func affinitySet(name string, timeout time.Duration) *nftables.Set {
	return &nftables.Set{Table: table, Name: name, KeyType: nftables.TypeIPAddr, HasTimeout: true, Dynamic: true, Timeout: timeout}
}

func chain(name string) *nftables.Chain { return &nftables.Chain{Name: name, Table: table} }

func protoNum(p string) byte {
	if p == "udp" {
		return unix.IPPROTO_UDP
	}
	return unix.IPPROTO_TCP
}

// keyAddrProtoPort is the key of service-ips: each field of a concatenation takes whole 4-byte registers.
func keyAddrProtoPort(a netip.Addr, proto string, port uint16) []byte {
	b := make([]byte, 12)
	copy(b, a.AsSlice())
	b[4] = protoNum(proto)
	binary.BigEndian.PutUint16(b[8:], port)
	return b
}

func keyProtoPort(proto string, port uint16) []byte {
	b := make([]byte, 8)
	b[0] = protoNum(proto)
	binary.BigEndian.PutUint16(b[4:], port)
	return b
}

// rule is one rule of a service's chains, in a form that can be compared.
type rule struct {
	kind    string     // "hairpin", "dnat", "markmasq", "goto", "lb", "affcheck", "affupdate"
	ip      netip.Addr // hairpin, dnat
	port    uint16     // dnat
	proto   string     // dnat
	chain   string     // goto, affcheck
	set     string     // affcheck, affupdate
	timeout time.Duration
	chains  []string // lb
}

func (r rule) String() string {
	return fmt.Sprintf("%s %s %d %s %s %s %v %s", r.kind, r.ip, r.port, r.proto, r.chain, r.set, r.timeout, strings.Join(r.chains, ","))
}

func verdict(kind expr.VerdictKind, chain string) *expr.Verdict {
	return &expr.Verdict{Kind: kind, Chain: chain}
}

func saddr(reg uint32) *expr.Payload {
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4}
}

func daddr(reg uint32) *expr.Payload {
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4}
}

// render turns r into expressions; lb also needs its anonymous map added first (returned).
func (r rule) render() ([]expr.Any, *nftables.Set, []nftables.SetElement) {
	switch r.kind {
	case "hairpin": // ip saddr IP jump mark-masq
		return []expr.Any{saddr(regA), &expr.Cmp{Op: expr.CmpOpEq, Register: regA, Data: r.ip.AsSlice()},
			verdict(expr.VerdictJump, chainMarkMasq)}, nil, nil
	case "dnat": // meta l4proto P dnat to IP:PORT
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: regA},
			&expr.Cmp{Op: expr.CmpOpEq, Register: regA, Data: []byte{protoNum(r.proto)}},
			&expr.Immediate{Register: regA, Data: r.ip.AsSlice()},
			&expr.Immediate{Register: reg3201, Data: binaryutil.BigEndian.PutUint16(r.port)},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: regA, RegProtoMin: reg3201, Specified: true},
		}, nil, nil
	case "markmasq":
		return []expr.Any{verdict(expr.VerdictJump, chainMarkMasq)}, nil, nil
	case "goto":
		return []expr.Any{verdict(expr.VerdictGoto, r.chain)}, nil, nil
	case "affcheck": // ip saddr @SET goto CHAIN
		return []expr.Any{saddr(regA), &expr.Lookup{SourceRegister: regA, SetName: r.set},
			verdict(expr.VerdictGoto, r.chain)}, nil, nil
	case "affupdate": // update @SET { ip saddr }
		return []expr.Any{saddr(regA), &expr.Dynset{SrcRegKey: regA, SetName: r.set, Operation: unix.NFT_DYNSET_OP_UPDATE, Timeout: r.timeout}}, nil, nil
	case "lb": // numgen random mod N vmap { 0 : goto C0, ... }
		m := &nftables.Set{Table: table, Anonymous: true, Constant: true, IsMap: true, KeyType: nftables.TypeInteger, DataType: nftables.TypeVerdict}
		elems := make([]nftables.SetElement, len(r.chains))
		for i, c := range r.chains {
			elems[i] = nftables.SetElement{Key: binaryutil.NativeEndian.PutUint32(uint32(i)), VerdictData: verdict(expr.VerdictGoto, c)}
		}
		return []expr.Any{
			&expr.Numgen{Register: regA, Modulus: uint32(len(r.chains)), Type: unix.NFT_NG_RANDOM},
			&expr.Lookup{SourceRegister: regA, DestRegister: 0, IsDestRegSet: true, SetName: "__map%d"}, // set ID filled in by addRule
		}, m, elems
	}
	panic("proxy: unknown rule " + r.kind)
}

// fixed returns the table's fixed sets, chains and rules for the service CIDR cidr (invalid: none).
func fixedChains() []*nftables.Chain {
	pri := func(p int32) *nftables.ChainPriority { return nftables.ChainPriorityRef(nftables.ChainPriority(p)) }
	accept := nftables.ChainPolicyAccept
	return []*nftables.Chain{
		{Name: chainChecks, Table: table},
		{Name: chainServices, Table: table},
		{Name: chainMarkMasq, Table: table},
		{Name: chainMasq, Table: table},
		{Name: chainReject, Table: table},
		{Name: "filter-prerouting", Table: table, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookPrerouting, Priority: pri(-110), Policy: &accept},
		{Name: "filter-output", Table: table, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookOutput, Priority: pri(-110), Policy: &accept},
		{Name: "nat-prerouting", Table: table, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPrerouting, Priority: pri(-100), Policy: &accept},
		{Name: "nat-output", Table: table, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookOutput, Priority: pri(-100), Policy: &accept},
		{Name: "nat-postrouting", Table: table, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPostrouting, Priority: pri(100), Policy: &accept},
	}
}

func ctNew() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: regA, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: regA, DestRegister: regA, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitNEW), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: regA, Data: make([]byte, 4)},
	}
}

// vmapAddrProtoPort: ip daddr . meta l4proto . th dport vmap @m
func vmapAddrProtoPort(m string) []expr.Any {
	return []expr.Any{
		daddr(regA),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg3201},
		&expr.Payload{DestRegister: reg3202, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: regA, DestRegister: 0, IsDestRegSet: true, SetName: m},
	}
}

// vmapLocalProtoPort: fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @m
func vmapLocalProtoPort(m string) []expr.Any {
	return []expr.Any{
		&expr.Fib{Register: regA, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: regA, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
		daddr(regA),
		&expr.Bitwise{SourceRegister: regA, DestRegister: regA, Len: 4, Mask: []byte{255, 0, 0, 0}, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: regA, Data: []byte{127, 0, 0, 0}},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: regA},
		&expr.Payload{DestRegister: reg3201, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: regA, DestRegister: 0, IsDestRegSet: true, SetName: m},
	}
}

func fixedRules(cidr netip.Prefix) map[string][][]expr.Any {
	mark := func(mask, xor uint32) []expr.Any {
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyMARK, Register: regA},
			&expr.Bitwise{SourceRegister: regA, DestRegister: regA, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(mask), Xor: binaryutil.NativeEndian.PutUint32(xor)},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: regA},
		}
	}
	checks := [][]expr.Any{vmapAddrProtoPort(mapNoEPServices), vmapLocalProtoPort(mapNoEPNodePort)}
	if cidr.IsValid() && cidr.Addr().Is4() {
		checks = append(checks, []expr.Any{
			daddr(regA),
			&expr.Bitwise{SourceRegister: regA, DestRegister: regA, Len: 4,
				Mask: net4Mask(cidr.Bits()), Xor: make([]byte, 4)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: regA, Data: cidr.Masked().Addr().AsSlice()},
			daddr(regA),
			&expr.Lookup{SourceRegister: regA, SetName: setClusterIPs, Invert: true},
			verdict(expr.VerdictDrop, ""),
		})
	}
	return map[string][][]expr.Any{
		chainChecks:   checks,
		chainServices: {vmapAddrProtoPort(mapServiceIPs), vmapLocalProtoPort(mapNodePorts)},
		chainMarkMasq: {mark(^uint32(masqMark), masqMark)},
		chainMasq: {
			{
				&expr.Meta{Key: expr.MetaKeyMARK, Register: regA},
				&expr.Bitwise{SourceRegister: regA, DestRegister: regA, Len: 4,
					Mask: binaryutil.NativeEndian.PutUint32(masqMark), Xor: make([]byte, 4)},
				&expr.Cmp{Op: expr.CmpOpEq, Register: regA, Data: make([]byte, 4)},
				verdict(expr.VerdictReturn, ""),
			},
			append(mark(^uint32(0), masqMark), &expr.Masq{FullyRandom: true}),
		},
		chainReject: {
			{
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: regA},
				&expr.Cmp{Op: expr.CmpOpEq, Register: regA, Data: []byte{unix.IPPROTO_TCP}},
				&expr.Reject{Type: unix.NFT_REJECT_TCP_RST},
			},
			{&expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: 3}}, // port unreachable
		},
		"filter-prerouting": {append(ctNew(), verdict(expr.VerdictJump, chainChecks))},
		"filter-output":     {append(ctNew(), verdict(expr.VerdictJump, chainChecks))},
		"nat-prerouting":    {{verdict(expr.VerdictJump, chainServices)}},
		"nat-output":        {{verdict(expr.VerdictJump, chainServices)}},
		"nat-postrouting":   {{verdict(expr.VerdictJump, chainMasq)}},
	}
}

func net4Mask(bits int) []byte {
	m := make([]byte, 4)
	binary.BigEndian.PutUint32(m, ^uint32(0)<<(32-bits))
	return m
}
