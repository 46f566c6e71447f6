package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/netmgr/netmgr/netmgr/ipam"
	"github.com/netmgr/netmgr/netmgr/store"
)

// SubnetLease is one node subnet of a cluster network and the node that holds it.
type SubnetLease struct {
	Network string
	Subnet  netip.Prefix
	Node    string
	Leased  time.Time // when Node took it
	Renewed time.Time // when Node last renewed it
	Rev     int64     // the store revision of the lease's key
}

type leaseValue struct {
	Node    string    `json:"node"`
	Leased  time.Time `json:"leased"`
	Renewed time.Time `json:"renewed"`
}

// SubnetKey returns the key of a network's node subnet: cluster/subnets/NETWORK/ADDR-BITS, e.g.
// cluster/subnets/pods/10.0.3.0-24 (flannel's spelling: no '/' inside the last component).
func SubnetKey(network string, subnet netip.Prefix) string {
	return KeySubnets + network + "/" + subnet.Addr().String() + "-" + strconv.Itoa(subnet.Bits())
}

func parseSubnetKey(key string) (network string, subnet netip.Prefix, err error) {
	rest := strings.TrimPrefix(key, KeySubnets)
	network, last, ok := strings.Cut(rest, "/")
	i := strings.LastIndexByte(last, '-')
	if !ok || i < 0 {
		return "", netip.Prefix{}, fmt.Errorf("subnet lease key %q is not NETWORK/ADDR-BITS", key)
	}
	subnet, err = netip.ParsePrefix(last[:i] + "/" + last[i+1:])
	if err != nil || subnet.Masked() != subnet {
		return "", netip.Prefix{}, fmt.Errorf("subnet lease key %q does not name a subnet", key)
	}
	return network, subnet, nil
}

// ListSubnets returns the subnet leases of a network ("" for every network), sorted by network and
// subnet. Leases that do not decode are skipped and logged (log may be nil).
func ListSubnets(ctx context.Context, st store.Store, network string, log *slog.Logger) ([]SubnetLease, error) {
	prefix := KeySubnets
	if network != "" {
		prefix += network + "/"
	}
	kvs, _, err := st.List(ctx, prefix)
	if err != nil {
		return nil, err
	}
	out := make([]SubnetLease, 0, len(kvs))
	for _, kv := range kvs {
		l, err := decodeLease(kv)
		if err != nil {
			logger(log).Warn("cluster: skipping a subnet lease", "key", kv.Key, "err", err)
			continue
		}
		out = append(out, l)
	}
	slices.SortFunc(out, func(a, b SubnetLease) int {
		if c := strings.Compare(a.Network, b.Network); c != 0 {
			return c
		}
		return a.Subnet.Addr().Compare(b.Subnet.Addr())
	})
	return out, nil
}

func decodeLease(kv store.KV) (SubnetLease, error) {
	network, subnet, err := parseSubnetKey(kv.Key)
	if err != nil {
		return SubnetLease{}, err
	}
	var v leaseValue
	if err := json.Unmarshal(kv.Value, &v); err != nil || v.Node == "" {
		return SubnetLease{}, fmt.Errorf("subnet lease %s: not a lease record", kv.Key)
	}
	return SubnetLease{Network: network, Subnet: subnet, Node: v.Node, Leased: v.Leased, Renewed: v.Renewed, Rev: kv.Rev}, nil
}

func encodeLease(node string, leased, renewed time.Time) []byte {
	b, _ := json.Marshal(leaseValue{Node: node, Leased: leased.UTC(), Renewed: renewed.UTC()})
	return b
}

// subnetLeaser takes and renews one node's subnets.
type subnetLeaser struct {
	st    store.Store
	node  string
	grace time.Duration
	now   func() time.Time
	log   *slog.Logger
}

// acquire returns the node's subnet of pool in network: the one it already holds (renewed), else hint
// when it is free or reclaimable, else a free one chosen at random, else the dead node's subnet renewed
// longest ago once the grace period is over; ErrFull when none is left. Taking a free subnet compares
// its key absent and taking over a dead node's compares the lease's revision, so two nodes never get
// one subnet; a lost race lists again and chooses again.
func (sl *subnetLeaser) acquire(ctx context.Context, network string, pool ipam.SubnetPool, hint netip.Prefix) (netip.Prefix, error) {
	var retry backoff
	retry.min, retry.max = 5*time.Millisecond, 200*time.Millisecond
	for attempt := 0; ; attempt++ {
		s, err := sl.tryAcquire(ctx, network, pool, hint)
		if !errors.Is(err, store.ErrConflict) {
			return s, err
		}
		if attempt >= 50 {
			return netip.Prefix{}, fmt.Errorf("network %q: leasing a node subnet: %w (gave up after %d races with other nodes)", network, err, attempt+1)
		}
		if !sleep(ctx, retry.next()) {
			return netip.Prefix{}, ctx.Err()
		}
	}
}

func (sl *subnetLeaser) tryAcquire(ctx context.Context, network string, pool ipam.SubnetPool, hint netip.Prefix) (netip.Prefix, error) {
	leases, err := ListSubnets(ctx, sl.st, network, sl.log)
	if err != nil {
		return netip.Prefix{}, err
	}
	now := sl.now()
	exact := map[netip.Prefix]SubnetLease{}
	var odd []SubnetLease // leases of another length that overlap the pool (a hand edit, an old layout)
	inPool := 0
	for _, l := range leases {
		switch {
		case pool.Contains(l.Subnet):
			exact[l.Subnet] = l
			inPool++
		case l.Subnet.Overlaps(pool.CIDR):
			odd = append(odd, l)
			if l.Subnet.Bits() < pool.Bits {
				inPool += 1 << min(pool.Bits-l.Subnet.Bits(), 20)
			} else {
				inPool++
			}
		}
	}
	// The subnet this node holds already: renew it.
	for _, l := range leases {
		if l.Node == sl.node && pool.Contains(l.Subnet) {
			return l.Subnet, sl.write(ctx, network, l.Subnet, l.Rev, l.Leased, now)
		}
	}
	taken := func(s netip.Prefix) bool {
		if _, ok := exact[s]; ok {
			return true
		}
		for _, o := range odd {
			if o.Subnet.Overlaps(s) {
				return true
			}
		}
		return false
	}
	alive := map[string]bool{}
	reclaimable := func(l SubnetLease) (bool, error) {
		if now.Sub(l.Renewed) < sl.grace {
			return false, nil
		}
		a, ok := alive[l.Node]
		if !ok {
			_, err := sl.st.Get(ctx, KeyNodes+l.Node)
			switch {
			case err == nil:
				a = true
			case errors.Is(err, store.ErrNotFound):
			default:
				return false, err
			}
			alive[l.Node] = a
		}
		return !a, nil
	}
	if hint.IsValid() && pool.Contains(hint) {
		l, held := exact[hint]
		switch {
		case !taken(hint):
			return hint, sl.write(ctx, network, hint, 0, now, now)
		case held:
			ok, err := reclaimable(l)
			if err != nil {
				return netip.Prefix{}, err
			}
			if ok {
				sl.log.Info("cluster: taking over a dead node's subnet (the subnet this node had)", "network", network,
					"subnet", hint, "from", l.Node, "renewed", l.Renewed)
				return hint, sl.write(ctx, network, hint, l.Rev, now, now)
			}
			sl.log.Warn("cluster: this node's remembered subnet belongs to another node: leasing another; pods with addresses in it must be recreated",
				"network", network, "subnet", hint, "holder", l.Node)
		}
	}
	if uint64(inPool) < pool.Count() {
		s, err := pool.Free(rand.Uint64N(pool.Count()), inPool, taken)
		if err == nil {
			return s, sl.write(ctx, network, s, 0, now, now)
		}
	}
	var dead []SubnetLease
	for _, l := range exact {
		ok, err := reclaimable(l)
		if err != nil {
			return netip.Prefix{}, err
		}
		if ok {
			dead = append(dead, l)
		}
	}
	if len(dead) == 0 {
		return netip.Prefix{}, fmt.Errorf("%w: network %q: no free /%d left in %s (%d leased; a dead node's subnet is reclaimed %v after its last renewal, or at once by podctl node rm)",
			ErrFull, network, pool.Bits, pool.CIDR, inPool, sl.grace)
	}
	slices.SortFunc(dead, func(a, b SubnetLease) int { return a.Renewed.Compare(b.Renewed) })
	l := dead[0]
	sl.log.Info("cluster: taking over a dead node's subnet", "network", network, "subnet", l.Subnet, "from", l.Node, "renewed", l.Renewed)
	return l.Subnet, sl.write(ctx, network, l.Subnet, l.Rev, now, now)
}

// write puts the node's lease of subnet, comparing the key's revision (0: absent).
func (sl *subnetLeaser) write(ctx context.Context, network string, subnet netip.Prefix, rev int64, leased, renewed time.Time) error {
	k := SubnetKey(network, subnet)
	return sl.st.Txn(ctx, []store.Cmp{{Key: k, Rev: rev}}, []store.Op{store.Put(k, encodeLease(sl.node, leased, renewed))})
}

// release deletes the node's leases of network that it holds, comparing each one's revision.
func (sl *subnetLeaser) release(ctx context.Context, network string, subnets []netip.Prefix) error {
	for _, s := range subnets {
		k := SubnetKey(network, s)
		kv, err := sl.st.Get(ctx, k)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		l, err := decodeLease(kv)
		if err != nil || l.Node != sl.node {
			continue // not ours (any more): leave it
		}
		if err := sl.st.Txn(ctx, []store.Cmp{{Key: k, Rev: kv.Rev}}, []store.Op{store.Del(k)}); err != nil {
			return err
		}
	}
	return nil
}

// RemoveNode forgets a node: deletes its record and frees its subnet leases in every network, in one
// transaction, and returns the leases it freed. It is `podctl node rm`, for a node that is gone for
// good: its subnets are free at once instead of after the grace period, and its peers drop it now
// instead of when its lease expires. An agent that is still alive under that name registers again at
// its next check and leases its subnets again (the same ones if they are still free). A name with
// neither a record nor a lease is ErrNotFound.
func RemoveNode(ctx context.Context, st store.Store, name string) ([]SubnetLease, error) {
	if err := CheckName("node", name); err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		var cmps []store.Cmp
		var ops []store.Op
		kv, err := st.Get(ctx, KeyNodes+name)
		switch {
		case err == nil:
			cmps = append(cmps, store.Cmp{Key: kv.Key, Rev: kv.Rev})
			ops = append(ops, store.Del(kv.Key))
		case !errors.Is(err, store.ErrNotFound):
			return nil, err
		}
		leases, err := ListSubnets(ctx, st, "", nil)
		if err != nil {
			return nil, err
		}
		var freed []SubnetLease
		for _, l := range leases {
			if l.Node == name {
				k := SubnetKey(l.Network, l.Subnet)
				cmps = append(cmps, store.Cmp{Key: k, Rev: l.Rev})
				ops = append(ops, store.Del(k))
				freed = append(freed, l)
			}
		}
		if len(ops) == 0 {
			return nil, fmt.Errorf("%w: node %q: no record and no subnet leases", ErrNotFound, name)
		}
		err = st.Txn(ctx, cmps, ops)
		if err == nil {
			return freed, nil
		}
		if !errors.Is(err, store.ErrConflict) || attempt >= 20 {
			return nil, err
		}
	}
}
