package ipam

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"

	"github.com/netmgr/netmgr/netmgr/store"
)

// Keys is what an Allocator reads from a store: the allocations recorded under a key prefix. A
// store.Store is one.
type Keys interface {
	List(ctx context.Context, prefix string) ([]store.KV, int64, error)
}

// Request asks for one address from each of a set of pools.
//
// The allocations of the pools are the keys under Prefix: the address a is recorded at Prefix+a.String()
// with Owner as its value. netmgr uses one Request per network attachment (Prefix "ipam/NETWORK/", one
// Pool per subnet, Owner the sandbox name); a service cluster-IP allocator is the same thing with the
// service CIDR as its one Pool (Gateway: an address of the CIDR it never hands out, e.g. the first),
// its own prefix (e.g. "svcip/") and the service name as Owner.
type Request struct {
	// Name names the pools in error messages, e.g. `network "web"`.
	Name string
	// Prefix is the key prefix of the pools' allocations; it should end in a separator.
	Prefix string
	// Pools are the subnets with their gateways; at most one per address family is usual, and each
	// gets one address.
	Pools []Pool
	// Reserved addresses are neither handed out nor accepted as static (a driver's own addresses).
	Reserved map[netip.Addr]bool
	// Static are requested addresses, at most one per family, each inside a pool of its family; a pool
	// with no static address of its family gets the next free one.
	Static []netip.Addr
	// Owner is the value written at each chosen key.
	Owner []byte
}

// Allocation is what an Allocator chose. The caller commits Cmps and Ops in one store transaction
// (with whatever else the allocation is for, e.g. the sandbox record): the Cmps require every key still
// absent, which is what keeps two processes from committing the same address. After the transaction,
// whether it succeeded or not, the caller calls Release(Keys...).
type Allocation struct {
	Addrs []netip.Prefix // one per pool, in the pools' order, with the pool's prefix length
	Keys  []string       // the store key of each address
	Cmps  []store.Cmp    // Absent(key) for each key
	Ops   []store.Op     // Put(key, Owner) for each key
}

// Allocator chooses addresses: a static request if it is valid, else the next free address after a
// per-process cursor, like host-local's round-robin. It is safe for concurrent use. Keys chosen but not
// yet released are pending: concurrent goroutines of this process do not choose them, so that they do
// not collide in their transactions; between processes the store's compare decides.
type Allocator struct {
	mu      sync.Mutex
	pending map[string]bool       // keys chosen by this process and not yet released
	cursor  map[string]netip.Addr // Prefix + family -> the address last chosen there
}

// NewAllocator returns an Allocator with no pending keys and no cursors.
func NewAllocator() *Allocator {
	return &Allocator{pending: map[string]bool{}, cursor: map[string]netip.Addr{}}
}

// requestError is a malformed request. Its message carries no sentinel text of its own (callers prefix
// their own invalid-argument sentinel), but it matches ErrInvalid.
type requestError string

func (e requestError) Error() string        { return string(e) }
func (e requestError) Is(target error) bool { return target == ErrInvalid }

// Allocate lists the keys under req.Prefix once and chooses one address per pool. Errors: a request
// with two static addresses of one family or one outside every pool's family is ErrInvalid; a static
// address that is not a host address of its pool is ErrOutOfRange; one that is the gateway, reserved,
// recorded or pending is ErrTaken; a pool with no free address is ErrExhausted. On error nothing stays
// pending.
func (al *Allocator) Allocate(ctx context.Context, keys Keys, req Request) (*Allocation, error) {
	used, _, err := keys.List(ctx, req.Prefix)
	if err != nil {
		return nil, err
	}
	takenSet := make(map[string]bool, len(used))
	highest := map[bool]netip.Addr{}
	for _, kv := range used {
		takenSet[kv.Key] = true
		if a, err := netip.ParseAddr(strings.TrimPrefix(kv.Key, req.Prefix)); err == nil && a.Compare(highest[a.Is4()]) > 0 {
			highest[a.Is4()] = a
		}
	}
	staticFamily := map[bool]netip.Addr{}
	for _, s := range req.Static {
		if o, dup := staticFamily[s.Is4()]; dup {
			return nil, requestError(fmt.Sprintf("%s and %s: at most one static address per family", o, s))
		}
		staticFamily[s.Is4()] = s
		ok := false
		for _, p := range req.Pools {
			if p.Subnet.Addr().Is4() == s.Is4() {
				ok = true
			}
		}
		if !ok {
			subnets := make([]netip.Prefix, len(req.Pools))
			for i, p := range req.Pools {
				subnets[i] = p.Subnet
			}
			return nil, requestError(fmt.Sprintf("%s is not in any subnet of %s (%v)", s, req.Name, subnets))
		}
	}

	al.mu.Lock()
	defer al.mu.Unlock()
	taken := func(a netip.Addr) bool {
		k := req.Prefix + a.String()
		return takenSet[k] || al.pending[k] || req.Reserved[a]
	}
	out := &Allocation{}
	for _, pool := range req.Pools {
		v4 := pool.Subnet.Addr().Is4()
		a, ok := staticFamily[v4]
		if ok {
			if err := pool.Check(a, taken); err != nil {
				al.release(out.Keys)
				return nil, err
			}
		} else {
			ck := req.Prefix + familyName(v4)
			cursor, ok := al.cursor[ck]
			if !ok {
				cursor = highest[v4]
			}
			if a, err = pool.Next(cursor, taken); err != nil {
				al.release(out.Keys)
				return nil, err
			}
			al.cursor[ck] = a
		}
		k := req.Prefix + a.String()
		al.pending[k] = true
		out.Keys = append(out.Keys, k)
		out.Addrs = append(out.Addrs, netip.PrefixFrom(a, pool.Subnet.Bits()))
		out.Cmps = append(out.Cmps, store.Absent(k))
		out.Ops = append(out.Ops, store.Put(k, req.Owner))
	}
	return out, nil
}

// Release forgets pending keys: after the transaction that recorded them committed (the store has
// them now) or failed (they are free again).
func (al *Allocator) Release(keys ...string) {
	al.mu.Lock()
	defer al.mu.Unlock()
	al.release(keys)
}

func (al *Allocator) release(keys []string) {
	for _, k := range keys {
		delete(al.pending, k)
	}
}

func familyName(v4 bool) string {
	if v4 {
		return "v4"
	}
	return "v6"
}
