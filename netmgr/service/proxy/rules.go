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

// TableName is the nftables table the proxy owns: one of family ip for IPv4 services and one of
// family ip6, of the same name and layout, for IPv6 services (a service has one cluster IP, of one
// family). Two tables rather than one inet table: every set keeps one key type, and a change
// touches the elements of its own family's table only, so its cost stays O(1) in either.
const TableName = "netmgr_services"

// The table's fixed parts (the ip table's; the ip6 table has the same with ipv6_addr, ip6 daddr and
// ::1 for 127.0.0.0/8), after kube-proxy's nftables layout but with most services in maps only
// (no chain of their own), so that a change is set elements, never rules:
//
//	set cluster-ips            ipv4_addr                                  allocated cluster IPs
//	set no-endpoints           ipv4_addr . inet_proto . inet_service      cluster IP ports with no endpoint: reject
//	set np-reject / np-drop    inet_proto . inet_service                  node ports with no endpoint (Local: drop)
//	set size-M                 ipv4_addr . inet_proto . inet_service      cluster IP ports with M endpoints (1..maxMapped)
//	map backends               ipv4_addr . inet_proto . inet_service . integer : ipv4_addr . inet_service
//	                           (cluster IP port, slot 0..M-1) -> endpoint
//	set np-size-M, map np-backends   the same for node ports (policy Local: this node's endpoints only)
//	set np-masq                inet_proto . inet_service                  node ports of policy Cluster: masquerade
//	set hairpin                ipv4_addr . ipv4_addr                      (endpoint, endpoint): a pod reaching itself
//	map service-ips            ipv4_addr . inet_proto . inet_service : verdict   chained services (below)
//	map service-nodeports      inet_proto . inet_service : verdict
//
//	chain filter-prerouting  filter prerouting dstnat-10: ct state new jump checks
//	chain filter-output      filter output dstnat-10:     ct state new jump checks
//	chain checks:   meta l4proto tcp ip daddr . meta l4proto . th dport @no-endpoints reject with tcp reset
//	                ip daddr . meta l4proto . th dport @no-endpoints reject
//	                fib daddr type local ... meta l4proto . th dport @np-reject reject (tcp reset first), @np-drop drop
//	                ip daddr SERVICE_CIDR ip daddr != @cluster-ips drop
//	chain nat-prerouting / nat-output (dstnat): jump services;  nat-postrouting (srcnat): jump masquerading
//	                (nat-output first: ip daddr @cluster-ips jump mark-masq: the host's own connections)
//	chain services: ip daddr != @cluster-ips fib daddr type != local return
//	                ip daddr . meta l4proto . th dport vmap @service-ips
//	                fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports
//	                fib daddr type local ... meta l4proto . th dport @np-masq jump mark-masq
//	                for M in 1..maxMapped: ip daddr . meta l4proto . th dport @size-M
//	                    dnat to ip daddr . meta l4proto . th dport . numgen random mod M map @backends
//	                for M in 1..maxMapped: fib daddr type local ... meta l4proto . th dport @np-size-M
//	                    dnat to meta l4proto . th dport . numgen random mod M map @np-backends
//	chain mark-masq:    meta mark set meta mark | 0x4000
//	chain masquerading: ct status dnat ip saddr . ip daddr @hairpin masquerade
//	                    meta mark & 0x4000 == 0 return; meta mark set meta mark ^ 0x4000; masquerade fully-random
//
// A set element is no rule and jumps nowhere, so the kernel does not re-validate the table's chain
// graph when one changes (it does for every rule or verdict element added: a walk of every chain
// reachable from the base chains, which made each change cost O(services) in the first cut). A
// service with ClientIP affinity or more than maxMapped endpoints is chained instead, as kube-proxy
// does every service (see plan): svc-NAME/PROTO/PORT (affinity lookups, then numgen random mod N vmap
// over endpoint chains), ext-... (node port, policy Cluster: mark for masquerade, goto svc-...),
// loc-... (policy Local: this node's endpoints), and per endpoint ep-NAME/PROTO/PORT__IP/TARGET
// (hairpin mark, affinity update, dnat); the maps service-ips and service-nodeports lead to them.
const (
	mapServiceIPs   = "service-ips"
	mapNodePorts    = "service-nodeports"
	setNoEndpoints  = "no-endpoints"
	setNPReject     = "np-reject"
	setNPDrop       = "np-drop"
	setClusterIPs   = "cluster-ips"
	mapBackends     = "backends"
	mapNPBackends   = "np-backends"
	setNPMasq       = "np-masq"
	setHairpin      = "hairpin"
	setSizePrefix   = "size-"
	setNPSizePrefix = "np-size-"

	chainChecks   = "checks"
	chainServices = "services"
	chainMarkMasq = "mark-masq"
	chainMasq     = "masquerading"
	// chainFromOutside marks for masquerade a connection to a cluster IP from outside every pod
	// network (a client beyond the routers, which reach cluster IPs advertised by BGP): the
	// backend may be on another node, whose answer must come back through this one.
	chainFromOutside = "from-outside"

	masqMark = 0x4000

	// maxMapped is the most endpoints a service port has in the maps; past it, the service is chained.
	maxMapped = 32

	regA    = 1 // NFT_REG_1 (16 bytes: NFT_REG32_00..03)
	reg3201 = 9 // NFT_REG32_01
	reg3202 = 10
	reg3203 = 11
)

var (
	table4 = &nftables.Table{Name: TableName, Family: nftables.TableFamilyIPv4}
	table6 = &nftables.Table{Name: TableName, Family: nftables.TableFamilyIPv6}
)

// tableOf is the table of one family.
func tableOf(v6 bool) *nftables.Table {
	if v6 {
		return table6
	}
	return table4
}

// addrType and addrLen are the address type and length of a family.
func addrType(v6 bool) nftables.SetDatatype {
	if v6 {
		return nftables.TypeIP6Addr
	}
	return nftables.TypeIPAddr
}

func addrLen(v6 bool) int {
	if v6 {
		return 16
	}
	return 4
}

// reg32 is NFT_REG32_00 + i.
func reg32(i int) uint32 { return uint32(8 + i) }

// afterAddr is the first 32-bit register after an address loaded into regA.
func afterAddr(v6 bool) uint32 { return reg32(addrLen(v6) / 4) }

func nfproto(v6 bool) uint32 {
	if v6 {
		return unix.NFPROTO_IPV6
	}
	return unix.NFPROTO_IPV4
}

func concatType(ts ...nftables.SetDatatype) nftables.SetDatatype {
	t, err := nftables.ConcatSetType(ts...)
	if err != nil {
		panic(err)
	}
	return t
}

var (
	typeAddrProtoPort = func(v6 bool) nftables.SetDatatype {
		return concatType(addrType(v6), nftables.TypeInetProto, nftables.TypeInetService)
	}
	typeProtoPort = func() nftables.SetDatatype { return concatType(nftables.TypeInetProto, nftables.TypeInetService) }
	typeAddrPort  = func(v6 bool) nftables.SetDatatype { return concatType(addrType(v6), nftables.TypeInetService) }
)

// mapSet is the fixed set or map called name of a family's table.
func mapSet(name string, v6 bool) *nftables.Set {
	s := &nftables.Set{Table: tableOf(v6), Name: name}
	switch {
	case name == mapServiceIPs:
		s.IsMap, s.Concatenation, s.KeyType, s.DataType = true, true, typeAddrProtoPort(v6), nftables.TypeVerdict
	case name == mapNodePorts:
		s.IsMap, s.Concatenation, s.KeyType, s.DataType = true, true, typeProtoPort(), nftables.TypeVerdict
	case name == setNoEndpoints, strings.HasPrefix(name, setSizePrefix):
		s.Concatenation, s.KeyType = true, typeAddrProtoPort(v6)
	case name == setNPReject, name == setNPDrop, name == setNPMasq, strings.HasPrefix(name, setNPSizePrefix):
		s.Concatenation, s.KeyType = true, typeProtoPort()
	case name == setClusterIPs:
		s.KeyType = addrType(v6)
	case name == setHairpin:
		s.Concatenation, s.KeyType = true, concatType(addrType(v6), addrType(v6))
	case name == mapBackends:
		s.IsMap, s.Concatenation = true, true
		s.KeyType = concatType(addrType(v6), nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeMark)
		s.DataType = typeAddrPort(v6)
	case name == mapNPBackends:
		s.IsMap, s.Concatenation = true, true
		s.KeyType = concatType(nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeMark)
		s.DataType = typeAddrPort(v6)
	default:
		panic("proxy: unknown set " + name)
	}
	return s
}

// fixedSets are the names of every fixed set and map.
func fixedSets() []string {
	out := []string{mapServiceIPs, mapNodePorts, setNoEndpoints, setNPReject, setNPDrop, setClusterIPs, mapBackends, mapNPBackends, setNPMasq, setHairpin}
	for m := 1; m <= maxMapped; m++ {
		out = append(out, fmt.Sprintf("%s%d", setSizePrefix, m), fmt.Sprintf("%s%d", setNPSizePrefix, m))
	}
	return out
}

// isVerdictMap reports whether name maps to verdicts; isDataMap whether it maps to data.
func isVerdictMap(name string) bool { return name == mapServiceIPs || name == mapNodePorts }
func isDataMap(name string) bool    { return name == mapBackends || name == mapNPBackends }

func affinitySet(name string, timeout time.Duration, v6 bool) *nftables.Set {
	return &nftables.Set{Table: tableOf(v6), Name: name, KeyType: addrType(v6), HasTimeout: true, Dynamic: true, Timeout: timeout}
}

func chain(name string, v6 bool) *nftables.Chain {
	return &nftables.Chain{Name: name, Table: tableOf(v6)}
}

func protoNum(p string) byte {
	if p == "udp" {
		return unix.IPPROTO_UDP
	}
	return unix.IPPROTO_TCP
}

// keyAddrProtoPort is the key of service-ips: each field of a concatenation takes whole 4-byte registers.
func keyAddrProtoPort(a netip.Addr, proto string, port uint16) []byte {
	n := len(a.AsSlice())
	b := make([]byte, n+8)
	copy(b, a.AsSlice())
	b[n] = protoNum(proto)
	binary.BigEndian.PutUint16(b[n+4:], port)
	return b
}

func keyProtoPort(proto string, port uint16) []byte {
	b := make([]byte, 8)
	b[0] = protoNum(proto)
	binary.BigEndian.PutUint16(b[4:], port)
	return b
}

func slotKey(slot int) []byte { return binaryutil.NativeEndian.PutUint32(uint32(slot)) }

// addrPortData is the data of a backends element: the endpoint's address and port, each field of a
// concatenation in whole 4-byte registers.
func addrPortData(a netip.Addr, port uint16) []byte {
	n := len(a.AsSlice())
	b := make([]byte, n+4)
	copy(b, a.AsSlice())
	binary.BigEndian.PutUint16(b[n:], port)
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

func saddr(reg uint32, v6 bool) *expr.Payload {
	if v6 {
		return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: 8, Len: 16}
	}
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4}
}

func daddr(reg uint32, v6 bool) *expr.Payload {
	if v6 {
		return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: 24, Len: 16}
	}
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4}
}

// render turns r into expressions for the table of a family; lb also needs its anonymous map added
// first (returned).
func (r rule) render(v6 bool) ([]expr.Any, *nftables.Set, []nftables.SetElement) {
	switch r.kind {
	case "hairpin": // ip saddr IP jump mark-masq
		return []expr.Any{saddr(regA, v6), &expr.Cmp{Op: expr.CmpOpEq, Register: regA, Data: r.ip.AsSlice()},
			verdict(expr.VerdictJump, chainMarkMasq)}, nil, nil
	case "dnat": // meta l4proto P dnat to IP:PORT
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: regA},
			&expr.Cmp{Op: expr.CmpOpEq, Register: regA, Data: []byte{protoNum(r.proto)}},
			&expr.Immediate{Register: regA, Data: r.ip.AsSlice()},
			&expr.Immediate{Register: afterAddr(v6), Data: binaryutil.BigEndian.PutUint16(r.port)},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: nfproto(v6), RegAddrMin: regA, RegProtoMin: afterAddr(v6), Specified: true},
		}, nil, nil
	case "markmasq":
		return []expr.Any{verdict(expr.VerdictJump, chainMarkMasq)}, nil, nil
	case "goto":
		return []expr.Any{verdict(expr.VerdictGoto, r.chain)}, nil, nil
	case "affcheck": // ip saddr @SET goto CHAIN
		return []expr.Any{saddr(regA, v6), &expr.Lookup{SourceRegister: regA, SetName: r.set},
			verdict(expr.VerdictGoto, r.chain)}, nil, nil
	case "affupdate": // update @SET { ip saddr }
		return []expr.Any{saddr(regA, v6), &expr.Dynset{SrcRegKey: regA, SetName: r.set, Operation: unix.NFT_DYNSET_OP_UPDATE, Timeout: r.timeout}}, nil, nil
	case "lb": // numgen random mod N vmap { 0 : goto C0, ... }
		m := &nftables.Set{Table: tableOf(v6), Anonymous: true, Constant: true, IsMap: true, KeyType: nftables.TypeInteger, DataType: nftables.TypeVerdict}
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
func fixedChains(v6 bool) []*nftables.Chain {
	table := tableOf(v6)
	pri := func(p int32) *nftables.ChainPriority { return nftables.ChainPriorityRef(nftables.ChainPriority(p)) }
	accept := nftables.ChainPolicyAccept
	return []*nftables.Chain{
		{Name: chainChecks, Table: table},
		{Name: chainServices, Table: table},
		{Name: chainMarkMasq, Table: table},
		{Name: chainMasq, Table: table},
		{Name: chainFromOutside, Table: table},
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

// addrProtoPort loads ip daddr . meta l4proto . th dport into regA (12 bytes; IPv6: 24).
func addrProtoPort(v6 bool) []expr.Any {
	return []expr.Any{
		daddr(regA, v6),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: afterAddr(v6)},
		&expr.Payload{DestRegister: afterAddr(v6) + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	}
}

// localProtoPort matches fib daddr type local ip daddr != 127.0.0.0/8 (IPv6: != ::1) and loads meta
// l4proto . th dport into regA (8 bytes).
func localProtoPort(v6 bool) []expr.Any {
	notLoopback := []expr.Any{
		daddr(regA, false),
		&expr.Bitwise{SourceRegister: regA, DestRegister: regA, Len: 4, Mask: []byte{255, 0, 0, 0}, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: regA, Data: []byte{127, 0, 0, 0}},
	}
	if v6 {
		notLoopback = []expr.Any{daddr(regA, true), &expr.Cmp{Op: expr.CmpOpNeq, Register: regA, Data: netip.IPv6Loopback().AsSlice()}}
	}
	return cat([]expr.Any{
		&expr.Fib{Register: regA, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: regA, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
	}, notLoopback, []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: regA},
		&expr.Payload{DestRegister: reg3201, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	})
}

func lookup(set string) *expr.Lookup { return &expr.Lookup{SourceRegister: regA, SetName: set} }

func vmap(set string) *expr.Lookup {
	return &expr.Lookup{SourceRegister: regA, DestRegister: 0, IsDestRegSet: true, SetName: set}
}

func isTCP() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg3203},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg3203, Data: []byte{unix.IPPROTO_TCP}},
	}
}

func cat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// fixedRules are the fixed chains' rules of a family's table for its service CIDR cidr (invalid: no
// drop rule).
func fixedRules(cidr netip.Prefix, pods []netip.Prefix, v6 bool) map[string][][]expr.Any {
	mark := func(mask, xor uint32) []expr.Any {
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyMARK, Register: regA},
			&expr.Bitwise{SourceRegister: regA, DestRegister: regA, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(mask), Xor: binaryutil.NativeEndian.PutUint32(xor)},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: regA},
		}
	}
	rst := []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}}
	unreach := []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: 3}} // port unreachable
	if v6 {
		unreach = []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: 4}} // ICMPv6 port unreachable
	}
	checks := [][]expr.Any{
		cat(isTCP(), addrProtoPort(v6), []expr.Any{lookup(setNoEndpoints)}, rst),
		cat(addrProtoPort(v6), []expr.Any{lookup(setNoEndpoints)}, unreach),
		cat(isTCP(), localProtoPort(v6), []expr.Any{lookup(setNPReject)}, rst),
		cat(localProtoPort(v6), []expr.Any{lookup(setNPReject)}, unreach),
		cat(localProtoPort(v6), []expr.Any{lookup(setNPDrop), verdict(expr.VerdictDrop, "")}),
	}
	if cidr.IsValid() && cidr.Addr().Is6() == v6 {
		n := uint32(addrLen(v6))
		checks = append(checks, []expr.Any{
			daddr(regA, v6),
			&expr.Bitwise{SourceRegister: regA, DestRegister: regA, Len: n,
				Mask: netMask(cidr.Bits(), int(n)), Xor: make([]byte, n)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: regA, Data: cidr.Masked().Addr().AsSlice()},
			daddr(regA, v6),
			&expr.Lookup{SourceRegister: regA, SetName: setClusterIPs, Invert: true},
			verdict(expr.VerdictDrop, ""),
		})
	}
	dnat := &expr.NAT{Type: expr.NATTypeDestNAT, Family: nfproto(v6), RegAddrMin: regA, RegProtoMin: afterAddr(v6), Specified: true}
	services := [][]expr.Any{
		{ // ip daddr != @cluster-ips fib daddr type != local return: most traffic is for no service
			daddr(regA, v6), &expr.Lookup{SourceRegister: regA, SetName: setClusterIPs, Invert: true},
			&expr.Fib{Register: regA, FlagDADDR: true, ResultADDRTYPE: true},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: regA, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
			verdict(expr.VerdictReturn, ""),
		},
	}
	// ip daddr @cluster-ips jump from-outside (kube-proxy's masquerade of off-cluster traffic to
	// cluster IPs, its --cluster-cidr): only with the pod networks known, or every pod would be
	// masqueraded too.
	var fromOutside [][]expr.Any
	if len(pods) > 0 {
		services = append(services, []expr.Any{daddr(regA, v6), lookup(setClusterIPs), verdict(expr.VerdictJump, chainFromOutside)})
		n := uint32(addrLen(v6))
		for _, c := range pods {
			fromOutside = append(fromOutside, []expr.Any{ // ip saddr POD-CIDR return
				saddr(regA, v6),
				&expr.Bitwise{SourceRegister: regA, DestRegister: regA, Len: n, Mask: netMask(c.Bits(), int(n)), Xor: make([]byte, n)},
				&expr.Cmp{Op: expr.CmpOpEq, Register: regA, Data: c.Masked().Addr().AsSlice()},
				verdict(expr.VerdictReturn, ""),
			})
		}
		fromOutside = append(fromOutside, []expr.Any{verdict(expr.VerdictJump, chainMarkMasq)})
	}
	services = append(services,
		cat(addrProtoPort(v6), []expr.Any{vmap(mapServiceIPs)}),
		cat(localProtoPort(v6), []expr.Any{vmap(mapNodePorts)}),
		cat(localProtoPort(v6), []expr.Any{lookup(setNPMasq), verdict(expr.VerdictJump, chainMarkMasq)}),
	)
	for m := 1; m <= maxMapped; m++ {
		services = append(services, cat(addrProtoPort(v6), []expr.Any{
			lookup(fmt.Sprintf("%s%d", setSizePrefix, m)),
			&expr.Numgen{Register: afterAddr(v6) + 2, Modulus: uint32(m), Type: unix.NFT_NG_RANDOM},
			&expr.Lookup{SourceRegister: regA, DestRegister: regA, IsDestRegSet: true, SetName: mapBackends},
			dnat,
		}))
	}
	for m := 1; m <= maxMapped; m++ {
		services = append(services, cat(localProtoPort(v6), []expr.Any{
			lookup(fmt.Sprintf("%s%d", setNPSizePrefix, m)),
			&expr.Numgen{Register: reg3202, Modulus: uint32(m), Type: unix.NFT_NG_RANDOM},
			&expr.Lookup{SourceRegister: regA, DestRegister: regA, IsDestRegSet: true, SetName: mapNPBackends},
			dnat,
		}))
	}
	return map[string][][]expr.Any{
		chainChecks:      checks,
		chainServices:    services,
		chainMarkMasq:    {mark(^uint32(masqMark), masqMark)},
		chainFromOutside: fromOutside,
		chainMasq: {
			cat(ctStatusDNAT(), []expr.Any{saddr(regA, v6), daddr(afterAddr(v6), v6), lookup(setHairpin), &expr.Masq{}}),
			{
				&expr.Meta{Key: expr.MetaKeyMARK, Register: regA},
				&expr.Bitwise{SourceRegister: regA, DestRegister: regA, Len: 4,
					Mask: binaryutil.NativeEndian.PutUint32(masqMark), Xor: make([]byte, 4)},
				&expr.Cmp{Op: expr.CmpOpEq, Register: regA, Data: make([]byte, 4)},
				verdict(expr.VerdictReturn, ""),
			},
			append(mark(^uint32(0), masqMark), &expr.Masq{FullyRandom: true}),
		},
		"filter-prerouting": {append(ctNew(), verdict(expr.VerdictJump, chainChecks))},
		"filter-output":     {append(ctNew(), verdict(expr.VerdictJump, chainChecks))},
		"nat-prerouting":    {{verdict(expr.VerdictJump, chainServices)}},
		"nat-output": {
			// A process of the host reaching a cluster IP: its source is the address the routing
			// chose for the cluster IP (the default route's), which a backend on another host may
			// not answer directly (or answers through an egress masquerade of its own host): it is
			// masqueraded to the address of the interface towards the backend, as kube-proxy does.
			{daddr(regA, v6), lookup(setClusterIPs), verdict(expr.VerdictJump, chainMarkMasq)},
			{verdict(expr.VerdictJump, chainServices)},
		},
		"nat-postrouting": {{verdict(expr.VerdictJump, chainMasq)}},
	}
}

// ctStatusDNAT matches connections whose destination was translated (IPS_DST_NAT).
func ctStatusDNAT() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: regA, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: regA, DestRegister: regA, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(1 << 5), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: regA, Data: make([]byte, 4)},
	}
}

// netMask is the mask of a prefix of bits bits in n bytes.
func netMask(bits, n int) []byte {
	m := make([]byte, n)
	for i := range m {
		switch {
		case bits >= 8:
			m[i], bits = 0xff, bits-8
		case bits > 0:
			m[i], bits = byte(0xff<<(8-bits)), 0
		}
	}
	return m
}
