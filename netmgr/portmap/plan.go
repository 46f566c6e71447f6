package portmap

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/netmgr/netmgr/netmgr/store"
)

// KeyPrefix is the prefix of every port key (see the package comment).
const KeyPrefix = "ports/"

// Record is one published host port of a sandbox (ranges are recorded port by port), with the
// addresses it forwards to: a part of the sandbox's record.
type Record struct {
	Mapping
	Network string     `json:"network"`
	Target4 netip.Addr `json:"target4,omitzero"`
	Target6 netip.Addr `json:"target6,omitzero"`
}

// GuardKey is the key that every taker of a protocol's port rewrites.
func GuardKey(proto string, port uint16) string {
	return fmt.Sprintf("%s%s/%05d", KeyPrefix, proto, port)
}

// HostKey names a mapping's host address in its store key: "*" for any address.
func HostKey(a netip.Addr) string {
	if !a.IsValid() {
		return "*"
	}
	return a.String()
}

// HolderKey is the key that records who holds the port on its host address.
func (p Record) HolderKey() string {
	return GuardKey(p.Protocol, p.HostPort) + "/" + HostKey(p.HostIP)
}

// HostsConflict reports whether two host address keys (HostKey) of one protocol and port overlap:
// a wildcard conflicts with everything, an unspecified address with every address of its family.
func HostsConflict(a, b string) bool {
	if a == "*" || b == "*" || a == b {
		return true
	}
	aa, aerr := netip.ParseAddr(a)
	ba, berr := netip.ParseAddr(b)
	if aerr != nil || berr != nil || aa.Is4() != ba.Is4() {
		return false
	}
	return aa.IsUnspecified() || ba.IsUnspecified()
}

// Keys is what Plan reads from a store: the keys under a prefix. A store.Store is one.
type Keys interface {
	List(ctx context.Context, prefix string) ([]store.KV, int64, error)
}

// Request asks to publish mappings for one sandbox, to its addresses on one network.
type Request struct {
	Owner            string // the sandbox: the value of each holder key, named in conflicts
	Network          string // the network the targets are on
	Target4, Target6 netip.Addr
	Mappings         []Mapping
	// HostAddrs returns the addresses of the host; it is called once, and only if a mapping names a
	// specific host address, which must be one of them.
	HostAddrs func() (map[netip.Addr]bool, error)
}

// Reservation is what Plan decided: the records to keep in the sandbox's record, and the compares and
// puts that take the ports, to commit in the transaction that writes that record. The compares fail
// the transaction if another taker of any of the ports committed since the read, so that two creates
// in any processes never both publish one port.
type Reservation struct {
	Records []Record
	Cmps    []store.Cmp
	Ops     []store.Op
}

// Plan validates req's mappings (Normalize, host addresses, a target of the mapping's family) and
// checks them against each other and against the ports published in keys: one consistent read of
// each port's guard and holders, or of a whole protocol when more than eight of its ports are asked
// for at once. Errors wrap ErrInvalid, or ErrExists for a port another owner holds.
func Plan(ctx context.Context, keys Keys, req Request) (*Reservation, error) {
	var local map[netip.Addr]bool
	ports := make([]Record, 0, len(req.Mappings))
	for _, pm := range req.Mappings {
		p, err := Normalize(pm)
		if err != nil {
			return nil, err
		}
		if p.HostIP.IsValid() && !p.HostIP.IsUnspecified() {
			if local == nil {
				if local, err = req.HostAddrs(); err != nil {
					return nil, err
				}
			}
			if !local[p.HostIP] {
				return nil, fmt.Errorf("%w: publish %s: %s is not an address of the host", ErrInvalid, p, p.HostIP)
			}
		}
		r := Record{Mapping: p, Network: req.Network}
		if !p.HostIP.IsValid() || p.HostIP.Is4() {
			r.Target4 = req.Target4
		}
		if !p.HostIP.IsValid() || p.HostIP.Is6() {
			r.Target6 = req.Target6
		}
		if !r.Target4.IsValid() && !r.Target6.IsValid() {
			return nil, fmt.Errorf("%w: publish %s: the sandbox has no address of that family on network %q", ErrInvalid, p, req.Network)
		}
		ports = append(ports, r)
	}
	// Conflicts within the request.
	byPort := map[string][]Record{}
	for _, p := range ports {
		g := GuardKey(p.Protocol, p.HostPort)
		for _, q := range byPort[g] {
			if HostsConflict(HostKey(p.HostIP), HostKey(q.HostIP)) {
				return nil, fmt.Errorf("%w: publish %s and %s: the same host port twice", ErrInvalid, q.Mapping, p.Mapping)
			}
		}
		byPort[g] = append(byPort[g], p)
	}
	// Conflicts with what is published.
	protoOf := func(guard string) string { return strings.Split(strings.TrimPrefix(guard, KeyPrefix), "/")[0] }
	held := map[string]store.KV{}
	perProto := map[string]int{}
	for g := range byPort {
		perProto[protoOf(g)]++
	}
	for proto, n := range perProto {
		if n <= 8 {
			continue
		}
		kvs, _, err := keys.List(ctx, KeyPrefix+proto+"/")
		if err != nil {
			return nil, err
		}
		for _, kv := range kvs {
			held[kv.Key] = kv
		}
	}
	res := &Reservation{}
	guards := make([]string, 0, len(byPort))
	for g := range byPort {
		guards = append(guards, g)
	}
	sort.Strings(guards)
	for _, g := range guards {
		if perProto[protoOf(g)] <= 8 {
			kvs, _, err := keys.List(ctx, g)
			if err != nil {
				return nil, err
			}
			for _, kv := range kvs {
				held[kv.Key] = kv
			}
		}
		for _, p := range byPort[g] {
			for k, kv := range held {
				host, ok := strings.CutPrefix(k, g+"/")
				if ok && HostsConflict(host, HostKey(p.HostIP)) {
					return nil, fmt.Errorf("%w: publish %s: host port %d/%s is already published by sandbox %q", ErrExists, p.Mapping, p.HostPort, p.Protocol, kv.Value)
				}
			}
			res.Cmps = append(res.Cmps, store.Absent(p.HolderKey()))
			res.Ops = append(res.Ops, store.Put(p.HolderKey(), []byte(req.Owner)))
		}
		res.Cmps = append(res.Cmps, store.Cmp{Key: g, Rev: held[g].Rev})
		res.Ops = append(res.Ops, store.Put(g, nil))
	}
	res.Records = ports
	return res, nil
}

// ReleaseOps are the writes that free ports, committed with the removal of the sandbox's record.
// Deleting the guard makes a concurrent taker of the port re-read, which is all it is for.
func ReleaseOps(ports []Record) []store.Op {
	ops := make([]store.Op, 0, 2*len(ports))
	for _, p := range ports {
		ops = append(ops, store.Del(p.HolderKey()), store.Del(GuardKey(p.Protocol, p.HostPort)))
	}
	return ops
}
