package firewall

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"github.com/mdlayher/netlink/nltest"
	"golang.org/x/sys/unix"
)

// TableName is the name of the inet-family nftables table owned by netmgr.
const TableName = "netmgr"

// ErrInvalid is wrapped by errors reporting invalid arguments.
var ErrInvalid = errors.New("invalid argument")

const (
	maxIfNameLen = unix.IFNAMSIZ - 1

	// The kernel caps rule UserData at NFT_USERDATA_MAXLEN bytes; the comment
	// TLV spends two bytes of header and a trailing NUL.
	maxUserData = 256
	maxNameLen  = maxUserData - 3 - len(commentPrefix)
)

// Attribute keys for log records.
const (
	keyTable    = "table"
	keyNetworks = "networks"
	keyRules    = "rules"
)

// Network describes one netmgr network as the firewall sees it: its host-side interfaces and
// subnets. The driver that owns the network decides what they are (a bridge network: its bridge).
type Network struct {
	// Name is the netmgr network name; every rule of the network carries it
	// so that rules can be traced to networks.
	Name string
	// Ifaces are the host-side interfaces the network's traffic enters and
	// leaves the host by (each at most 15 bytes, matched exactly): a bridge
	// network's bridge. A name ending in "*" is a prefix wildcard, as in nft:
	// "nmr1a2b*" matches every interface whose name starts with nmr1a2b (a
	// routed network's veths, which come and go, keyed by one rule instead of
	// one per veth); a wildcard must not match another network's names or
	// wildcards. A network with none gets no interface-keyed rules (no
	// isolation, masquerade or hairpin rules from here) and fails no other
	// network's rules; it still counts for published ports.
	Ifaces []string
	// Subnets are the IPv4 and/or IPv6 subnets of the network. Host bits are
	// ignored.
	Subnets []netip.Prefix
	// Internal forbids all traffic into or out of Ifaces except between
	// them.
	Internal bool
	// Masquerade SNATs traffic from Subnets leaving via any interface other
	// than Ifaces. It has no effect on an Internal network.
	Masquerade bool
	// NoMasqueradeTo are destinations that Masquerade leaves alone although
	// the traffic leaves by another interface: a cluster network's CIDR,
	// whose pods on other hosts must see the sender's own pod address.
	// Prefixes of a family the network has no subnet of are ignored.
	NoMasqueradeTo []netip.Prefix
	// HairpinIfaces are the interfaces of Ifaces on which a translated
	// connection (a published port, a service) from the network's own
	// subnets is masqueraded: those where client and server share one L2
	// segment, whose replies would go straight back without meeting the
	// host's conntrack (a bridge). Nil: all of Ifaces. An overlay names only
	// its bridge: a connection that leaves by the VXLAN device reaches
	// another host, whose replies come back through this one, so the server
	// sees the client's own pod address.
	HairpinIfaces []string
	// Routed lets other interfaces open connections into Ifaces: a
	// neighbour that routes Subnets via the host reaches every port of every
	// sandbox. Without it only published ports (connections the ports table
	// translated) and replies enter, as with Docker 28's default
	// gateway_mode nat. It has no effect on an Internal network.
	Routed bool
}

// Firewall programs the netmgr table of one network namespace.
type Firewall struct {
	nsFd   int
	logger *slog.Logger

	mu     sync.Mutex // serializes kernel operations and guards closed and legacyWarned
	closed bool
	// legacyWarned is the list of iptables-legacy tables last warned about.
	legacyWarned string

	// testDial, for tests only, stands in for the kernel: every netlink request goes to it
	// instead of a socket (nftables.WithTestDial), so that rule generation is tested without root.
	testDial nltest.Func
}

// New returns a Firewall that programs the namespace whose netns file
// descriptor is nsFd. nsFd < 0 means the caller's current network namespace.
// The descriptor is not duplicated: it must stay open until Close. New does
// not touch the kernel. A nil logger discards log records.
func New(nsFd int, logger *slog.Logger) (*Firewall, error) {
	if nsFd == 0 {
		// The netlink library reads fd 0 as "no namespace given".
		return nil, fmt.Errorf("create firewall: netns fd 0 is ambiguous: %w", ErrInvalid)
	}
	if nsFd < 0 {
		nsFd = -1
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Firewall{nsFd: nsFd, logger: logger}, nil
}

// Apply atomically replaces the whole netmgr table with the rules for nets,
// in one netlink transaction. The result does not depend on the order of nets
// or of their subnets, so applying the same networks twice gives the same
// ruleset. With no networks the table is removed, as by Remove.
//
// Apply validates nets before talking to the kernel: invalid input yields an
// error wrapping ErrInvalid and leaves the ruleset unchanged.
func (f *Firewall) Apply(ctx context.Context, nets []Network) error {
	nets, err := normalize(nets)
	if err != nil {
		return fmt.Errorf("apply ruleset: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return fmt.Errorf("apply ruleset: %w", net.ErrClosed)
	}
	var rules int
	err = f.do(ctx, func(c *nftables.Conn) error {
		var err error
		if rules, err = queueRuleset(c, nets); err != nil {
			return err
		}
		return c.Flush()
	})
	if err != nil {
		return fmt.Errorf("apply ruleset: %w", err)
	}
	// Then the accepts in iptables-nft's FORWARD chains (see foreign.go), in transactions of
	// their own: they depend on what a dump finds there.
	if err := f.do(ctx, func(c *nftables.Conn) error { return syncForeign(c, nets) }); err != nil {
		return fmt.Errorf("apply ruleset: %w", err)
	}
	if len(nets) > 0 {
		var ifaces []string
		for _, n := range nets {
			ifaces = append(ifaces, n.Ifaces...)
		}
		f.warnLegacy(ctx, ifaces)
	}
	f.logger.DebugContext(ctx, "applied nftables ruleset", keyTable, TableName, keyNetworks, len(nets), keyRules, rules)
	return nil
}

// Remove deletes the netmgr table and netmgr's jumps and chains in iptables-nft's filter tables;
// it is not an error if they are absent.
func (f *Firewall) Remove(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return fmt.Errorf("remove table: %w", net.ErrClosed)
	}
	err := f.do(ctx, func(c *nftables.Conn) error {
		queueDeleteTable(c)
		if err := c.Flush(); err != nil {
			return err
		}
		return syncForeign(c, nil)
	})
	if err != nil {
		return fmt.Errorf("remove table: %w", err)
	}
	f.logger.DebugContext(ctx, "removed nftables table", keyTable, TableName)
	return nil
}

// Networks returns the sorted names of the networks that have at least one
// rule in the netmgr table, as recorded in the rules' UserData. Rules without
// a netmgr comment are ignored. It returns no names if the table is absent.
func (f *Firewall) Networks(ctx context.Context) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, fmt.Errorf("list networks: %w", net.ErrClosed)
	}
	var names []string
	err := f.do(ctx, func(c *nftables.Conn) error {
		// Dumping the chains succeeds whether or not the table exists,
		// unlike asking for the table by name.
		chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
		if err != nil {
			return fmt.Errorf("list chains: %w", err)
		}
		for _, ch := range chains {
			if ch.Table.Name != TableName {
				continue
			}
			rules, err := c.GetRules(ch.Table, ch)
			if err != nil {
				return fmt.Errorf("list rules of chain %s: %w", ch.Name, err)
			}
			for _, r := range rules {
				if name, ok := networkFromUserData(r.UserData); ok {
					names = append(names, name)
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list networks: %w", err)
	}
	slices.Sort(names)
	return slices.Compact(names), nil
}

// Close releases the Firewall; it leaves the ruleset in place. Later
// operations fail with an error wrapping net.ErrClosed.
func (f *Firewall) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}

// do runs fn with an nftables connection whose socket lives for the duration
// of the call and is interrupted when ctx is done.
func (f *Firewall) do(ctx context.Context, fn func(*nftables.Conn) error) (err error) {
	if err := ctx.Err(); err != nil {
		return err
	}
	var sock *netlink.Conn
	opts := []nftables.ConnOption{
		nftables.AsLasting(),
		nftables.WithSockOptions(func(c *netlink.Conn) error {
			sock = c
			return nil
		}),
	}
	switch {
	case f.testDial != nil:
		opts = append(opts, nftables.WithTestDial(f.testDial))
	case f.nsFd >= 0:
		opts = append(opts, nftables.WithNetNSFd(f.nsFd))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return fmt.Errorf("open netlink socket: %w", err)
	}
	defer func() {
		if cerr := c.CloseLasting(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("close netlink socket: %w", cerr))
		}
	}()
	if dl, ok := ctx.Deadline(); ok && f.testDial == nil { // a test socket has no deadlines
		if err := sock.SetDeadline(dl); err != nil {
			return fmt.Errorf("set netlink socket deadline: %w", err)
		}
	}
	// A deadline in the past wakes up a blocked send or receive.
	stop := context.AfterFunc(ctx, func() { _ = sock.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if err := fn(c); err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return fmt.Errorf("%w: %w", cerr, err)
		}
		return err
	}
	return nil
}

// normalize validates nets and returns a copy sorted by name, with subnets
// masked, deduplicated and sorted, so that equal inputs give equal rulesets.
func normalize(nets []Network) ([]Network, error) {
	out := make([]Network, 0, len(nets))
	names := make(map[string]bool, len(nets))
	owner := make(map[string]string, len(nets)) // interface -> network
	for i, n := range nets {
		if err := validName(n.Name); err != nil {
			return nil, fmt.Errorf("network %d: %w", i, err)
		}
		if names[n.Name] {
			return nil, fmt.Errorf("network %q: duplicate name: %w", n.Name, ErrInvalid)
		}
		names[n.Name] = true
		ifaces := slices.Clone(n.Ifaces)
		slices.Sort(ifaces)
		ifaces = slices.Compact(ifaces)
		for _, i := range ifaces {
			if err := validIfName(i); err != nil {
				return nil, fmt.Errorf("network %q: %w", n.Name, err)
			}
			if other, ok := owner[i]; ok {
				return nil, fmt.Errorf("network %q: interface %q already used by network %q: %w", n.Name, i, other, ErrInvalid)
			}
			owner[i] = n.Name
		}
		n.Ifaces = ifaces
		for _, i := range ifaces {
			for other, on := range owner {
				if on != n.Name && (wildcardMatches(i, other) || wildcardMatches(other, i)) {
					return nil, fmt.Errorf("network %q: interface %q and network %q's %q match the same interfaces: %w", n.Name, i, on, other, ErrInvalid)
				}
			}
		}

		subnets := make([]netip.Prefix, 0, len(n.Subnets))
		for _, p := range n.Subnets {
			if !p.IsValid() {
				return nil, fmt.Errorf("network %q: subnet %q is not a valid prefix: %w", n.Name, p, ErrInvalid)
			}
			if p.Addr().Is4In6() {
				// It would only ever be compared with IPv6 headers, where
				// it cannot match IPv4 traffic.
				return nil, fmt.Errorf("network %q: subnet %s is IPv4-mapped IPv6: %w", n.Name, p, ErrInvalid)
			}
			subnets = append(subnets, p.Masked())
		}
		slices.SortFunc(subnets, comparePrefix)
		n.Subnets = slices.Compact(subnets)
		nm, err := normalizeNoMasquerade(n)
		if err != nil {
			return nil, err
		}
		n.NoMasqueradeTo = nm
		if n.HairpinIfaces != nil {
			hp := slices.Clone(n.HairpinIfaces)
			slices.Sort(hp)
			hp = slices.Compact(hp)
			for _, i := range hp {
				if !slices.Contains(n.Ifaces, i) {
					return nil, fmt.Errorf("network %q: hairpin interface %q is not one of its interfaces %v: %w", n.Name, i, n.Ifaces, ErrInvalid)
				}
			}
			n.HairpinIfaces = hp
		}
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b Network) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// wildcardMatches reports whether w is a wildcard that matches name (or, for a wildcard name, some
// of the names it matches).
func wildcardMatches(w, name string) bool {
	return isWildcard(w) && strings.HasPrefix(strings.TrimSuffix(name, "*"), strings.TrimSuffix(w, "*"))
}

func validName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("name is empty: %w", ErrInvalid)
	case len(name) > maxNameLen:
		return fmt.Errorf("name %q is longer than %d bytes: %w", name, maxNameLen, ErrInvalid)
	case strings.IndexByte(name, 0) >= 0:
		return fmt.Errorf("name %q contains a NUL byte: %w", name, ErrInvalid)
	}
	return nil
}

// validIfName applies the kernel's rules for interface names (dev_valid_name).
func validIfName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("interface name is empty: %w", ErrInvalid)
	case len(name) > maxIfNameLen:
		return fmt.Errorf("interface name %q is longer than %d bytes: %w", name, maxIfNameLen, ErrInvalid)
	case name == "." || name == "..":
		return fmt.Errorf("interface name %q is reserved: %w", name, ErrInvalid)
	case strings.ContainsAny(name, "/: \t\n\v\f\r\x00"):
		return fmt.Errorf("interface name %q contains '/', ':', a space or a NUL byte: %w", name, ErrInvalid)
	case strings.Contains(strings.TrimSuffix(name, "*"), "*"), name == "*":
		return fmt.Errorf("interface name %q: a wildcard is a non-empty prefix and one '*' at the end: %w", name, ErrInvalid)
	}
	return nil
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}
