package drivers

import (
	"bytes"
	"fmt"
	"net"
	"strings"
)

// MaxIfNameLen is the longest interface name Linux accepts (IFNAMSIZ - 1).
const MaxIfNameLen = 15

// CheckIfName returns an ErrInvalid error unless name is a valid Linux interface name.
func CheckIfName(what, name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: %s name is empty", ErrInvalid, what)
	case len(name) > MaxIfNameLen:
		return fmt.Errorf("%w: %s name %q is %d bytes, the kernel allows at most %d", ErrInvalid, what, name, len(name), MaxIfNameLen)
	case name == "." || name == ".." || strings.ContainsAny(name, "/: \t\n"):
		return fmt.Errorf("%w: %s name %q contains a character the kernel refuses", ErrInvalid, what, name)
	}
	return nil
}

// ParseMAC parses the MAC address requested for an endpoint and refuses, with ErrInvalid, what no
// interface can take as its own (the kernel answers those with a bare EADDRNOTAVAIL): anything but a
// 48-bit Ethernet address, a multicast or the broadcast address (the group bit, the low bit of the
// first octet, set) and the all-zero address.
func ParseMAC(s string) (net.HardwareAddr, error) {
	mac, err := net.ParseMAC(s)
	if err != nil {
		return nil, fmt.Errorf("%w: mac %q: %v", ErrInvalid, s, err)
	}
	switch {
	case len(mac) != 6:
		return nil, fmt.Errorf("%w: mac %q is not a 48-bit Ethernet address", ErrInvalid, s)
	case bytes.Equal(mac, net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}):
		return nil, fmt.Errorf("%w: mac %s is the broadcast address; an interface needs a unicast MAC", ErrInvalid, mac)
	case mac[0]&0x01 != 0:
		return nil, fmt.Errorf("%w: mac %s is a multicast address (the low bit of its first octet is set); an interface needs a unicast MAC", ErrInvalid, mac)
	case bytes.Equal(mac, make(net.HardwareAddr, 6)):
		return nil, fmt.Errorf("%w: mac %s is all zeros; an interface needs a unicast MAC", ErrInvalid, mac)
	}
	return mac, nil
}

// MinIPv6MTU is the smallest MTU on which the kernel enables IPv6 (RFC 8200).
const MinIPv6MTU = 1280

// CheckIPv6MTU returns an ErrInvalid error when n has an IPv6 subnet and mtu, the MTU its interfaces
// will have, is below MinIPv6MTU: the kernel then disables IPv6 on them, and adding the gateway fails
// with a bare EINVAL. An mtu of 0 (the default) passes.
func CheckIPv6MTU(n *Network, mtu int) error {
	if mtu <= 0 || mtu >= MinIPv6MTU {
		return nil
	}
	for _, sn := range n.Subnets {
		if sn.Addr().Is6() {
			return fmt.Errorf("%w: mtu %d is too small for subnet %s: IPv6 needs an MTU of at least %d", ErrInvalid, mtu, sn, MinIPv6MTU)
		}
	}
	return nil
}
