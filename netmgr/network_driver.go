package netmgr

// What the Manager asks of a network's driver instead of knowing its name: the host and link modes,
// the default subnet, the firewall spec and port targets, the cluster-wide allocation.

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/netmgr/netmgr/drivers"
	"github.com/netmgr/netmgr/drivers/host"
	"github.com/netmgr/netmgr/drivers/link"
	"github.com/netmgr/netmgr/netmgr/firewall"
	"github.com/netmgr/netmgr/sandbox"
)

// refuseModeDriver refuses the names of the host and link sandbox modes as network drivers: a network
// of them could never be attached.
func refuseModeDriver(driver string) error {
	if driver == host.Name || driver == link.Name {
		return fmt.Errorf("%w: host and link are sandbox modes, not network drivers: use sandbox create --host or --join", ErrInvalid)
	}
	return nil
}

// hostNamespace is the namespace of a host-mode sandbox.
func (m *Manager) hostNamespace() string { return host.Namespace(m.host) }

// joinNamespace is the namespace of a sandbox that joins the sandbox whose namespace is target.
func joinNamespace(target string) (string, error) { return link.Namespace(target) }

// modeDriver stands in for the driver of a network that an older netmgr recorded with driver host or
// link (it accepted them): such a network can be listed, inspected and deleted, and its attaches are
// refused as they always failed.
type modeDriver struct{ name string }

// legacyModeDriver returns the stand-in driver for a mode name, or nil.
func legacyModeDriver(name string) drivers.Driver {
	if refuseModeDriver(name) == nil {
		return nil
	}
	return modeDriver{name}
}

func (d modeDriver) PrepareNetwork(*drivers.Network, []*drivers.Network) error {
	return refuseModeDriver(d.name)
}
func (modeDriver) CreateNetwork(context.Context, *drivers.Network) error { return nil }
func (modeDriver) DeleteNetwork(context.Context, *drivers.Network) error { return nil }
func (d modeDriver) PrepareEndpoint(*drivers.Network, *drivers.Endpoint) error {
	return refuseModeDriver(d.name)
}
func (d modeDriver) Attach(context.Context, *drivers.Network, *drivers.Endpoint, *sandbox.NetNS) error {
	return refuseModeDriver(d.name)
}
func (modeDriver) Detach(context.Context, *drivers.Network, *drivers.Endpoint, *sandbox.NetNS, drivers.DetachOptions) error {
	return nil
}

// defaultSubnet picks a subnet for a network created without one, if its driver wants one
// (drivers.DefaultSubnetter); ok is false when it does not.
func (m *Manager) defaultSubnet(drv drivers.Driver, dn *drivers.Network, taken []netip.Prefix, hostRoutes func() []netip.Prefix) (sn netip.Prefix, ok bool, err error) {
	ds, ok := drv.(drivers.DefaultSubnetter)
	if !ok {
		return netip.Prefix{}, false, nil
	}
	pool, bits := ds.DefaultSubnet(dn)
	// Like Docker, skip subnets the host already routes (a LAN in the default pool, a VPN).
	sn, err = freeSubnet(pool, bits, append(taken, hostRoutes()...))
	return sn, true, err
}

// freeSubnet returns the first prefix of bits bits in the IPv4 pool that overlaps none of taken.
func freeSubnet(pool netip.Prefix, bits int, taken []netip.Prefix) (netip.Prefix, error) {
	pool = pool.Masked()
	if !pool.Addr().Is4() || bits < pool.Bits() || bits > 30 {
		return netip.Prefix{}, fmt.Errorf("%w: default subnets of /%d from %s", ErrInvalid, bits, pool)
	}
	b := pool.Addr().As4()
	start := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	step := uint64(1) << (32 - bits)
	count := uint64(1) << (bits - pool.Bits())
	for i := uint64(0); i < count; i++ {
		a := uint32(uint64(start) + i*step)
		cand := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)}), bits)
		free := true
		for _, t := range taken {
			if t.Overlaps(cand) {
				free = false
				break
			}
		}
		if free {
			return cand, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("%w: no free /%d left in %s; give --subnet", ErrFull, bits, pool)
}

// firewallSpec is what the network's driver asks of the host firewall (drivers.Firewaller).
func firewallSpec(drv drivers.Driver, dn *drivers.Network) (drivers.FirewallSpec, bool) {
	fwr, ok := drv.(drivers.Firewaller)
	if !ok {
		return drivers.FirewallSpec{}, false
	}
	return fwr.Firewall(dn)
}

// firewallNetworkOf turns a driver's firewall spec into the firewall package's network.
func firewallNetworkOf(dn *drivers.Network, fs drivers.FirewallSpec) firewall.Network {
	return firewall.Network{
		Name: dn.Name, Ifaces: fs.HostIfaces, Subnets: dn.Subnets, Internal: dn.Internal,
		Masquerade: fs.Masquerade, Routed: fs.Routed, NoMasqueradeTo: fs.NoMasqueradeTo,
		HairpinIfaces: fs.HairpinIfaces,
	}
}

// portTarget reports whether the network's endpoints can be targets of published ports (its driver
// says so, and it is not internal), and the host interfaces that reach them.
func portTarget(ns *netState) ([]string, bool) {
	fs, ok := firewallSpec(ns.drv, ns.rec.driverNetwork())
	if !ok || !fs.PortTargets || ns.rec.Internal {
		return nil, false
	}
	return fs.HostIfaces, true
}

// allocateNetwork runs the driver's cluster-wide allocation step (drivers.Allocator) for a network
// being planned; existing are the driver's other networks.
func allocateNetwork(ctx context.Context, drv drivers.Driver, dn *drivers.Network, existing []*drivers.Network) error {
	a, ok := drv.(drivers.Allocator)
	if !ok {
		return nil
	}
	if dn.Options == nil {
		dn.Options = map[string]string{}
	}
	return a.Allocate(ctx, dn, existing)
}
