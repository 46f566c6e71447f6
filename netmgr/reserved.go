package netmgr

import (
	"net/netip"

	"github.com/netmgr/netmgr/drivers"
)

// reservedAddrs returns the addresses of rec's subnets that its driver keeps for itself
// (drivers.AddressReserver), which allocation treats as taken.
func (m *Manager) reservedAddrs(rec *networkRecord) map[netip.Addr]bool {
	drv, err := m.driver(rec.Driver)
	if err != nil {
		return nil
	}
	r, ok := drv.(drivers.AddressReserver)
	if !ok {
		return nil
	}
	out := map[netip.Addr]bool{}
	for _, a := range r.ReservedAddresses(rec.driverNetwork()) {
		out[a] = true
	}
	return out
}
