// Package link is the driver whose sandboxes join another sandbox's network namespace (Docker's
// --network container:X; the containers of a Kubernetes pod). The joining sandbox shares the target's
// interfaces, addresses and 127.0.0.1; nothing is created or removed.
package link

import (
	"context"
	"fmt"

	"github.com/netmgr/netmgr/drivers"
	"github.com/netmgr/netmgr/sandbox"
)

// Name is the driver's registry name.
const Name = "link"

func init() { drivers.Register(Name, New) }

// Driver implements drivers.Driver and drivers.NamespaceProvider.
type Driver struct{}

// New returns a link driver.
func New(drivers.Env) (drivers.Driver, error) { return &Driver{}, nil }

// PrepareNetwork implements drivers.Driver.
func (d *Driver) PrepareNetwork(n *drivers.Network, existing []*drivers.Network) error {
	if len(n.Subnets) > 0 || len(n.Options) > 0 || n.Internal {
		return fmt.Errorf("%w: a link network takes no subnet, option or --internal", drivers.ErrInvalid)
	}
	return nil
}

func (d *Driver) CreateNetwork(context.Context, *drivers.Network) error { return nil }
func (d *Driver) DeleteNetwork(context.Context, *drivers.Network) error { return nil }

// PrepareEndpoint implements drivers.Driver: the target namespace must be set.
func (d *Driver) PrepareEndpoint(n *drivers.Network, ep *drivers.Endpoint) error {
	if ep.JoinPath == "" {
		return fmt.Errorf("%w: a link endpoint needs a target sandbox", drivers.ErrInvalid)
	}
	return nil
}
func (d *Driver) Attach(context.Context, *drivers.Network, *drivers.Endpoint, *sandbox.NetNS) error {
	return nil
}
func (d *Driver) Detach(context.Context, *drivers.Network, *drivers.Endpoint, *sandbox.NetNS, drivers.DetachOptions) error {
	return nil
}

// Namespace implements drivers.NamespaceProvider: the target's namespace, which must be a live one.
func (d *Driver) Namespace(_ context.Context, _ *drivers.Network, ep *drivers.Endpoint) (string, error) {
	ns, err := sandbox.Open(ep.JoinPath)
	if err != nil {
		return "", fmt.Errorf("%w: target namespace: %v", drivers.ErrNotFound, err)
	}
	ns.Close()
	return ep.JoinPath, nil
}
