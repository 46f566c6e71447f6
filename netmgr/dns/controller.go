package dns

import (
	"context"

	"github.com/netmgr/netmgr/netmgr/agent"
)

// Controller runs the DNS server in the node agent (agent.Config.Controllers). Its Config is the
// server's, with the Manager taken from the agent when it is nil.
type Controller struct{ Config Config }

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
	s, err := New(cfg)
	if err != nil {
		return err
	}
	return s.Run(ctx)
}
