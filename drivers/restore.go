package drivers

import (
	"context"

	"github.com/netmgr/netmgr/sandbox"
)

// NetworkRestorer is implemented by drivers that can tell whether a network's plumbing had vanished
// (a bridge deleted by hand, a reboot). RestoreNetwork re-creates what is missing, like CreateNetwork,
// and reports whether it had to. Without it, Recover calls CreateNetwork, which drivers keep
// idempotent, and cannot report what it re-created.
type NetworkRestorer interface {
	RestoreNetwork(ctx context.Context, n *Network) (restored bool, err error)
}

// EndpointRestorer is implemented by drivers that can re-plumb an endpoint whose kernel objects
// vanished or came loose while its sandbox lived on: a host interface no longer on its bridge after the
// bridge was re-created, a veth deleted by hand. ep is the endpoint as recorded (names, MAC, addresses,
// gateways); RestoreEndpoint brings the kernel back to it, records the MAC in ep as Attach does, and
// reports whether anything had to change. sb is the sandbox's namespace, which is alive.
type EndpointRestorer interface {
	RestoreEndpoint(ctx context.Context, n *Network, ep *Endpoint, sb *sandbox.NetNS) (restored bool, err error)
}

// UsageReporter is implemented by drivers whose network plumbing can be in use by kernel objects that
// netmgr's records may not show (a veth on a bridge). NetworkUsers names them; netmgr refuses to undo
// an interrupted network create while it names any.
type UsageReporter interface {
	NetworkUsers(ctx context.Context, n *Network) ([]string, error)
}
