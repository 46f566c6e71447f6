package drivers

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
)

// NodePrefix is one family's node prefix option of a network that spans nodes: its option name, the
// default written into the options when the option is not given, and the longest length allowed
// (a node subnet must leave room for what the driver puts in it).
type NodePrefix struct {
	Opt     string
	V4      bool
	Default int
	Most    int
}

// CheckNodePrefixes validates a network's node prefix options against its cluster CIDRs (n.Subnets,
// at most one per family) and writes the defaults of those not given into n.Options. An option for a
// family without a CIDR, a length that is not a number in 1..Most, one shorter than the CIDR, or one
// that leaves fewer than 2 node subnets is ErrInvalid, with one line saying which.
func CheckNodePrefixes(n *Network, prefixes ...NodePrefix) error {
	for _, f := range prefixes {
		i := slices.IndexFunc(n.Subnets, func(p netip.Prefix) bool { return p.Addr().Is4() == f.V4 })
		v, given := n.Options[f.Opt]
		if i < 0 {
			if given {
				return fmt.Errorf("%w: option %s is for the %s cluster CIDR, and the network has none", ErrInvalid, f.Opt, familyName(f.V4))
			}
			continue
		}
		cidr := n.Subnets[i]
		if !given {
			v = strconv.Itoa(f.Default)
			n.Options[f.Opt] = v
		}
		bits, err := strconv.Atoi(v)
		if err != nil || bits < 1 || bits > f.Most {
			return fmt.Errorf("%w: option %s=%q is not a prefix length (1..%d)", ErrInvalid, f.Opt, v, f.Most)
		}
		switch {
		case bits < cidr.Bits():
			return fmt.Errorf("%w: %s=%d is shorter than the cluster CIDR %s: a node's subnet must fit inside it", ErrInvalid, f.Opt, bits, cidr)
		case bits == cidr.Bits():
			return fmt.Errorf("%w: %s=%d leaves only one node subnet in the cluster CIDR %s; a cluster needs at least 2 (give at least /%d)", ErrInvalid, f.Opt, bits, cidr, cidr.Bits()+1)
		}
	}
	return nil
}

func familyName(v4 bool) string {
	if v4 {
		return "IPv4"
	}
	return "IPv6"
}
