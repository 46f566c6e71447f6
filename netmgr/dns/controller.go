package dns

import (
	"context"

	"github.com/netmgr/netmgr/netmgr/agent"
)

// Controller runs the DNS server in the node agent (agent.Config.Controllers). Its Config is the
// server's, with the Manager taken from the agent when it is nil.
type Controller struct {
	Config Config
	// ServicesFromStore answers service names from the services recorded in the agent's store
	// (netmgr/service) when Config.Services is not set.
	ServicesFromStore bool
}

// Name implements agent.Controller.
func (c *Controller) Name() string { return "dns" }

// Run implements agent.Controller: it serves until ctx ends.
func (c *Controller) Run(ctx context.Context, a *agent.Agent) error {
	cfg := c.Config
	if cfg.Manager == nil {
		cfg.Manager = a.Manager()
	}
	if cfg.Logger == nil {
		cfg.Logger = a.Logger()
	}
	if !a.Local() {
		// A cluster: sandboxes of every node on the networks that span nodes resolve here too.
		local := cfg.Hosts
		if local == nil {
			local = ManagerSource{M: cfg.Manager}
		}
		cfg.Hosts = NewClusterHosts(ctx, local, a.Cluster(), a.Node(), a.Lease, cfg.Logger)
	}
	if cfg.Services == nil && c.ServicesFromStore {
		cfg.Services = FollowServices(ctx, a.Cluster(), cfg.Logger)
	}
	s, err := New(cfg)
	if err != nil {
		return err
	}
	return s.Run(ctx)
}
