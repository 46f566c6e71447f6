package ipam

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"net/netip"
)

// DefaultNodePrefix is the node prefix length a cluster network gets when none is given: /24 for
// IPv4 (254 pods per node, Kubernetes' and flannel's default), /64 for IPv6.
func DefaultNodePrefix(cidr netip.Prefix) int {
	if cidr.Addr().Is4() {
		return 24
	}
	return 64
}

// SubnetPool is a cluster CIDR cut into node subnets of one prefix length: the subnets that nodes
// lease, one each, for a cluster-scope network. It only does the arithmetic; who holds which subnet
// is recorded by the caller (netmgr/cluster).
type SubnetPool struct {
	CIDR netip.Prefix
	Bits int // the node prefix length
}

// NewSubnetPool checks a cluster CIDR and a node prefix length (see CheckNodePrefix) and returns the
// pool of node subnets.
func NewSubnetPool(cidr netip.Prefix, bits int) (SubnetPool, error) {
	if err := CheckNodePrefix(cidr, bits); err != nil {
		return SubnetPool{}, err
	}
	return SubnetPool{CIDR: cidr, Bits: bits}, nil
}

// CheckNodePrefix refuses, with one line matching ErrInvalid (its text names no sentinel: callers
// prefix their own, as for Allocate's request errors), a node prefix length that does not cut
// cidr into at least 2 node subnets each with room for a gateway and a pod: shorter than or equal to
// the CIDR's own prefix, or longer than /30 (IPv4) or /126 (IPv6). cidr must be canonical (no host
// bits).
func CheckNodePrefix(cidr netip.Prefix, bits int) error {
	if !cidr.IsValid() || cidr.Masked() != cidr {
		return requestError(fmt.Sprintf("cluster CIDR %s is not a canonical subnet", cidr))
	}
	max := cidr.Addr().BitLen() - 2
	switch {
	case bits < cidr.Bits():
		return requestError(fmt.Sprintf("node prefix /%d is larger than the cluster CIDR %s: it must be longer than /%d", bits, cidr, cidr.Bits()))
	case bits == cidr.Bits():
		return requestError(fmt.Sprintf("node prefix /%d leaves 1 node subnet in the cluster CIDR %s, fewer than 2: it must be longer than /%d", bits, cidr, cidr.Bits()))
	case bits > max:
		return requestError(fmt.Sprintf("node prefix /%d leaves no room for a gateway and a pod in a node subnet: at most /%d", bits, max))
	}
	return nil
}

// Count returns the number of node subnets, capped at 1<<62.
func (p SubnetPool) Count() uint64 {
	n := p.Bits - p.CIDR.Bits()
	if n >= 62 {
		return 1 << 62
	}
	return 1 << n
}

// Subnet returns node subnet number i (0 is the first; i < Count()).
func (p SubnetPool) Subnet(i uint64) netip.Prefix {
	b := p.CIDR.Addr().As16()
	hi, lo := binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
	shift := uint(128 - p.Bits)
	if p.CIDR.Addr().Is4() {
		shift = uint(32 - p.Bits)
	}
	// (hi, lo) += i << shift, over 128 bits.
	var addHi, addLo uint64
	if shift >= 64 {
		addHi = i << (shift - 64)
	} else {
		addLo = i << shift
		if shift > 0 {
			addHi = i >> (64 - shift)
		}
	}
	var carry uint64
	lo, carry = bits.Add64(lo, addLo, 0)
	hi, _ = bits.Add64(hi, addHi, carry)
	binary.BigEndian.PutUint64(b[:8], hi)
	binary.BigEndian.PutUint64(b[8:], lo)
	a := netip.AddrFrom16(b)
	if p.CIDR.Addr().Is4() {
		a = a.Unmap()
	}
	return netip.PrefixFrom(a, p.Bits)
}

// Contains reports whether s is one of the pool's node subnets: of its family and length, inside the
// CIDR, with no host bits.
func (p SubnetPool) Contains(s netip.Prefix) bool {
	return s.IsValid() && s.Bits() == p.Bits && s.Masked() == s && s.Addr().Is4() == p.CIDR.Addr().Is4() &&
		p.CIDR.Contains(s.Addr())
}

// Free returns the first node subnet, searching from subnet number start and wrapping around, for which
// taken is false. It asks taken at most limit+1 times when limit > 0 (a caller that knows how many
// subnets are taken passes that number, so a search of a huge IPv6 pool stays short), else up to
// Count() times. A pool with no free subnet is ErrExhausted.
func (p SubnetPool) Free(start uint64, limit int, taken func(netip.Prefix) bool) (netip.Prefix, error) {
	n := p.Count()
	steps := n
	if limit > 0 && uint64(limit)+1 < steps {
		steps = uint64(limit) + 1
	}
	for k := uint64(0); k < steps; k++ {
		s := p.Subnet((start + k) % n)
		if !taken(s) {
			return s, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("%w: no free /%d left in %s", ErrExhausted, p.Bits, p.CIDR)
}
