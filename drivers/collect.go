package drivers

import (
	"context"

	"github.com/vishvananda/netlink"
)

// Collector is implemented by drivers that leave host-side objects which only netmgr's records name
// (host ends of veths, bridges made for networks, shim interfaces): a process killed between creating
// one and recording it, or a namespace destroyed while another process held it, leaves them behind.
// Recover calls Collect for every driver in use, and the driver removes what is its own and no longer
// named.
type Collector interface {
	Collect(ctx context.Context, in CollectInput) (CollectResult, error)
}

// CollectInput is what Recover knows when it collects.
type CollectInput struct {
	// Links are the links of the host namespace, listed before the records were read: anything
	// created after the list is not judged, and anything created before it has its record by then.
	Links []netlink.Link
	// Networks are the recorded networks of this driver, including those whose create or delete is
	// in flight.
	Networks []*Network
	// InUse holds the host-side interface names (Endpoint.HostName) that endpoint records name, of
	// every driver, and of sandboxes whose operation is in flight.
	InUse map[string]bool
	// Hold takes netmgr's lock on the network of that name without waiting, so that a create that
	// may adopt an object of that name is not robbed of it; ok is false when the network is busy
	// (then the object is to be left alone). release undoes it.
	Hold func(network string) (release func(), ok bool)
	// Named reports, read again from the store now, whether some network's options name the value
	// v under key k: the last check before removing an object that a network created since the
	// list may have adopted. It reports true when it cannot tell.
	Named func(ctx context.Context, key, v string) bool
}

// CollectResult says what Collect did, by interface name.
type CollectResult struct {
	Links   []string // host interfaces of endpoints that no longer exist, removed
	Devices []string // network-level devices (bridges, shims) that no network names, removed
	Kept    []string // such devices left in place because something uses them
	Errors  []error
}

// OptionValues is the set of the values that nets give option key (empty ones left out): the
// device names or identifiers that recorded networks name, which Collect keeps.
func OptionValues(nets []*Network, key string) map[string]bool {
	named := map[string]bool{}
	for _, n := range nets {
		if v := n.Options[key]; v != "" {
			named[v] = true
		}
	}
	return named
}

// PortsByMaster maps the index of each link that is some link's master (a bridge) to the names of
// its ports, among links.
func PortsByMaster(links []netlink.Link) map[int][]string {
	ports := map[int][]string{}
	for _, l := range links {
		if mi := l.Attrs().MasterIndex; mi != 0 {
			ports[mi] = append(ports[mi], l.Attrs().Name)
		}
	}
	return ports
}
