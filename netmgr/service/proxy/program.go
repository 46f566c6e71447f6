package proxy

import (
	"errors"
	"fmt"
	"net"
	"sort"
	"sync/atomic"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	mnl "github.com/mdlayher/netlink"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// kernel programs the table of one network namespace.
type kernel struct {
	nsFd int
	conn *nftables.Conn
	ct   *netlink.Handle
	// ops counts the messages queued on conn since its last flush; big syncs are cut into batches.
	ops int
	// sent counts every message flushed (tests).
	sent int
	// atomic makes a split batch as large as maxAtomicOps (a full sync).
	atomic bool
}

// bigBuffers gives the socket buffers room for a batch of maxBatchOps messages and their
// acknowledgements: the FORCE options pass net.core.[rw]mem_max (the agent has CAP_NET_ADMIN); where
// they fail, the plain ones are capped there, and batches are kept small enough for that.
func bigBuffers(c *mnl.Conn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	forced := false
	_ = raw.Control(func(fd uintptr) {
		e1 := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sockBuf)
		e2 := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, sockBuf)
		forced = e1 == nil && e2 == nil
	})
	if !forced {
		_ = c.SetWriteBuffer(sockBuf)
		_ = c.SetReadBuffer(sockBuf)
		smallBatches.Store(true)
	}
	return nil
}

const sockBuf = 64 << 20

// smallBatches is set where the socket buffers could not be raised past the system's maximum.
var smallBatches atomic.Bool

// maxBatchOps bounds one batch: every message is acknowledged, and the acknowledgements of one batch
// must fit the socket's receive buffer. A full sync is one batch (one transaction: no moment
// without the services) up to maxAtomicOps messages, where the buffers could be raised.
const (
	maxBatchOps  = 4000
	maxAtomicOps = 200000
)

// limit is the number of messages after which a batch that may be split is flushed.
func (k *kernel) limit() int {
	switch {
	case smallBatches.Load():
		return 200
	case k.atomic:
		return maxAtomicOps
	}
	return maxBatchOps
}

func (k *kernel) open() error {
	if k.conn != nil {
		return nil
	}
	opts := []nftables.ConnOption{nftables.AsLasting(), nftables.WithSockOptions(bigBuffers)}
	if k.nsFd >= 0 {
		opts = append(opts, nftables.WithNetNSFd(k.nsFd))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	k.conn = c
	if k.ct == nil {
		var h *netlink.Handle
		if k.nsFd >= 0 {
			h, err = netlink.NewHandleAt(netns.NsHandle(k.nsFd))
		} else {
			h, err = netlink.NewHandle()
		}
		if err != nil {
			return fmt.Errorf("netlink: %w", err)
		}
		k.ct = h
	}
	return nil
}

func (k *kernel) close() {
	if k.conn != nil {
		_ = k.conn.CloseLasting()
		k.conn = nil
	}
	if k.ct != nil {
		k.ct.Close()
		k.ct = nil
	}
}

// flush sends what is queued as one batch.
func (k *kernel) flush() error {
	k.sent += k.ops
	k.ops = 0
	if err := k.conn.Flush(); err != nil {
		if errors.Is(err, unix.EMSGSIZE) || errors.Is(err, unix.ENOBUFS) {
			smallBatches.Store(true) // the buffers are smaller than asked: small batches from now on
		}
		k.close() // a fresh connection next time: a failed batch can leave acknowledgements unread
		return fmt.Errorf("nftables table %s: %w", TableName, err)
	}
	return nil
}

// step counts one queued message and flushes when the batch is full (only where the caller allows
// splitting: a full sync).
func (k *kernel) step(split bool) error {
	k.ops++
	if split && k.ops >= k.limit() {
		return k.flush()
	}
	return nil
}

func setElems(es []elem) []nftables.SetElement {
	out := make([]nftables.SetElement, len(es))
	for i, e := range es {
		out[i] = nftables.SetElement{Key: []byte(e.key)}
		switch {
		case isVerdictMap(e.set):
			out[i].VerdictData = &expr.Verdict{Kind: e.kind, Chain: e.chain}
		case isDataMap(e.set):
			out[i].Val = []byte(e.data)
		}
	}
	return out
}

// elements queues adds (or deletes) of es, grouped by set, in messages of at most 256 elements
// (one message's element list must stay well under 64 KiB).
func (k *kernel) elements(es []elem, del bool, split bool) error {
	type fset struct {
		v6   bool
		name string
	}
	by := map[fset][]elem{}
	for _, e := range es {
		by[fset{e.v6, e.set}] = append(by[fset{e.v6, e.set}], e)
	}
	names := make([]fset, 0, len(by))
	for n := range by {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool {
		if names[i].v6 != names[j].v6 {
			return !names[i].v6
		}
		return names[i].name < names[j].name
	})
	for _, n := range names {
		s := mapSet(n.name, n.v6)
		list := by[n]
		for len(list) > 0 {
			c := min(len(list), 256)
			var err error
			if del {
				err = k.conn.SetDeleteElements(s, setElems(list[:c]))
			} else {
				err = k.conn.SetAddElements(s, setElems(list[:c]))
			}
			if err != nil {
				return err
			}
			if err := k.step(split); err != nil {
				return err
			}
			list = list[c:]
		}
	}
	return nil
}

// rules queues c's rules.
func (k *kernel) rules(c chainPlan) {
	ch := chain(c.name, c.v6)
	for _, r := range c.rules {
		exprs, anon, elems := r.render(c.v6)
		if anon != nil {
			if err := k.conn.AddSet(anon, elems); err != nil {
				panic(err) // only for a non-constant anonymous set
			}
			for _, e := range exprs {
				if l, ok := e.(*expr.Lookup); ok {
					l.SetID, l.SetName = anon.ID, anon.Name
				}
			}
			k.ops++
		}
		k.conn.AddRule(&nftables.Rule{Table: ch.Table, Chain: ch, Exprs: exprs})
		k.ops++
	}
}

// tableExists reports whether the table of a family is there.
func (k *kernel) tableExists(v6 bool) (bool, error) {
	_, err := k.conn.ListTableOfFamily(TableName, tableOf(v6).Family)
	if err == nil {
		return true, nil
	}
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	return false, err
}

// intact reports whether both tables still have their fixed rules (someone may have flushed or
// deleted one).
func (k *kernel) intact() (bool, error) {
	for _, v6 := range []bool{false, true} {
		ok, err := k.intactOf(v6)
		if !ok || err != nil {
			return ok, err
		}
	}
	return true, nil
}

func (k *kernel) intactOf(v6 bool) (bool, error) {
	for _, name := range []string{chainServices, "nat-prerouting", "filter-prerouting"} {
		rs, err := k.conn.GetRules(tableOf(v6), chain(name, v6))
		if err != nil {
			if errors.Is(err, unix.ENOENT) {
				return false, nil
			}
			return false, err
		}
		if len(rs) == 0 {
			return false, nil
		}
	}
	return true, nil
}

// conntrackDelete removes the UDP conntrack entries of flows to a service destination that were
// translated to endpoint.
func (k *kernel) conntrackDelete(f udpFlow) (uint, error) {
	if k.ct == nil {
		return 0, errors.New("no netlink handle")
	}
	filter := &netlink.ConntrackFilter{}
	if err := filter.AddProtocol(unix.IPPROTO_UDP); err != nil {
		return 0, err
	}
	if err := filter.AddPort(netlink.ConntrackOrigDstPort, f.port); err != nil {
		return 0, err
	}
	if f.dst.IsValid() {
		if err := filter.AddIP(netlink.ConntrackOrigDstIP, net.IP(f.dst.AsSlice())); err != nil {
			return 0, err
		}
	}
	if err := filter.AddIP(netlink.ConntrackReplySrcIP, net.IP(f.endpoint.AsSlice())); err != nil {
		return 0, err
	}
	family := netlink.InetFamily(unix.AF_INET)
	if f.endpoint.Is6() {
		family = unix.AF_INET6
	}
	return k.ct.ConntrackDeleteFilters(netlink.ConntrackTable, family, filter)
}
