package firewall

import (
	"encoding/binary"
	"fmt"
	"slices"
	"sync"

	"github.com/mdlayher/netlink"
	"github.com/mdlayher/netlink/nltest"
	"golang.org/x/sys/unix"
)

// fakeKernel is a small nf_tables of the kernel's, enough for the messages the Firewall sends: it
// takes the netlink batches google/nftables records (nftables.WithTestDial), applies each as one
// transaction to tables, chains, rules, sets and set elements held as the attributes the Firewall
// sent, and answers dumps with them as the kernel would. Rule generation is tested through it
// without root; TestApply checks with a real kernel that both read back the same ruleset.
//
// It knows only the operations the Firewall uses, and answers any other with EOPNOTSUPP, so that a
// new kind of message fails the tests instead of being ignored.
type fakeKernel struct {
	mu     sync.Mutex
	tables []*fakeTable
	handle uint64
	sent   []string // the type of every message received, batch markers left out
	failOn string   // a message type to refuse with ENOMEM, failing its batch
}

type fakeTable struct {
	family uint8
	name   string
	chains []*fakeChain
	sets   []*fakeSet
}

type fakeChain struct {
	name  string
	attrs []netlink.Attribute
	rules []*fakeRule
}

type fakeRule struct {
	handle uint64
	attrs  []netlink.Attribute
}

type fakeSet struct {
	name  string
	id    uint32
	attrs []netlink.Attribute
	elems []netlink.Attribute // NFTA_LIST_ELEM
}

const attrTypeMask = 0x3fff // without NLA_F_NESTED and NLA_F_NET_BYTEORDER

var msgNames = map[uint16]string{
	unix.NFT_MSG_NEWTABLE: "newtable", unix.NFT_MSG_GETTABLE: "gettable", unix.NFT_MSG_DELTABLE: "deltable",
	unix.NFT_MSG_NEWCHAIN: "newchain", unix.NFT_MSG_GETCHAIN: "getchain", unix.NFT_MSG_DELCHAIN: "delchain",
	unix.NFT_MSG_NEWRULE: "newrule", unix.NFT_MSG_GETRULE: "getrule", unix.NFT_MSG_DELRULE: "delrule",
	unix.NFT_MSG_NEWSET: "newset", unix.NFT_MSG_GETSET: "getset", unix.NFT_MSG_DELSET: "delset",
	unix.NFT_MSG_NEWSETELEM: "newsetelem", unix.NFT_MSG_GETSETELEM: "getsetelem", unix.NFT_MSG_DELSETELEM: "delsetelem",
}

// dial is the nltest.Func to give the Firewall.
func (k *fakeKernel) dial(req []netlink.Message) ([]netlink.Message, error) {
	if len(req) == 0 {
		return nil, nil // a receive with nothing pending
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if req[0].Header.Type == netlink.HeaderType(unix.NFNL_MSG_BATCH_BEGIN) {
		return k.batch(req)
	}
	if len(req) != 1 {
		return nil, fmt.Errorf("fake kernel: %d requests outside a batch", len(req))
	}
	k.sent = append(k.sent, msgName(req[0]))
	replies, errno := k.get(req[0])
	if errno != 0 {
		return nltest.Error(int(errno), req)
	}
	for i := range replies {
		replies[i].Header.Sequence, replies[i].Header.PID = req[0].Header.Sequence, req[0].Header.PID
	}
	return replies, nil
}

func msgName(m netlink.Message) string {
	if n, ok := msgNames[uint16(m.Header.Type)&0xff]; ok && uint16(m.Header.Type)>>8 == unix.NFNL_SUBSYS_NFTABLES {
		return n
	}
	return fmt.Sprintf("type %#x", uint16(m.Header.Type))
}

// batch applies the messages between the batch markers all or nothing.
func (k *fakeKernel) batch(req []netlink.Message) ([]netlink.Message, error) {
	if last := req[len(req)-1]; last.Header.Type != netlink.HeaderType(unix.NFNL_MSG_BATCH_END) {
		return nil, fmt.Errorf("fake kernel: batch without its end marker")
	}
	saved := k.clone()
	for _, m := range req[1 : len(req)-1] {
		k.sent = append(k.sent, msgName(m))
		errno := k.apply(m)
		if k.failOn != "" && msgName(m) == k.failOn {
			errno = unix.ENOMEM
		}
		if errno != 0 {
			k.tables = saved
			return nltest.Error(int(errno), []netlink.Message{m})
		}
	}
	ack := netlink.Message{
		Header: netlink.Header{Type: netlink.Error, Sequence: req[1].Header.Sequence, PID: req[1].Header.PID},
		Data:   make([]byte, 4), // errno 0
	}
	return []netlink.Message{ack}, nil
}

func (k *fakeKernel) clone() []*fakeTable {
	out := make([]*fakeTable, len(k.tables))
	for i, t := range k.tables {
		nt := *t
		nt.chains = make([]*fakeChain, len(t.chains))
		for j, c := range t.chains {
			nc := *c
			nc.rules = slices.Clone(c.rules)
			nt.chains[j] = &nc
		}
		nt.sets = make([]*fakeSet, len(t.sets))
		for j, s := range t.sets {
			ns := *s
			ns.elems = slices.Clone(s.elems)
			nt.sets[j] = &ns
		}
		out[i] = &nt
	}
	return out
}

// parsed is a message's nfgenmsg family and its attributes by type.
type parsed struct {
	family uint8
	attrs  []netlink.Attribute
}

func parse(m netlink.Message) (parsed, unix.Errno) {
	if len(m.Data) < 4 {
		return parsed{}, unix.EINVAL
	}
	attrs, err := netlink.UnmarshalAttributes(m.Data[4:])
	if err != nil {
		return parsed{}, unix.EINVAL
	}
	return parsed{family: m.Data[0], attrs: attrs}, 0
}

func (p parsed) has(typ uint16) bool {
	return slices.ContainsFunc(p.attrs, func(a netlink.Attribute) bool { return a.Type&attrTypeMask == typ })
}

func (p parsed) bytes(typ uint16) []byte {
	for _, a := range p.attrs {
		if a.Type&attrTypeMask == typ {
			return a.Data
		}
	}
	return nil
}

func (p parsed) str(typ uint16) string { return unix.ByteSliceToString(p.bytes(typ)) }

func (p parsed) u32(typ uint16) uint32 {
	if b := p.bytes(typ); len(b) == 4 {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}

func (p parsed) u64(typ uint16) uint64 {
	if b := p.bytes(typ); len(b) == 8 {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}

// without returns attrs without those of the given types (what the kernel does not echo).
func without(attrs []netlink.Attribute, types ...uint16) []netlink.Attribute {
	return slices.DeleteFunc(slices.Clone(attrs), func(a netlink.Attribute) bool {
		return slices.Contains(types, a.Type&attrTypeMask)
	})
}

func (k *fakeKernel) table(family uint8, name string) *fakeTable {
	for _, t := range k.tables {
		if t.family == family && t.name == name {
			return t
		}
	}
	return nil
}

func (t *fakeTable) chain(name string) *fakeChain {
	for _, c := range t.chains {
		if c.name == name {
			return c
		}
	}
	return nil
}

func (t *fakeTable) set(name string, id uint32) *fakeSet {
	for _, s := range t.sets {
		if (name != "" && s.name == name) || (name == "" && id != 0 && s.id == id) {
			return s
		}
	}
	return nil
}

func (k *fakeKernel) apply(m netlink.Message) unix.Errno {
	if uint16(m.Header.Type)>>8 != unix.NFNL_SUBSYS_NFTABLES {
		return unix.EOPNOTSUPP
	}
	p, errno := parse(m)
	if errno != 0 {
		return errno
	}
	typ := uint16(m.Header.Type) & 0xff
	switch typ {
	case unix.NFT_MSG_NEWTABLE:
		name := p.str(unix.NFTA_TABLE_NAME)
		if t := k.table(p.family, name); t != nil {
			if m.Header.Flags&netlink.Excl != 0 {
				return unix.EEXIST
			}
			return 0
		}
		k.tables = append(k.tables, &fakeTable{family: p.family, name: name})
		return 0
	case unix.NFT_MSG_DELTABLE:
		t := k.table(p.family, p.str(unix.NFTA_TABLE_NAME))
		if t == nil {
			return unix.ENOENT
		}
		k.tables = slices.DeleteFunc(k.tables, func(x *fakeTable) bool { return x == t })
		return 0
	}
	var tableAttr uint16
	switch typ {
	case unix.NFT_MSG_NEWCHAIN, unix.NFT_MSG_DELCHAIN:
		tableAttr = unix.NFTA_CHAIN_TABLE
	case unix.NFT_MSG_NEWRULE, unix.NFT_MSG_DELRULE:
		tableAttr = unix.NFTA_RULE_TABLE
	case unix.NFT_MSG_NEWSET:
		tableAttr = unix.NFTA_SET_TABLE
	case unix.NFT_MSG_NEWSETELEM, unix.NFT_MSG_DELSETELEM:
		tableAttr = unix.NFTA_SET_ELEM_LIST_TABLE
	default:
		return unix.EOPNOTSUPP
	}
	t := k.table(p.family, p.str(tableAttr))
	if t == nil {
		return unix.ENOENT
	}
	switch typ {
	case unix.NFT_MSG_NEWCHAIN:
		name := p.str(unix.NFTA_CHAIN_NAME)
		attrs := without(p.attrs, unix.NFTA_CHAIN_HANDLE)
		if c := t.chain(name); c != nil {
			c.attrs = attrs
			return 0
		}
		t.chains = append(t.chains, &fakeChain{name: name, attrs: attrs})
	case unix.NFT_MSG_DELCHAIN:
		c := t.chain(p.str(unix.NFTA_CHAIN_NAME))
		switch {
		case c == nil:
			return unix.ENOENT
		case len(c.rules) > 0:
			return unix.EBUSY
		}
		t.chains = slices.DeleteFunc(t.chains, func(x *fakeChain) bool { return x == c })
	case unix.NFT_MSG_NEWRULE:
		c := t.chain(p.str(unix.NFTA_RULE_CHAIN))
		if c == nil {
			return unix.ENOENT
		}
		if p.has(unix.NFTA_RULE_POSITION) {
			return unix.EOPNOTSUPP // not used by the Firewall
		}
		attrs, errno := kernelExprs(without(p.attrs, unix.NFTA_RULE_HANDLE, unix.NFTA_RULE_ID))
		if errno != 0 {
			return errno
		}
		k.handle++
		r := &fakeRule{handle: k.handle, attrs: attrs}
		if m.Header.Flags&netlink.Append != 0 {
			c.rules = append(c.rules, r)
		} else {
			c.rules = slices.Insert(c.rules, 0, r)
		}
	case unix.NFT_MSG_DELRULE:
		c := t.chain(p.str(unix.NFTA_RULE_CHAIN))
		if c == nil {
			return unix.ENOENT
		}
		if !p.has(unix.NFTA_RULE_HANDLE) {
			c.rules = nil // flush chain
			return 0
		}
		h := p.u64(unix.NFTA_RULE_HANDLE)
		i := slices.IndexFunc(c.rules, func(r *fakeRule) bool { return r.handle == h })
		if i < 0 {
			return unix.ENOENT
		}
		c.rules = slices.Delete(c.rules, i, i+1)
	case unix.NFT_MSG_NEWSET:
		name := p.str(unix.NFTA_SET_NAME)
		if t.set(name, 0) != nil {
			if m.Header.Flags&netlink.Excl != 0 {
				return unix.EEXIST
			}
			return 0 // kept, with its elements
		}
		t.sets = append(t.sets, &fakeSet{name: name, id: p.u32(unix.NFTA_SET_ID), attrs: without(p.attrs, unix.NFTA_SET_ID)})
	case unix.NFT_MSG_NEWSETELEM, unix.NFT_MSG_DELSETELEM:
		s := t.set(p.str(unix.NFTA_SET_ELEM_LIST_SET), p.u32(unix.NFTA_SET_ELEM_LIST_SET_ID))
		if s == nil {
			return unix.ENOENT
		}
		elems, err := netlink.UnmarshalAttributes(p.bytes(unix.NFTA_SET_ELEM_LIST_ELEMENTS))
		if err != nil {
			return unix.EINVAL
		}
		for _, e := range elems {
			// google/nftables numbers the elements of a request; the kernel's dump calls each
			// NFTA_LIST_ELEM.
			e.Type = unix.NLA_F_NESTED | unix.NFTA_LIST_ELEM
			key, data, errno := elemKeyData(e)
			if errno != 0 {
				return errno
			}
			i := slices.IndexFunc(s.elems, func(x netlink.Attribute) bool {
				k, _, _ := elemKeyData(x)
				return string(k) == string(key)
			})
			switch {
			case typ == unix.NFT_MSG_DELSETELEM && i < 0:
				return unix.ENOENT
			case typ == unix.NFT_MSG_DELSETELEM:
				s.elems = slices.Delete(s.elems, i, i+1)
			case i < 0:
				s.elems = append(s.elems, e)
			case m.Header.Flags&netlink.Excl != 0:
				return unix.EEXIST
			default:
				// The kernel accepts the same element again, and refuses a key that maps to
				// other data.
				if _, old, _ := elemKeyData(s.elems[i]); string(old) != string(data) {
					return unix.EEXIST
				}
			}
		}
	}
	return 0
}

// get answers a GET request, a dump with a multi-part reply.
func (k *fakeKernel) get(m netlink.Message) ([]netlink.Message, unix.Errno) {
	if uint16(m.Header.Type)>>8 != unix.NFNL_SUBSYS_NFTABLES {
		return nil, unix.EOPNOTSUPP
	}
	p, errno := parse(m)
	if errno != 0 {
		return nil, errno
	}
	var out []netlink.Message
	reply := func(typ uint16, family uint8, attrs []netlink.Attribute) {
		b, err := netlink.MarshalAttributes(attrs)
		if err != nil {
			panic(err)
		}
		out = append(out, netlink.Message{
			Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | typ), Flags: netlink.Multi},
			Data:   append([]byte{family, unix.NFNETLINK_V0, 0, 0}, b...),
		})
	}
	str := func(typ uint16, s string) netlink.Attribute {
		return netlink.Attribute{Type: typ, Data: append([]byte(s), 0)}
	}
	be64 := func(typ uint16, v uint64) netlink.Attribute {
		return netlink.Attribute{Type: typ, Data: binary.BigEndian.AppendUint64(nil, v)}
	}
	tables := func(tableAttr uint16) []*fakeTable {
		name := p.str(tableAttr)
		return slices.DeleteFunc(slices.Clone(k.tables), func(t *fakeTable) bool {
			return (p.family != unix.NFPROTO_UNSPEC && t.family != p.family) || (name != "" && t.name != name)
		})
	}
	dump := m.Header.Flags&netlink.Dump == netlink.Dump
	switch uint16(m.Header.Type) & 0xff {
	case unix.NFT_MSG_GETTABLE:
		for _, t := range tables(unix.NFTA_TABLE_NAME) {
			reply(unix.NFT_MSG_NEWTABLE, t.family, []netlink.Attribute{
				str(unix.NFTA_TABLE_NAME, t.name),
				{Type: unix.NFTA_TABLE_FLAGS, Data: make([]byte, 4)},
				{Type: unix.NFTA_TABLE_USE, Data: binary.BigEndian.AppendUint32(nil, uint32(len(t.chains)+len(t.sets)))},
			})
		}
	case unix.NFT_MSG_GETCHAIN:
		for _, t := range tables(unix.NFTA_CHAIN_TABLE) {
			for _, c := range t.chains {
				reply(unix.NFT_MSG_NEWCHAIN, t.family, c.attrs)
			}
		}
	case unix.NFT_MSG_GETRULE:
		chain := p.str(unix.NFTA_RULE_CHAIN)
		for _, t := range tables(unix.NFTA_RULE_TABLE) {
			for _, c := range t.chains {
				if chain != "" && c.name != chain {
					continue
				}
				for _, r := range c.rules {
					reply(unix.NFT_MSG_NEWRULE, t.family, append(slices.Clone(r.attrs), be64(unix.NFTA_RULE_HANDLE, r.handle)))
				}
			}
		}
	case unix.NFT_MSG_GETSET:
		name := p.str(unix.NFTA_SET_NAME)
		for _, t := range tables(unix.NFTA_SET_TABLE) {
			for _, s := range t.sets {
				if name == "" || s.name == name {
					reply(unix.NFT_MSG_NEWSET, t.family, s.attrs)
				}
			}
		}
		if !dump {
			if len(out) == 0 {
				return nil, unix.ENOENT
			}
			out[0].Header.Flags = 0
			return out[:1], 0
		}
	case unix.NFT_MSG_GETSETELEM:
		name := p.str(unix.NFTA_SET_ELEM_LIST_SET)
		for _, t := range tables(unix.NFTA_SET_ELEM_LIST_TABLE) {
			s := t.set(name, 0)
			if s == nil {
				return nil, unix.ENOENT
			}
			if len(s.elems) == 0 {
				continue
			}
			elems, err := netlink.MarshalAttributes(s.elems)
			if err != nil {
				panic(err)
			}
			reply(unix.NFT_MSG_NEWSETELEM, t.family, []netlink.Attribute{
				str(unix.NFTA_SET_ELEM_LIST_TABLE, t.name),
				str(unix.NFTA_SET_ELEM_LIST_SET, s.name),
				{Type: unix.NLA_F_NESTED | unix.NFTA_SET_ELEM_LIST_ELEMENTS, Data: elems},
			})
		}
	default:
		return nil, unix.EOPNOTSUPP
	}
	if !dump {
		return nil, unix.EOPNOTSUPP
	}
	return append(out, netlink.Message{Header: netlink.Header{Type: netlink.Done, Flags: netlink.Multi}, Data: make([]byte, 4)}), 0
}

// kernelExprs rewrites a rule's expressions as a dump returns them: a lookup names its set, and the
// set id that referred to a set of the same batch is gone; a nat gives its ranges in full.
func kernelExprs(attrs []netlink.Attribute) ([]netlink.Attribute, unix.Errno) {
	attrs = slices.Clone(attrs)
	for i, a := range attrs {
		if a.Type&attrTypeMask != unix.NFTA_RULE_EXPRESSIONS {
			continue
		}
		exprs, err := netlink.UnmarshalAttributes(a.Data)
		if err != nil {
			return nil, unix.EINVAL
		}
		for j, e := range exprs {
			fields, err := netlink.UnmarshalAttributes(e.Data)
			if err != nil {
				return nil, unix.EINVAL
			}
			p := parsed{attrs: fields}
			data, err := netlink.UnmarshalAttributes(p.bytes(unix.NFTA_EXPR_DATA))
			if err != nil {
				return nil, unix.EINVAL
			}
			switch p.str(unix.NFTA_EXPR_NAME) {
			case "lookup":
				data = without(data, unix.NFTA_LOOKUP_SET_ID)
			case "nat":
				data = kernelNAT(data)
			default:
				continue
			}
			for k := range fields {
				if fields[k].Type&attrTypeMask == unix.NFTA_EXPR_DATA {
					fields[k] = netlink.Attribute{Type: unix.NLA_F_NESTED | unix.NFTA_EXPR_DATA, Data: marshal(data)}
				}
			}
			exprs[j].Data, exprs[j].Length = marshal(fields), 0 // a zero Length is recomputed
		}
		attrs[i] = netlink.Attribute{Type: unix.NLA_F_NESTED | unix.NFTA_RULE_EXPRESSIONS, Data: marshal(exprs)}
	}
	return attrs, 0
}

func marshal(attrs []netlink.Attribute) []byte {
	b, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		panic(err)
	}
	return b
}

// elemKeyData returns the key and data of a set element (NFTA_LIST_ELEM), as their raw attributes.
func elemKeyData(e netlink.Attribute) (key, data []byte, errno unix.Errno) {
	attrs, err := netlink.UnmarshalAttributes(e.Data)
	if err != nil {
		return nil, nil, unix.EINVAL
	}
	p := parsed{attrs: attrs}
	if !p.has(unix.NFTA_SET_ELEM_KEY) {
		return nil, nil, unix.EINVAL
	}
	return p.bytes(unix.NFTA_SET_ELEM_KEY), p.bytes(unix.NFTA_SET_ELEM_DATA), 0
}

// kernelNAT is a nat expression as nft_nat_dump returns it: a range given by its first register
// ends in the same register, and the flags say which ranges there are.
func kernelNAT(data []netlink.Attribute) []netlink.Attribute {
	p := parsed{attrs: data}
	flags := p.u32(unix.NFTA_NAT_FLAGS)
	for _, r := range []struct {
		min, max uint16
		flag     uint32
	}{
		{unix.NFTA_NAT_REG_ADDR_MIN, unix.NFTA_NAT_REG_ADDR_MAX, unix.NF_NAT_RANGE_MAP_IPS},
		{unix.NFTA_NAT_REG_PROTO_MIN, unix.NFTA_NAT_REG_PROTO_MAX, unix.NF_NAT_RANGE_PROTO_SPECIFIED},
	} {
		if !p.has(r.min) {
			continue
		}
		flags |= r.flag
		if !p.has(r.max) {
			data = append(data, netlink.Attribute{Type: r.max, Data: p.bytes(r.min)})
		}
	}
	data = without(data, unix.NFTA_NAT_FLAGS)
	if flags != 0 {
		data = append(data, netlink.Attribute{Type: unix.NFTA_NAT_FLAGS, Data: binary.BigEndian.AppendUint32(nil, flags)})
	}
	return data
}
