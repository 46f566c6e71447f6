package ipam

import (
	"errors"
	"fmt"
	"net/netip"
)

var (
	// ErrInvalid reports a malformed subnet, gateway or address.
	ErrInvalid = errors.New("invalid address")
	// ErrExhausted reports that a pool has no free address left.
	ErrExhausted = errors.New("address pool exhausted")
	// ErrOutOfRange reports a requested address outside the pool's subnet.
	ErrOutOfRange = errors.New("address outside subnet")
	// ErrTaken reports a requested address that is already allocated or reserved.
	ErrTaken = errors.New("address already in use")
)

// Pool is one subnet of a network and its gateway.
type Pool struct {
	Subnet  netip.Prefix
	Gateway netip.Addr
}

// ParseSubnet parses a CIDR, requires it to be in canonical form (no host bits) and large enough to hold
// a gateway and at least one endpoint.
func ParseSubnet(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%w: subnet %q is not a CIDR", ErrInvalid, s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%w: subnet %q has host bits set (did you mean %s?)", ErrInvalid, s, p.Masked())
	}
	if p.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("%w: subnet %q is an IPv4-mapped IPv6 prefix", ErrInvalid, s)
	}
	if p.Addr().BitLen()-p.Bits() < 2 {
		return netip.Prefix{}, fmt.Errorf("%w: subnet %q is too small (need at least a /%d)", ErrInvalid, s, p.Addr().BitLen()-2)
	}
	if err := CheckSpecialPurpose(p); err != nil {
		return netip.Prefix{}, err
	}
	return p, nil
}

// specialPurpose are the ranges no network's subnet may overlap (RFC 6890 and the IANA registries):
// addresses in them are not unicast, or never leave the host or the link, so a bridge gateway or a pod
// address there breaks routing instead of working.
var specialPurpose = []struct {
	p   netip.Prefix
	why string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), `"this network" (RFC 791), for source addresses only`},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback: its addresses never leave the host"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local: not routed beyond one link"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast: not unicast addresses"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved (with the limited broadcast 255.255.255.255): not usable as unicast addresses"},
	{netip.MustParsePrefix("::/128"), "the unspecified address"},
	{netip.MustParsePrefix("::1/128"), "loopback: it never leaves the host"},
	{netip.MustParsePrefix("::ffff:0:0/96"), "IPv4-mapped: stands for IPv4 addresses on IPv6 sockets"},
	{netip.MustParsePrefix("fe80::/10"), "link-local: every interface has its own route for it"},
	{netip.MustParsePrefix("ff00::/8"), "multicast: not unicast addresses"},
}

// CheckSpecialPurpose returns an ErrInvalid error naming the range and the reason when p overlaps a
// special-purpose range: loopback, link-local, multicast, "this network", the reserved 240.0.0.0/4
// (which holds the limited broadcast address), the IPv6 unspecified address or IPv4-mapped addresses.
func CheckSpecialPurpose(p netip.Prefix) error {
	for _, sp := range specialPurpose {
		if p.Overlaps(sp.p) {
			return fmt.Errorf("%w: subnet %s overlaps %s, which is %s", ErrInvalid, p, sp.p, sp.why)
		}
	}
	return nil
}

// NewPool validates subnet and gateway; an invalid gateway defaults to the first host address.
func NewPool(subnet netip.Prefix, gateway netip.Addr) (Pool, error) {
	if !gateway.IsValid() {
		gateway = subnet.Addr().Next()
	}
	p := Pool{Subnet: subnet, Gateway: gateway}
	if !p.usable(gateway) {
		return Pool{}, fmt.Errorf("%w: gateway %s is not a host address of %s", ErrOutOfRange, gateway, subnet)
	}
	return p, nil
}

// usable reports whether a is a host address of the subnet: inside it, not the network address, and for
// IPv4 not the broadcast address.
func (p Pool) usable(a netip.Addr) bool {
	if !p.Subnet.Contains(a) || a == p.Subnet.Addr() {
		return false
	}
	if a.Is4() && a == lastAddr(p.Subnet) {
		return false
	}
	return true
}

// Check validates a static request against the pool and the taken set.
func (p Pool) Check(a netip.Addr, taken func(netip.Addr) bool) error {
	if !p.usable(a) {
		return fmt.Errorf("%w: %s is not a host address of %s", ErrOutOfRange, a, p.Subnet)
	}
	if a == p.Gateway {
		return fmt.Errorf("%w: %s is the gateway of %s", ErrTaken, a, p.Subnet)
	}
	if taken(a) {
		return fmt.Errorf("%w: %s", ErrTaken, a)
	}
	return nil
}

// Next returns the first free host address after cursor, wrapping around once, like host-local's
// round-robin, so that a just-freed address is not handed out again at once. An invalid cursor starts at
// the beginning of the subnet. Large IPv6 pools are searched only up to limit candidates.
func (p Pool) Next(cursor netip.Addr, taken func(netip.Addr) bool) (netip.Addr, error) {
	const limit = 1 << 20
	first := p.Subnet.Addr().Next()
	if !cursor.IsValid() || !p.Subnet.Contains(cursor) {
		cursor = p.Subnet.Addr()
	}
	a := cursor.Next()
	for i := 0; i < limit; i++ {
		if !a.IsValid() || !p.Subnet.Contains(a) {
			a = first
		}
		if p.usable(a) && a != p.Gateway && !taken(a) {
			return a, nil
		}
		if a == cursor {
			break
		}
		a = a.Next()
	}
	return netip.Addr{}, fmt.Errorf("%w: %s", ErrExhausted, p.Subnet)
}

// Overlaps reports whether two prefixes share any address.
func Overlaps(a, b netip.Prefix) bool { return a.Overlaps(b) }

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	bits := p.Bits()
	for i := range b {
		for j := 0; j < 8; j++ {
			if i*8+j >= bits {
				b[i] |= 0x80 >> j
			}
		}
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// Size returns the number of host addresses endpoints can get (gateway excluded), capped at 1<<30.
func (p Pool) Size() int {
	host := p.Subnet.Addr().BitLen() - p.Subnet.Bits()
	if host >= 30 {
		return 1 << 30
	}
	n := 1<<host - 2 // network address and gateway
	if p.Subnet.Addr().Is4() {
		n-- // broadcast
	}
	return n
}
