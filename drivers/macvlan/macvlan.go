package macvlan

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netmgr/netmgr/drivers"
	"github.com/netmgr/netmgr/sandbox"
)

// Name is the driver's registry name.
const Name = "macvlan"

// ShimPrefix starts the name of every host shim interface this driver derives.
const ShimPrefix = "nmsh"

// Options of a macvlan network.
const (
	OptParent   = "parent"    // the host interface whose Ethernet segment the pods join (required)
	OptMode     = "mode"      // bridge (default), private, vepa or passthru
	OptShim     = "shim"      // true: give the host a macvlan of its own so that it reaches the pods
	OptShimIP   = "shim_ip"   // the shim's address(es), one per subnet family, comma separated; default the top of each subnet
	OptShimName = "shim_name" // the shim's interface name; default derived from the network name
)

var knownOpts = []string{OptMode, OptParent, OptShim, OptShimIP, OptShimName}

var modes = map[string]netlink.MacvlanMode{
	"bridge":   netlink.MACVLAN_MODE_BRIDGE,
	"private":  netlink.MACVLAN_MODE_PRIVATE,
	"vepa":     netlink.MACVLAN_MODE_VEPA,
	"passthru": netlink.MACVLAN_MODE_PASSTHRU,
}

func modeName(m netlink.MacvlanMode) string {
	for k, v := range modes {
		if v == m {
			return k
		}
	}
	if m == netlink.MACVLAN_MODE_SOURCE {
		return "source"
	}
	return "mode-" + strconv.Itoa(int(m))
}

func init() { drivers.Register(Name, New) }

// newHandle opens a netlink handle in a sandbox; tests replace it to make it fail.
var newHandle = (*sandbox.NetNS).NewHandle

// Driver implements drivers.Driver for macvlan networks.
type Driver struct {
	env drivers.Env
	log *slog.Logger
}

// New returns a macvlan driver whose parents live in env.Host.
func New(env drivers.Env) (drivers.Driver, error) {
	log, err := env.DriverLogger(Name)
	if err != nil {
		return nil, err
	}
	return &Driver{env: env, log: log}, nil
}

// DefaultShimName derives a shim interface name that fits IFNAMSIZ from a network name.
func DefaultShimName(network string) string {
	sum := sha256.Sum256([]byte(network))
	return ShimPrefix + hex.EncodeToString(sum[:])[:drivers.MaxIfNameLen-len(ShimPrefix)]
}

// PrepareNetwork implements drivers.Driver. Besides the options it checks the parent in the host
// namespace (read only): a missing or down parent, or one whose macvlans use another mode, is an error
// before anything is recorded.
func (d *Driver) PrepareNetwork(n *drivers.Network, existing []*drivers.Network) error {
	if len(n.Subnets) == 0 {
		return fmt.Errorf("%w: macvlan network %q needs the subnet(s) of the parent's network (--subnet)", drivers.ErrInvalid, n.Name)
	}
	if n.Options == nil {
		n.Options = map[string]string{}
	}
	for k := range n.Options {
		if !slices.Contains(knownOpts, k) {
			return fmt.Errorf("%w: unknown macvlan option %q (known: %s)", drivers.ErrInvalid, k, strings.Join(knownOpts, ", "))
		}
	}
	parent := n.Options[OptParent]
	if parent == "" {
		return fmt.Errorf("%w: macvlan network %q needs --opt parent=IFACE", drivers.ErrInvalid, n.Name)
	}
	if err := drivers.CheckIfName("parent", parent); err != nil {
		return err
	}
	if n.Options[OptMode] == "" {
		n.Options[OptMode] = "bridge"
	}
	mode := n.Options[OptMode]
	if _, ok := modes[mode]; !ok {
		return fmt.Errorf("%w: macvlan mode %q (want bridge, private, vepa or passthru)", drivers.ErrInvalid, mode)
	}
	if n.MTU < 0 || n.MTU > 65535 || (n.MTU > 0 && n.MTU < 68) {
		return fmt.Errorf("%w: mtu %d is outside 68..65535", drivers.ErrInvalid, n.MTU)
	}
	shim, err := shimOn(n)
	if err != nil {
		return err
	}
	if !shim {
		for _, k := range []string{OptShimIP, OptShimName} {
			if _, ok := n.Options[k]; ok {
				return fmt.Errorf("%w: option %s needs shim=true", drivers.ErrInvalid, k)
			}
		}
	} else {
		if mode != "bridge" {
			// Only bridge mode switches frames between the macvlans of one parent.
			return fmt.Errorf("%w: shim=true needs mode=bridge (the host's shim and the pods talk through the parent's macvlan switch)", drivers.ErrInvalid)
		}
		if err := prepareShim(n); err != nil {
			return err
		}
	}
	for _, o := range existing {
		if o.Options[OptParent] != parent {
			continue
		}
		switch {
		case o.Options[OptMode] != mode:
			return fmt.Errorf("%w: parent %s already carries macvlan network %q in mode %s; the kernel keeps one mode per parent", drivers.ErrInvalid, parent, o.Name, o.Options[OptMode])
		case mode == "passthru":
			return fmt.Errorf("%w: parent %s is already passed through to network %q", drivers.ErrInvalid, parent, o.Name)
		}
		if shim {
			if s, _ := shimOn(o); s && o.Options[OptShimName] == n.Options[OptShimName] {
				return fmt.Errorf("%w: shim interface %s is already used by network %q", drivers.ErrExists, n.Options[OptShimName], o.Name)
			}
		}
	}
	_, err = d.checkParent(n)
	return err
}

func shimOn(n *drivers.Network) (bool, error) {
	v, ok := n.Options[OptShim]
	if !ok {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("%w: option shim=%q is not a boolean", drivers.ErrInvalid, v)
	}
	return b, nil
}

// prepareShim validates or chooses the shim's name and addresses and writes them into the options,
// so that they are recorded with the network.
func prepareShim(n *drivers.Network) error {
	if n.Options[OptShimName] == "" {
		n.Options[OptShimName] = DefaultShimName(n.Name)
	}
	if err := drivers.CheckIfName("shim", n.Options[OptShimName]); err != nil {
		return err
	}
	var addrs []netip.Addr
	if v := n.Options[OptShimIP]; v != "" {
		for _, s := range strings.Split(v, ",") {
			a, err := netip.ParseAddr(strings.TrimSpace(s))
			if err != nil || a.Zone() != "" || a.Is4In6() {
				return fmt.Errorf("%w: shim_ip %q is not an IP address", drivers.ErrInvalid, s)
			}
			addrs = append(addrs, a)
		}
	} else {
		for i, sn := range n.Subnets {
			a := topHost(sn)
			if i < len(n.Gateways) && a == n.Gateways[i] {
				a = a.Prev()
			}
			addrs = append(addrs, a)
		}
	}
	seen := map[bool]bool{}
	for _, a := range addrs {
		if seen[a.Is4()] {
			return fmt.Errorf("%w: shim_ip has two addresses of one family", drivers.ErrInvalid)
		}
		seen[a.Is4()] = true
		in := false
		for i, sn := range n.Subnets {
			if !sn.Contains(a) {
				continue
			}
			in = true
			if a == sn.Masked().Addr() || (a.Is4() && a == lastAddr(sn)) {
				return fmt.Errorf("%w: shim_ip %s is not a host address of %s", drivers.ErrInvalid, a, sn)
			}
			if i < len(n.Gateways) && a == n.Gateways[i] {
				return fmt.Errorf("%w: shim_ip %s is the gateway of %s", drivers.ErrInvalid, a, sn)
			}
		}
		if !in {
			return fmt.Errorf("%w: shim_ip %s is in no subnet of network %q (%v)", drivers.ErrInvalid, a, n.Name, n.Subnets)
		}
	}
	s := make([]string, len(addrs))
	for i, a := range addrs {
		s[i] = a.String()
	}
	n.Options[OptShimIP] = strings.Join(s, ",")
	return nil
}

// shimAddrs returns the recorded shim addresses of n (none without a shim).
func shimAddrs(n *drivers.Network) []netip.Addr {
	if on, _ := shimOn(n); !on {
		return nil
	}
	var out []netip.Addr
	for _, s := range strings.Split(n.Options[OptShimIP], ",") {
		if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, a)
		}
	}
	return out
}

// ReservedAddresses implements drivers.AddressReserver: the shim's addresses are not for pods.
func (d *Driver) ReservedAddresses(n *drivers.Network) []netip.Addr { return shimAddrs(n) }

// checkParent finds n's parent in the host namespace and checks that it is up and that the macvlans
// already on it (in the host namespace; netmgr's networks were checked from the records) use n's mode.
func (d *Driver) checkParent(n *drivers.Network) (netlink.Link, error) {
	h := d.env.HostHandle
	name, mode := n.Options[OptParent], n.Options[OptMode]
	parent, err := h.LinkByName(name)
	if drivers.IsLinkNotFound(err) {
		return nil, fmt.Errorf("%w: parent interface %s of macvlan network %q is not in the host namespace", drivers.ErrNotFound, name, n.Name)
	}
	if err != nil {
		return nil, fmt.Errorf("find parent %s: %w", name, err)
	}
	// The kernel makes macvlans only on Ethernet devices other than loopback (macvlan_port_create),
	// and says EINVAL at the first attach otherwise.
	if parent.Attrs().Flags&net.FlagLoopback != 0 || parent.Attrs().EncapType != "ether" {
		kind := parent.Type()
		if parent.Attrs().Flags&net.FlagLoopback != 0 {
			kind = "loopback"
		}
		return nil, fmt.Errorf("%w: parent interface %s is a %s device (link type %s); a macvlan needs an Ethernet parent", drivers.ErrInvalid, name, kind, parent.Attrs().EncapType)
	}
	if parent.Attrs().Flags&net.FlagUp == 0 {
		return nil, fmt.Errorf("%w: parent interface %s is down; bring it up first", drivers.ErrInvalid, name)
	}
	lower := parent.Attrs().Index
	if mv, ok := parent.(*netlink.Macvlan); ok {
		// The kernel puts a macvlan on a macvlan onto the lower device, in the same port.
		if got := modeName(mv.Mode); got != mode {
			return nil, fmt.Errorf("%w: parent %s is itself a macvlan in mode %s, not %s", drivers.ErrInvalid, name, got, mode)
		}
		lower = mv.ParentIndex
	}
	// A partial list could miss a macvlan of another mode, so an interrupted dump is retried, and one
	// that stays interrupted is an error, not taken as complete.
	links, err := drivers.LinkList(h)
	if err != nil {
		return nil, fmt.Errorf("list host links: %w", err)
	}
	shimName := ""
	if on, _ := shimOn(n); on {
		shimName = n.Options[OptShimName]
	}
	for _, l := range links {
		mv, ok := l.(*netlink.Macvlan)
		if !ok || mv.ParentIndex != lower || mv.Name == shimName {
			continue
		}
		switch got := modeName(mv.Mode); {
		case got != mode:
			return nil, fmt.Errorf("%w: parent %s already carries macvlan %s in mode %s; the kernel keeps one mode per parent", drivers.ErrInvalid, name, mv.Name, got)
		case mode == "passthru":
			return nil, fmt.Errorf("%w: parent %s already carries macvlan %s; passthru needs the parent to itself", drivers.ErrInvalid, name, mv.Name)
		}
	}
	if n.MTU > parent.Attrs().MTU {
		return nil, fmt.Errorf("%w: mtu %d is larger than parent %s's %d", drivers.ErrInvalid, n.MTU, name, parent.Attrs().MTU)
	}
	if err := drivers.CheckIPv6MTU(n, d.mtu(n, parent)); err != nil {
		if n.MTU == 0 {
			return nil, fmt.Errorf("%w (the MTU of parent %s)", err, name)
		}
		return nil, err
	}
	return parent, nil
}

func (d *Driver) mtu(n *drivers.Network, parent netlink.Link) int {
	if n.MTU > 0 {
		return n.MTU
	}
	return parent.Attrs().MTU
}

// CreateNetwork implements drivers.Driver: it checks the parent again and creates the shim, if asked.
// A macvlan network has no other host-side plumbing: each pod's macvlan hangs off the parent. It is
// idempotent, so Recover re-creates a vanished shim.
func (d *Driver) CreateNetwork(ctx context.Context, n *drivers.Network) (err error) {
	parent, err := d.checkParent(n)
	if err != nil {
		return err
	}
	addrs := shimAddrs(n)
	if len(addrs) == 0 {
		return nil
	}
	h := d.env.HostHandle
	name := n.Options[OptShimName]
	created := false
	link, err := h.LinkByName(name)
	switch {
	case err == nil:
		if mv, ok := link.(*netlink.Macvlan); !ok || mv.ParentIndex != parent.Attrs().Index {
			return fmt.Errorf("create shim %s: %w: a %s link of that name exists", name, drivers.ErrExists, link.Type())
		}
	case drivers.IsLinkNotFound(err):
		shim := &netlink.Macvlan{
			LinkAttrs: netlink.LinkAttrs{Name: name, ParentIndex: parent.Attrs().Index, MTU: d.mtu(n, parent), TxQLen: -1},
			Mode:      netlink.MACVLAN_MODE_BRIDGE,
		}
		if err := h.LinkAdd(shim); err != nil {
			return fmt.Errorf("create shim %s on %s: %w", name, parent.Attrs().Name, err)
		}
		created = true
		if link, err = h.LinkByName(name); err != nil {
			_ = h.LinkDel(shim)
			return fmt.Errorf("create shim %s: %w", name, err)
		}
		d.log.Debug("shim created", "network", n.Name, "ifname", name)
	default:
		return fmt.Errorf("create shim %s: %w", name, err)
	}
	defer func() {
		if err != nil && created {
			if derr := h.LinkDel(link); derr != nil && !drivers.IsLinkNotFound(derr) {
				d.log.Warn("rollback: delete shim", "ifname", name, "error", derr)
			}
		}
	}()
	for _, a := range addrs {
		// A host route (/32, /128) only: a prefix route would compete with the parent's own route to
		// the segment. Each pod gets a route through the shim when it attaches.
		addr := &netlink.Addr{IPNet: drivers.IPNet(netip.PrefixFrom(a, a.BitLen()))}
		if a.Is6() {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := h.AddrReplace(link, addr); err != nil {
			return fmt.Errorf("set address %s on shim %s: %w", a, name, err)
		}
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring up shim %s: %w", name, err)
	}
	return nil
}

// DeleteNetwork implements drivers.Driver: it removes the shim (and with it the routes to the pods).
func (d *Driver) DeleteNetwork(ctx context.Context, n *drivers.Network) error {
	if on, _ := shimOn(n); !on {
		return nil
	}
	name := n.Options[OptShimName]
	link, err := d.env.HostHandle.LinkByName(name)
	if drivers.IsLinkNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete shim %s: %w", name, err)
	}
	if link.Type() != "macvlan" {
		return nil // not ours any more
	}
	if err := d.env.HostHandle.LinkDel(link); err != nil && !drivers.IsLinkNotFound(err) {
		return fmt.Errorf("delete shim %s: %w", name, err)
	}
	return nil
}

// PrepareEndpoint implements drivers.Driver. An endpoint has no host-side interface; its MTU is the
// network's, or the parent's when the network sets none (found at Attach).
func (d *Driver) PrepareEndpoint(n *drivers.Network, ep *drivers.Endpoint) error {
	if err := drivers.CheckIfName("interface", ep.IfName); err != nil {
		return err
	}
	if ep.MAC != "" {
		if _, err := drivers.ParseMAC(ep.MAC); err != nil {
			return err
		}
	}
	if ep.MTU == 0 {
		ep.MTU = n.MTU
	}
	// The sandbox reaches the world through the gateways of the parent's segment that netmgr offers.
	ep.Routes = drivers.DefaultRoutes(ep.Gateways)
	return nil
}

// Attach implements drivers.Driver: a macvlan of the parent is created straight into the sandbox
// namespace (the host handle creates it, the target namespace receives it), then addressed and routed
// there. With a shim, the host gets a route to each of the pod's addresses through the shim.
func (d *Driver) Attach(ctx context.Context, n *drivers.Network, ep *drivers.Endpoint, sb *sandbox.NetNS) (err error) {
	hh := d.env.HostHandle
	parent, err := d.parent(n)
	if err != nil {
		return fmt.Errorf("attach %s: %w", ep.Sandbox, err)
	}
	mtu := ep.MTU
	if mtu == 0 {
		mtu = parent.Attrs().MTU
	}
	mode := modes[n.Options[OptMode]]
	mv := &netlink.Macvlan{
		LinkAttrs: netlink.LinkAttrs{Name: ep.IfName, ParentIndex: parent.Attrs().Index, MTU: mtu, TxQLen: -1, Namespace: netlink.NsFd(sb.Fd())},
		Mode:      mode,
	}
	if ep.MAC != "" {
		mv.HardwareAddr, _ = net.ParseMAC(ep.MAC)
	}
	// The handle first: once the macvlan exists, every failure must reach the rollback below.
	sh, err := newHandle(sb)
	if err != nil {
		return fmt.Errorf("attach %s: %w", ep.Sandbox, err)
	}
	defer sh.Close()
	if err := hh.LinkAdd(mv); err != nil {
		switch {
		case errors.Is(err, unix.EEXIST):
			return fmt.Errorf("attach %s: %w: interface %s exists in the sandbox", ep.Sandbox, drivers.ErrExists, ep.IfName)
		case mode == netlink.MACVLAN_MODE_PASSTHRU && errors.Is(err, unix.EINVAL):
			return fmt.Errorf("attach %s: %w: parent %s is passed through to one sandbox already", ep.Sandbox, drivers.ErrFull, parent.Attrs().Name)
		}
		return fmt.Errorf("attach %s: create macvlan %s on %s: %w", ep.Sandbox, ep.IfName, parent.Attrs().Name, err)
	}
	d.log.Debug("macvlan created", "sandbox", ep.Sandbox, "ifname", ep.IfName, "parent", parent.Attrs().Name)
	defer func() {
		if err != nil {
			if l, lerr := sh.LinkByName(ep.IfName); lerr == nil {
				if derr := sh.LinkDel(l); derr != nil {
					d.log.Warn("rollback: delete macvlan", "sandbox", ep.Sandbox, "ifname", ep.IfName, "error", derr)
				}
			}
			d.delShimRoutes(n, ep)
		}
	}()
	link, err := drivers.ConfigureInterface(sh, ep)
	if err != nil {
		return err
	}
	if err := d.addShimRoutes(n, ep); err != nil {
		return fmt.Errorf("attach %s: %w", ep.Sandbox, err)
	}
	ep.MAC = link.Attrs().HardwareAddr.String()
	return nil
}

// parent returns n's parent link, with a clear error if it vanished.
func (d *Driver) parent(n *drivers.Network) (netlink.Link, error) {
	name := n.Options[OptParent]
	l, err := d.env.HostHandle.LinkByName(name)
	if drivers.IsLinkNotFound(err) {
		return nil, fmt.Errorf("%w: parent interface %s of macvlan network %q is not in the host namespace", drivers.ErrNotFound, name, n.Name)
	}
	if err != nil {
		return nil, fmt.Errorf("find parent %s: %w", name, err)
	}
	return l, nil
}

// shimRoutes are the host routes to ep's addresses through n's shim, from the shim's address of
// each family.
func (d *Driver) shimRoutes(n *drivers.Network, ep *drivers.Endpoint) ([]*netlink.Route, error) {
	shims := shimAddrs(n)
	if len(shims) == 0 {
		return nil, nil
	}
	shim, err := d.env.HostHandle.LinkByName(n.Options[OptShimName])
	if err != nil {
		return nil, fmt.Errorf("find shim %s: %w", n.Options[OptShimName], err)
	}
	var out []*netlink.Route
	for _, a := range ep.Addrs {
		for _, s := range shims {
			if s.Is4() != a.Addr().Is4() {
				continue
			}
			out = append(out, &netlink.Route{
				LinkIndex: shim.Attrs().Index, Scope: netlink.SCOPE_LINK,
				Dst: drivers.IPNet(netip.PrefixFrom(a.Addr(), a.Addr().BitLen())), Src: s.AsSlice(),
			})
		}
	}
	return out, nil
}

func (d *Driver) addShimRoutes(n *drivers.Network, ep *drivers.Endpoint) error {
	routes, err := d.shimRoutes(n, ep)
	if err != nil {
		return err
	}
	for _, r := range routes {
		if err := d.env.HostHandle.RouteReplace(r); err != nil {
			return fmt.Errorf("route %s through shim: %w", r.Dst, err)
		}
	}
	return nil
}

// delShimRoutes removes the host routes to ep's addresses; a missing route or shim is not an error.
func (d *Driver) delShimRoutes(n *drivers.Network, ep *drivers.Endpoint) error {
	routes, err := d.shimRoutes(n, ep)
	if err != nil {
		if drivers.IsLinkNotFound(err) {
			return nil
		}
		return err
	}
	var errs []error
	for _, r := range routes {
		if err := d.env.HostHandle.RouteDel(r); err != nil && !errors.Is(err, unix.ESRCH) && !drivers.IsLinkNotFound(err) {
			errs = append(errs, fmt.Errorf("delete route %s through shim: %w", r.Dst, err))
		}
	}
	return errors.Join(errs...)
}

// Detach implements drivers.Driver. The host routes through the shim go first. When the namespace is
// going, the macvlan dies with it and is only set down, so that a process still holding the namespace
// cannot keep using an address netmgr is about to free; otherwise it is deleted.
func (d *Driver) Detach(ctx context.Context, n *drivers.Network, ep *drivers.Endpoint, sb *sandbox.NetNS, opts drivers.DetachOptions) error {
	if err := d.delShimRoutes(n, ep); err != nil {
		return fmt.Errorf("detach %s: %w", ep.Sandbox, err)
	}
	if sb == nil {
		return nil
	}
	sh, err := sb.NewHandle()
	if err != nil {
		return fmt.Errorf("detach %s: %w", ep.Sandbox, err)
	}
	defer sh.Close()
	link, err := sh.LinkByName(ep.IfName)
	if drivers.IsLinkNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("detach %s: find %s: %w", ep.Sandbox, ep.IfName, err)
	}
	if link.Type() != "macvlan" {
		return nil // not ours
	}
	if opts.NamespaceGoing {
		err = sh.LinkSetDown(link)
	} else {
		err = sh.LinkDel(link)
	}
	if err != nil && !drivers.IsLinkNotFound(err) {
		return fmt.Errorf("detach %s: remove %s: %w", ep.Sandbox, ep.IfName, err)
	}
	return nil
}

// topHost is the highest host address of p: below the broadcast address for IPv4, the last address
// for IPv6.
func topHost(p netip.Prefix) netip.Addr {
	a := lastAddr(p)
	if a.Is4() {
		a = a.Prev()
	}
	return a
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := range b {
		for j := 0; j < 8; j++ {
			if i*8+j >= p.Bits() {
				b[i] |= 0x80 >> j
			}
		}
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}
