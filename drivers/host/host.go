// Package host is the driver whose sandboxes are the host's own network namespace (Docker's
// --network host): nothing is created, and containers see the host's interfaces.
package host

import (
	"context"
	"fmt"

	"github.com/netmgr/netmgr/drivers"
	"github.com/netmgr/netmgr/sandbox"
)

// Name is the driver's registry name.
const Name = "host"

func init() { drivers.Register(Name, New) }

// Driver implements drivers.Driver and drivers.NamespaceProvider for the host namespace.
type Driver struct{ env drivers.Env }

// New returns a host driver.
func New(env drivers.Env) (drivers.Driver, error) {
	if env.Host == nil {
		return nil, fmt.Errorf("host driver: %w: no host namespace", drivers.ErrInvalid)
	}
	return &Driver{env: env}, nil
}

// PrepareNetwork implements drivers.Driver: a host network has no subnets and no options.
func (d *Driver) PrepareNetwork(n *drivers.Network, existing []*drivers.Network) error {
	if len(n.Subnets) > 0 || len(n.Options) > 0 || n.Internal {
		return fmt.Errorf("%w: a host network takes no subnet, option or --internal", drivers.ErrInvalid)
	}
	return nil
}

func (d *Driver) CreateNetwork(context.Context, *drivers.Network) error { return nil }
func (d *Driver) DeleteNetwork(context.Context, *drivers.Network) error { return nil }
func (d *Driver) PrepareEndpoint(*drivers.Network, *drivers.Endpoint) error {
	return nil
}
func (d *Driver) Attach(context.Context, *drivers.Network, *drivers.Endpoint, *sandbox.NetNS) error {
	return nil
}
func (d *Driver) Detach(context.Context, *drivers.Network, *drivers.Endpoint, *sandbox.NetNS, drivers.DetachOptions) error {
	return nil
}

// Namespace implements drivers.NamespaceProvider: a lasting path of the host's own namespace (not
// /proc/self, which would name whichever process reads it later).
func (d *Driver) Namespace(context.Context, *drivers.Network, *drivers.Endpoint) (string, error) {
	return sandbox.StablePath(d.env.Host), nil
}
