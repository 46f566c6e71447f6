package firewall

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// PortsTableName is the name of the inet-family nftables table that holds published ports. It is a
// table of its own so that [Firewall.Apply], which replaces the netmgr table as a whole, leaves the
// published ports alone, and so that publishing a port changes map elements only: its cost does not
// grow with the number of ports already published.
const PortsTableName = "netmgr_ports"

// Port is one published port: TCP or UDP traffic to HostIP:HostPort is forwarded to Target.
type Port struct {
	// Protocol is "tcp" or "udp".
	Protocol string
	// HostIP is the host address the port is published on. The zero Addr or the unspecified
	// address of Target's family (0.0.0.0, ::) means every local address of that family.
	HostIP   netip.Addr
	HostPort uint16
	// Target is the address and port traffic is forwarded to; its family decides the port's.
	Target netip.AddrPort
	// Owner is kept as the element's comment ("owner=NAME"), for people reading `nft list`. It is
	// not part of the port's identity.
	Owner string
}

func (p Port) String() string {
	host := "*"
	if p.wildcard() {
		if p.Target.Addr().Is6() {
			host = "[*]"
		}
	} else if p.HostIP.Is6() {
		host = "[" + p.HostIP.String() + "]"
	} else {
		host = p.HostIP.String()
	}
	return fmt.Sprintf("%s %s:%d -> %s", p.Protocol, host, p.HostPort, p.Target)
}

func (p Port) wildcard() bool { return !p.HostIP.IsValid() || p.HostIP.IsUnspecified() }

const (
	chainPortsPrerouting  = "prerouting"
	chainPortsOutput      = "output"
	chainPortsPostrouting = "postrouting"
	chainPortsInput       = "input"

	// The four maps, by family and by whether the host address is part of the key.
	mapAny4  = "any4"  // meta l4proto . th dport : ipv4_addr . inet_service
	mapAddr4 = "addr4" // ip daddr . meta l4proto . th dport : ipv4_addr . inet_service
	mapAny6  = "any6"  // meta l4proto . th dport : ipv6_addr . inet_service
	mapAddr6 = "addr6" // ip6 daddr . meta l4proto . th dport : ipv6_addr . inet_service

	ownerPrefix = "owner="
	maxOwnerLen = 200

	// Registers as nft numbers them: the 16-byte NFT_REG_1 and NFT_REG_2 and the 4-byte
	// NFT_REG32_xx that overlap them (reg32 8-11 are reg 1, 12-15 reg 2).
	regA     = 1  // NFT_REG_1
	regB     = 2  // NFT_REG_2
	reg32_01 = 9  // second word of reg 1
	reg32_02 = 10 // third word of reg 1
	reg32_05 = 13 // second word of reg 2
)

// Set IDs name the maps within a batch, like bridgesSetID (AddSet's own allocator is not safe for
// concurrent use).
var portMaps = []struct {
	name string
	id   uint32
	v6   bool
	addr bool
}{
	{mapAny4, 11, false, false},
	{mapAddr4, 12, false, true},
	{mapAny6, 13, true, false},
	{mapAddr6, 14, true, true},
}

func portsTable() *nftables.Table {
	return &nftables.Table{Name: PortsTableName, Family: nftables.TableFamilyINet}
}

func portMap(t *nftables.Table, name string) *nftables.Set {
	for _, m := range portMaps {
		if m.name != name {
			continue
		}
		addrT := nftables.TypeIPAddr
		if m.v6 {
			addrT = nftables.TypeIP6Addr
		}
		keyTypes := []nftables.SetDatatype{nftables.TypeInetProto, nftables.TypeInetService}
		if m.addr {
			keyTypes = append([]nftables.SetDatatype{addrT}, keyTypes...)
		}
		key, _ := nftables.ConcatSetType(keyTypes...)
		data, _ := nftables.ConcatSetType(addrT, nftables.TypeInetService)
		return &nftables.Set{
			Table: t, Name: m.name, ID: m.id, IsMap: true, Concatenation: true,
			KeyType: key, DataType: data,
		}
	}
	panic("firewall: unknown port map " + name)
}

// Bounds of one netlink exchange. The elements of one message are a netlink attribute whose length
// field has 16 bits: past 64 KiB it wraps, and the kernel reads only part of the list and still
// acknowledges the message (FAULTS §1: a create returned 0 with most ports missing). A whole batch
// must also fit the socket's send buffer (EMSGSIZE), and its acknowledgements, which echo a failed
// request, the receive buffer (ENOBUFS).
const (
	maxMsgBytes   = 16 << 10
	maxBatchBytes = 96 << 10
)

// elemPiece is some elements of one map, small enough for one message.
type elemPiece struct {
	m   string
	els []nftables.SetElement
}

// elemSize bounds the encoded size of el in a set element list: the nested headers of the element,
// its key and data, and its comment.
func elemSize(el nftables.SetElement) int {
	return 48 + len(el.Key) + len(el.Val) + len(el.Comment)
}

// splitBatches cuts elems into batches of pieces, maps in a fixed order. Each piece becomes perMsg
// messages (1 to add, 2 to add and delete), which the batch bound counts.
func splitBatches(elems map[string][]nftables.SetElement, perMsg int) [][]elemPiece {
	var batches [][]elemPiece
	var cur []elemPiece
	curBytes := 0
	for _, pm := range portMaps {
		els := elems[pm.name]
		for len(els) > 0 {
			n, size := 0, 0
			for n < len(els) && size+elemSize(els[n]) <= maxMsgBytes {
				size += elemSize(els[n])
				n++
			}
			n = max(n, 1)
			if curBytes+perMsg*size > maxBatchBytes && len(cur) > 0 {
				batches = append(batches, cur)
				cur, curBytes = nil, 0
			}
			cur = append(cur, elemPiece{m: pm.name, els: els[:n]})
			curBytes += perMsg * size
			els = els[n:]
		}
	}
	if len(cur) > 0 {
		batches = append(batches, cur)
	}
	return batches
}

// AddPorts publishes ports. Up to about a thousand ports (fewer with long owner names) go in one
// netlink transaction; more are sent in bounded transactions one after the other and then checked
// against the kernel. Either all of them are published or, on error, none: what earlier transactions
// added is removed again (also an identical element that was there before the call). It creates the
// ports table and its rules if they are missing (idempotently, so concurrent callers in several
// processes are safe). Adding a port that is already there with the same target is not an error;
// one whose host address and port are published to another target is (EEXIST from the kernel).
func (f *Firewall) AddPorts(ctx context.Context, ports []Port) error {
	elems, err := portElements(ports)
	if err != nil {
		return fmt.Errorf("add ports: %w", err)
	}
	batches := splitBatches(elems, 1)
	for i, b := range batches {
		if err := f.addBatch(ctx, b); err != nil {
			if errors.Is(err, unix.EEXIST) {
				err = fmt.Errorf("a host port among them is published to another target in the kernel: %w", err)
			}
			// The failed transaction changed nothing; the ones before it are undone.
			if rerr := f.removeBatches(context.WithoutCancel(ctx), batches[:i]); rerr != nil {
				err = errors.Join(err, fmt.Errorf("undo: %w", rerr))
			}
			return err
		}
	}
	if len(batches) > 1 {
		if err := f.checkPorts(ctx, ports); err != nil {
			if rerr := f.removeBatches(context.WithoutCancel(ctx), batches); rerr != nil {
				err = errors.Join(err, fmt.Errorf("undo: %w", rerr))
			}
			return err
		}
	}
	return nil
}

// addBatch adds one batch of elements in one transaction.
func (f *Firewall) addBatch(ctx context.Context, b []elemPiece) error {
	add := func(c *nftables.Conn, t *nftables.Table) error {
		for _, p := range b {
			if err := c.SetAddElements(portMap(t, p.m), p.els); err != nil {
				return err
			}
		}
		return nil
	}
	// The common case is elements only: re-asserting the chains on every call would cost a base
	// chain update per port (about 14 ms measured, against 0.2 ms). The table is built when a map
	// is missing, and EnsurePorts (gc) repairs its rules.
	err := f.portsBatch(ctx, "add ports", func(c *nftables.Conn) error { return add(c, portsTable()) })
	if errors.Is(err, unix.ENOENT) {
		err = f.portsBatch(ctx, "add ports", func(c *nftables.Conn) error {
			t, err := queuePortsBase(c)
			if err != nil {
				return err
			}
			return add(c, t)
		})
	}
	return err
}

// checkPorts verifies that every one of ports is in the kernel with its target. A dump of a hash
// map that the kernel is resizing (it grows the table in the background after large adds) can skip
// elements, so an element counts as present once any of a few dumps shows it.
func (f *Firewall) checkPorts(ctx context.Context, ports []Port) error {
	missing := make(map[string]Port, len(ports))
	for _, p := range ports {
		missing[portIdentity(p)] = p
	}
	pause := 50 * time.Millisecond
	for attempt := 0; ; attempt++ {
		have, err := f.Ports(ctx)
		if err != nil {
			return fmt.Errorf("add ports: check: %w", err)
		}
		for _, p := range have {
			delete(missing, portIdentity(p))
		}
		if len(missing) == 0 {
			return nil
		}
		if attempt == 4 {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("add ports: check: %w", ctx.Err())
		case <-time.After(pause):
		}
		pause *= 2
	}
	var first []Port
	for _, p := range missing {
		first = append(first, p)
	}
	sortPorts(first)
	return fmt.Errorf("add ports: %d of %d ports are not in the kernel after adding them (first: %s)", len(missing), len(ports), first[0])
}

// EnsurePorts creates the ports table if it is missing and re-asserts its fixed rules, keeping the
// published ports. Crash repair calls it, in case the rules were flushed by someone else.
func (f *Firewall) EnsurePorts(ctx context.Context) error {
	return f.portsBatch(ctx, "ensure ports table", func(c *nftables.Conn) error {
		_, err := queuePortsBase(c)
		return err
	})
}

// RemovePorts unpublishes ports. It is idempotent: ports that are not published, or a missing table,
// are not errors. Each element is added and then deleted in the same transaction, which the kernel
// accepts whether or not it existed, so no dump of the maps is needed and the cost does not grow with
// the number of ports published. A port whose host port is now published to another target is left
// to that one (the kernel refuses the add; then, once, every element is read and only those present
// as given are deleted). Many ports are sent in bounded transactions; a failing one does not stop the
// others, so that as much as possible is removed and a retry has less to do.
func (f *Firewall) RemovePorts(ctx context.Context, ports []Port) error {
	elems, err := portElements(ports)
	if err != nil {
		return fmt.Errorf("remove ports: %w", err)
	}
	return f.removeBatches(ctx, splitBatches(elems, 2))
}

func (f *Firewall) removeBatches(ctx context.Context, batches [][]elemPiece) error {
	var errs []error
	var present map[string]bool // read once, the first time a batch needs it
	for _, b := range batches {
		err := f.removeBatch(ctx, b)
		if errors.Is(err, unix.EEXIST) {
			// A host port of the batch is published to another target now (a stray element,
			// or another sandbox's after a crash): adding ours to delete it is refused, and
			// deleting by key would take the other one. Delete only the elements that are
			// there as given.
			if present == nil {
				present, err = f.presentElements(ctx)
			}
			if err == nil {
				err = f.removePresent(ctx, b, present)
			}
		}
		if err != nil {
			errs = append(errs, err)
			if ctx.Err() != nil {
				break
			}
		}
	}
	return errors.Join(errs...)
}

// removeBatch removes one batch in one transaction: each element is added and then deleted, which
// the kernel accepts whether or not it was there (but not if its key is there with another value).
func (f *Firewall) removeBatch(ctx context.Context, b []elemPiece) error {
	remove := func(c *nftables.Conn, t *nftables.Table) error {
		for _, p := range b {
			m := portMap(t, p.m)
			if err := c.SetAddElements(m, p.els); err != nil {
				return err
			}
			if err := c.SetDeleteElements(m, p.els); err != nil {
				return err
			}
		}
		return nil
	}
	err := f.portsBatch(ctx, "remove ports", func(c *nftables.Conn) error { return remove(c, portsTable()) })
	if errors.Is(err, unix.ENOENT) {
		// The table or a map is missing: recreate them (an empty table stays, like the netmgr
		// table while networks exist) and retry once, so that no element in another map is left.
		err = f.portsBatch(ctx, "remove ports", func(c *nftables.Conn) error {
			t, err := queuePortsBase(c)
			if err != nil {
				return err
			}
			return remove(c, t)
		})
	}
	return err
}

// presentElements reads every element, by identity (map, key and value).
func (f *Firewall) presentElements(ctx context.Context) (map[string]bool, error) {
	have, err := f.Ports(ctx)
	if err != nil {
		return nil, fmt.Errorf("remove ports: %w", err)
	}
	present := make(map[string]bool, len(have))
	for _, p := range have {
		present[portIdentity(p)] = true
	}
	return present, nil
}

// removePresent deletes those elements of b that present, read before, holds with the same key and
// value. It is the fallback of removeBatch.
func (f *Firewall) removePresent(ctx context.Context, b []elemPiece, present map[string]bool) error {
	var del []elemPiece
	for _, p := range b {
		var els []nftables.SetElement
		for _, el := range p.els {
			if present[p.m+"|"+string(el.Key)+"|"+string(el.Val)] {
				els = append(els, el)
			}
		}
		if len(els) > 0 {
			del = append(del, elemPiece{m: p.m, els: els})
		}
	}
	if len(del) == 0 {
		return nil
	}
	return f.portsBatch(ctx, "remove ports", func(c *nftables.Conn) error {
		t := portsTable()
		for _, p := range del {
			if err := c.SetDeleteElements(portMap(t, p.m), p.els); err != nil {
				return err
			}
		}
		return nil
	})
}

// Ports returns the published ports, sorted. It returns none if the table is absent.
func (f *Firewall) Ports(ctx context.Context) ([]Port, error) {
	var out []Port
	err := f.locked(ctx, "list ports", func(c *nftables.Conn) error {
		var err error
		out, err = dumpPorts(c)
		return err
	})
	return out, err
}

// SyncPorts makes the published ports exactly want and reports what it added and removed. It reads
// every element, so its cost grows with the number of ports. It re-asserts the table's rules, then
// removes and adds in bounded transactions, like RemovePorts and AddPorts; an error can leave part of
// the change made, and a second call finishes it.
func (f *Firewall) SyncPorts(ctx context.Context, want []Port) (added, removed []Port, err error) {
	if _, err := portElements(want); err != nil {
		return nil, nil, fmt.Errorf("sync ports: %w", err)
	}
	have, err := f.Ports(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("sync ports: %w", err)
	}
	haveSet := map[string]Port{}
	for _, p := range have {
		haveSet[portIdentity(p)] = p
	}
	wantSet := map[string]bool{}
	for _, p := range want {
		id := portIdentity(p)
		if !wantSet[id] {
			if _, ok := haveSet[id]; !ok {
				added = append(added, p)
			}
		}
		wantSet[id] = true
	}
	for id, p := range haveSet {
		if !wantSet[id] {
			removed = append(removed, p)
		}
	}
	sortPorts(added)
	sortPorts(removed)
	if err := f.EnsurePorts(ctx); err != nil {
		return nil, nil, fmt.Errorf("sync ports: %w", err)
	}
	delElems, err := portElements(removed)
	if err != nil {
		return nil, nil, fmt.Errorf("sync ports: %w", err)
	}
	if err := f.removeBatches(ctx, splitBatches(delElems, 2)); err != nil {
		return nil, nil, fmt.Errorf("sync ports: %w", err)
	}
	addElems, err := portElements(added)
	if err != nil {
		return nil, nil, fmt.Errorf("sync ports: %w", err)
	}
	for _, b := range splitBatches(addElems, 1) {
		if err := f.addBatch(ctx, b); err != nil {
			return nil, nil, fmt.Errorf("sync ports: %w", err)
		}
	}
	return added, removed, nil
}

// RemovePortsTable deletes the ports table; it is not an error if the table is absent.
func (f *Firewall) RemovePortsTable(ctx context.Context) error {
	return f.portsBatch(ctx, "remove ports table", func(c *nftables.Conn) error {
		queueDeletePortsTable(c)
		return nil
	})
}

func queueDeletePortsTable(c *nftables.Conn) {
	t := portsTable()
	c.AddTable(t)
	c.DelTable(t)
}

// portsBatch runs queue and flushes its messages as one transaction.
func (f *Firewall) portsBatch(ctx context.Context, what string, queue func(*nftables.Conn) error) error {
	return f.locked(ctx, what, func(c *nftables.Conn) error {
		if err := queue(c); err != nil {
			return err
		}
		return c.Flush()
	})
}

func (f *Firewall) locked(ctx context.Context, what string, fn func(*nftables.Conn) error) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return fmt.Errorf("%s: %w", what, net.ErrClosed)
	}
	if err := f.do(ctx, fn); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// queuePortsBase queues the ports table, its maps (kept with their elements if they exist) and its
// chains with their rules (flushed and re-added, so the rules are always exactly these). The number
// of messages is constant.
func queuePortsBase(c *nftables.Conn) (*nftables.Table, error) {
	t := c.AddTable(portsTable())
	for _, m := range portMaps {
		// AddSet of an existing, identical set is a no-op that keeps its elements.
		if err := c.AddSet(portMap(t, m.name), nil); err != nil {
			return nil, fmt.Errorf("add map %s: %w", m.name, err)
		}
	}
	accept := nftables.ChainPolicyAccept
	chain := func(name string, typ nftables.ChainType, hook *nftables.ChainHook, prio *nftables.ChainPriority) *nftables.Chain {
		ch := c.AddChain(&nftables.Chain{Name: name, Table: t, Type: typ, Hooknum: hook, Priority: prio, Policy: &accept})
		c.FlushChain(ch)
		return ch
	}
	pre := chain(chainPortsPrerouting, nftables.ChainTypeNAT, nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest)
	out := chain(chainPortsOutput, nftables.ChainTypeNAT, nftables.ChainHookOutput, nftables.ChainPriorityNATDest)
	post := chain(chainPortsPostrouting, nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource)
	in := chain(chainPortsInput, nftables.ChainTypeFilter, nftables.ChainHookInput, nftables.ChainPriorityFilter)
	for _, ch := range []*nftables.Chain{pre, out} {
		for _, exprs := range dnatRules(t) {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: exprs})
		}
	}
	for _, exprs := range localnetRules() {
		c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: exprs})
	}
	c.AddRule(&nftables.Rule{Table: t, Chain: in, Exprs: localnetGuard()})
	return t, nil
}

// dnatRules are the same in prerouting (traffic arriving at the host, including from its own pods:
// hairpin) and output (traffic from the host itself, including from 127.0.0.1):
//
//	meta nfproto ipv4 dnat ip to ip daddr . meta l4proto . th dport map @addr4
//	meta nfproto ipv4 fib daddr type local dnat ip to meta l4proto . th dport map @any4
//	meta nfproto ipv6 dnat ip6 to ip6 daddr . meta l4proto . th dport map @addr6
//	meta nfproto ipv6 fib daddr type local dnat ip6 to meta l4proto . th dport map @any6
//
// A lookup that misses ends the rule, so a packet for no published port passes untouched.
func dnatRules(t *nftables.Table) [][]expr.Any {
	var rules [][]expr.Any
	for _, v6 := range []bool{false, true} {
		proto, daddrOff, addrLen := byte(unix.NFPROTO_IPV4), uint32(16), uint32(4)
		l4reg, portReg, natProto := uint32(reg32_01), uint32(reg32_02), uint32(reg32_01)
		anyProtoReg := uint32(reg32_01)
		if v6 {
			proto, daddrOff, addrLen = unix.NFPROTO_IPV6, 24, 16
			l4reg, portReg, natProto = regB, reg32_05, regB
			anyProtoReg = regB
		}
		family := []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: regA},
			&expr.Cmp{Op: expr.CmpOpEq, Register: regA, Data: []byte{proto}},
		}
		addrMap, anyMap := portMap(t, mapAddr4), portMap(t, mapAny4)
		if v6 {
			addrMap, anyMap = portMap(t, mapAddr6), portMap(t, mapAny6)
		}
		nat := &expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(proto), RegAddrMin: regA, RegProtoMin: natProto}
		rules = append(rules, concat(family, []expr.Any{
			&expr.Payload{DestRegister: regA, Base: expr.PayloadBaseNetworkHeader, Offset: daddrOff, Len: addrLen},
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: l4reg},
			&expr.Payload{DestRegister: portReg, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Lookup{SourceRegister: regA, DestRegister: regA, IsDestRegSet: true, SetName: addrMap.Name, SetID: addrMap.ID},
			nat,
		}))
		natAny := &expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(proto), RegAddrMin: regA, RegProtoMin: anyProtoReg}
		rules = append(rules, concat(family, []expr.Any{
			&expr.Fib{Register: regA, FlagDADDR: true, ResultADDRTYPE: true},
			&expr.Cmp{Op: expr.CmpOpEq, Register: regA, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: regA},
			&expr.Payload{DestRegister: reg32_01, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Lookup{SourceRegister: regA, DestRegister: regA, IsDestRegSet: true, SetName: anyMap.Name, SetID: anyMap.ID},
			natAny,
		}))
	}
	return rules
}

// localnetRules give connections from the host's 127.0.0.1 to a published port a source address the
// pod can answer (the kernel forwards them only where route_localnet is set, on bridges with
// published ports):
//
//	meta nfproto ipv4 ct status dnat ip saddr 127.0.0.0/8 masquerade
func localnetRules() [][]expr.Any {
	return [][]expr.Any{concat(
		ctStatusDNAT(),
		saddrMatch(netip.MustParsePrefix("127.0.0.0/8")),
		[]expr.Any{&expr.Masq{}},
	)}
}

// localnetGuard keeps route_localnet from exposing the host's loopback services to its bridges
// (CVE-2020-8558): only replies may reach 127.0.0.0/8 from outside lo.
//
//	iifname != "lo" meta nfproto ipv4 ip daddr 127.0.0.0/8 ct state & (established|related) == 0 drop
func localnetGuard() []expr.Any {
	return concat(
		ifnameCmp(expr.MetaKeyIIFNAME, expr.CmpOpNeq, "lo"),
		daddrMatch(netip.MustParsePrefix("127.0.0.0/8")),
		[]expr.Any{
			&expr.Ct{Register: regA, Key: expr.CtKeySTATE},
			&expr.Bitwise{SourceRegister: regA, DestRegister: regA, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
				Xor:  make([]byte, 4)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: regA, Data: make([]byte, 4)},
		},
		drop(),
	)
}

// ipsDstNAT is IPS_DST_NAT of linux/netfilter/nf_conntrack_common.h.
const ipsDstNAT = 1 << 5

// ctStatusDNAT matches connections whose destination was translated: ct status dnat.
func ctStatusDNAT() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: regA, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: regA, DestRegister: regA, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(ipsDstNAT), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: regA, Data: make([]byte, 4)},
	}
}

// daddrMatch is saddrMatch for the destination address.
func daddrMatch(p netip.Prefix) []expr.Any {
	exprs := saddrMatch(p)
	for _, e := range exprs {
		if pl, ok := e.(*expr.Payload); ok {
			pl.Offset += uint32(p.Addr().BitLen() / 8) // daddr follows saddr in both headers
		}
	}
	return exprs
}

// portElements validates ports and encodes them as elements per map.
func portElements(ports []Port) (map[string][]nftables.SetElement, error) {
	out := map[string][]nftables.SetElement{}
	seen := map[string]Port{}
	for _, p := range ports {
		if err := validPort(p); err != nil {
			return nil, err
		}
		name, key, val := encodePort(p)
		k := name + string(key)
		if q, dup := seen[k]; dup {
			if q.Target == p.Target {
				continue
			}
			return nil, fmt.Errorf("%s and %s publish the same host port: %w", q, p, ErrInvalid)
		}
		seen[k] = p
		el := nftables.SetElement{Key: key, Val: val}
		if p.Owner != "" {
			el.Comment = ownerPrefix + p.Owner
		}
		out[name] = append(out[name], el)
	}
	return out, nil
}

func validPort(p Port) error {
	switch {
	case p.Protocol != "tcp" && p.Protocol != "udp":
		return fmt.Errorf("port %s: protocol %q is not tcp or udp: %w", p, p.Protocol, ErrInvalid)
	case p.HostPort == 0:
		return fmt.Errorf("port %s: host port 0: %w", p, ErrInvalid)
	case !p.Target.IsValid() || p.Target.Port() == 0:
		return fmt.Errorf("port %s: no target address and port: %w", p, ErrInvalid)
	case p.Target.Addr().Is4In6() || p.Target.Addr().Zone() != "":
		return fmt.Errorf("port %s: target must be a plain IPv4 or IPv6 address: %w", p, ErrInvalid)
	case p.HostIP.IsValid() && (p.HostIP.Is4In6() || p.HostIP.Zone() != ""):
		return fmt.Errorf("port %s: host address must be a plain IPv4 or IPv6 address: %w", p, ErrInvalid)
	case p.HostIP.IsValid() && p.HostIP.Is4() != p.Target.Addr().Is4():
		return fmt.Errorf("port %s: host address and target are of different families: %w", p, ErrInvalid)
	case len(p.Owner) > maxOwnerLen || strings.IndexByte(p.Owner, 0) >= 0:
		return fmt.Errorf("port %s: owner is longer than %d bytes or has a NUL: %w", p, maxOwnerLen, ErrInvalid)
	}
	return nil
}

func protoNum(name string) byte {
	if name == "udp" {
		return unix.IPPROTO_UDP
	}
	return unix.IPPROTO_TCP
}

func protoName(n byte) string {
	switch n {
	case unix.IPPROTO_TCP:
		return "tcp"
	case unix.IPPROTO_UDP:
		return "udp"
	}
	return fmt.Sprintf("proto-%d", n)
}

// encodePort returns the map, key and value of p. Each field of a concatenation takes a multiple of
// four bytes, as in the registers.
func encodePort(p Port) (string, []byte, []byte) {
	v6 := p.Target.Addr().Is6()
	pp := []byte{protoNum(p.Protocol), 0, 0, 0}
	port := func(n uint16) []byte {
		b := make([]byte, 4)
		binary.BigEndian.PutUint16(b, n)
		return b
	}
	val := append(p.Target.Addr().AsSlice(), port(p.Target.Port())...)
	key := append(pp, port(p.HostPort)...)
	var name string
	switch {
	case p.wildcard() && !v6:
		name = mapAny4
	case p.wildcard():
		name = mapAny6
	case !v6:
		name, key = mapAddr4, append(p.HostIP.AsSlice(), key...)
	default:
		name, key = mapAddr6, append(p.HostIP.AsSlice(), key...)
	}
	return name, key, val
}

// decodePort is encodePort's inverse.
func decodePort(name string, el nftables.SetElement) (Port, bool) {
	var p Port
	key := el.Key
	switch name {
	case mapAddr4, mapAddr6:
		n := 4
		if name == mapAddr6 {
			n = 16
		}
		if len(key) < n {
			return p, false
		}
		p.HostIP, _ = netip.AddrFromSlice(key[:n])
		key = key[n:]
	}
	if len(key) != 8 {
		return p, false
	}
	p.Protocol = protoName(key[0])
	p.HostPort = binary.BigEndian.Uint16(key[4:6])
	n := len(el.Val) - 4
	if n != 4 && n != 16 {
		return p, false
	}
	a, _ := netip.AddrFromSlice(el.Val[:n])
	p.Target = netip.AddrPortFrom(a, binary.BigEndian.Uint16(el.Val[n:n+2]))
	p.Owner = strings.TrimPrefix(el.Comment, ownerPrefix)
	return p, true
}

// dumpPorts reads every map of the ports table; a missing table has no ports.
func dumpPorts(c *nftables.Conn) ([]Port, error) {
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	if !slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == PortsTableName }) {
		return nil, nil
	}
	t := portsTable()
	// A map that someone deleted has no ports. It is found by listing the table's sets: the library
	// reports a failed element dump as text only (%v), so ENOENT cannot be told from other errors.
	sets, err := c.GetSets(t)
	if err != nil {
		return nil, fmt.Errorf("list maps: %w", err)
	}
	var out []Port
	for _, m := range portMaps {
		if !slices.ContainsFunc(sets, func(s *nftables.Set) bool { return s.Name == m.name }) {
			continue
		}
		els, err := c.GetSetElements(portMap(t, m.name))
		if err != nil {
			return nil, fmt.Errorf("list map %s: %w", m.name, err)
		}
		for _, el := range els {
			if p, ok := decodePort(m.name, el); ok {
				out = append(out, p)
			}
		}
	}
	sortPorts(out)
	return out, nil
}

// portIdentity is what makes two ports the same element: map, key and value (not the owner).
func portIdentity(p Port) string {
	name, key, val := encodePort(p)
	return name + "|" + string(key) + "|" + string(val)
}

func sortPorts(ps []Port) {
	slices.SortFunc(ps, func(a, b Port) int {
		an, ak, av := encodePort(a)
		bn, bk, bv := encodePort(b)
		if c := strings.Compare(an, bn); c != 0 {
			return c
		}
		if c := bytes.Compare(ak, bk); c != 0 {
			return c
		}
		return bytes.Compare(av, bv)
	})
}
