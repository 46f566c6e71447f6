// Package proxy is the service controller (kube-proxy's job) that a node's agent runs: it publishes
// the node's labelled sandboxes as endpoints, follows the services and endpoints of the store, and
// programs the host's nftables table netmgr_services (see rules.go for its layout) so that a
// service's cluster IP and node ports reach its endpoints.
package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/agent"
	"github.com/netmgr/netmgr/netmgr/service"
	"github.com/netmgr/netmgr/netmgr/store"
)

// Options configure a Controller.
type Options struct {
	// Resync is how often the controller checks that its table is intact (someone may have flushed
	// it) and re-reads the service CIDR (default 2 s).
	Resync time.Duration
	// NoPublish leaves publishing this node's endpoints to someone else.
	NoPublish bool
	// OnSync, if set, is called after each successful Sync of the kernel (tests, benchmarks).
	OnSync func(full bool)
}

// Controller is the agent.Controller of services.
type Controller struct {
	opts Options
}

// New returns the service controller.
func New(opts Options) *Controller {
	if opts.Resync == 0 {
		opts.Resync = 2 * time.Second
	}
	return &Controller{opts: opts}
}

// Name implements agent.Controller.
func (c *Controller) Name() string { return "services" }

// pending collects what the store's followers saw until the proxier takes it.
type pending struct {
	mu        sync.Mutex
	services  map[string]*service.Service // nil: deleted
	endpoints map[string]*service.Endpoint
	haveSvc   bool
	haveEP    bool
	poke      chan struct{}
}

func (q *pending) wake() {
	select {
	case q.poke <- struct{}{}:
	default:
	}
}

// Run implements agent.Controller: it runs until ctx ends.
func (c *Controller) Run(ctx context.Context, a *agent.Agent) error {
	log := a.Logger().With("controller", "services")
	m, st := a.Manager(), a.Cluster()
	ns, err := os.Open(m.HostNetNS())
	if err != nil {
		return err
	}
	defer ns.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()

	if !c.opts.NoPublish {
		wg.Add(1)
		go func() {
			defer wg.Done()
			publish(ctx, a, log)
		}()
	}

	q := &pending{services: map[string]*service.Service{}, endpoints: map[string]*service.Endpoint{}, poke: make(chan struct{}, 1)}
	follow := func(prefix string, fn func(store.Update)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := store.Follow(ctx, st, prefix, func(u store.Update) error {
				q.mu.Lock()
				fn(u)
				q.mu.Unlock()
				q.wake()
				return nil
			}, store.FollowErrors(func(err error) { log.Warn("services: follow the store (retrying)", "prefix", prefix, "error", err) }))
			if err != nil && ctx.Err() == nil {
				log.Error("services: following the store ended", "prefix", prefix, "error", err)
				cancel()
			}
		}()
	}
	follow(service.KeyServices, func(u store.Update) {
		for _, ch := range u.Changes {
			name := strings.TrimPrefix(ch.KV.Key, service.KeyServices)
			if ch.Deleted {
				q.services[name] = nil
				continue
			}
			var s service.Service
			if err := jsonUnmarshal(ch.KV.Value, &s); err != nil {
				log.Warn("services: undecodable service", "key", ch.KV.Key, "error", err)
				continue
			}
			q.services[name] = &s
		}
		q.haveSvc = true
	})
	follow(service.KeyEndpoints, func(u store.Update) {
		eps, errs := decodeEndpoints(u.Changes)
		for i, ch := range u.Changes {
			switch {
			case ch.Deleted:
				q.endpoints[ch.KV.Key] = nil
			case errs[i] != nil:
				log.Warn("services: undecodable endpoint", "key", ch.KV.Key, "error", errs[i])
			default:
				q.endpoints[ch.KV.Key] = eps[i]
			}
		}
		q.haveEP = true
	})

	p := NewProxier(int(ns.Fd()), a.Node(), log)
	defer p.Close()
	reg := service.New(st)
	readCIDR := func() {
		cfg, err := reg.Config(ctx)
		if err != nil {
			log.Warn("services: read the service CIDR", "error", err)
			return
		}
		p.SetCIDR(cfg.CIDRs...)
		if nets, err := m.Networks(ctx); err == nil {
			var pods []netip.Prefix
			for _, n := range nets {
				// Networks whose pods sit behind this host (bridge, routed, overlay, cni). A macvlan
				// or ipvlan network's subnet is the LAN's: its clients are outside, and its pods never
				// pass this host's netfilter.
				if n.Driver == "macvlan" || n.Driver == "ipvlan" {
					continue
				}
				pods = append(pods, n.Subnets...)
			}
			p.SetPodCIDRs(pods...)
		}
	}
	readCIDR()
	tick := time.NewTicker(c.opts.Resync)
	defer tick.Stop()
	started := false
	backoff := time.Duration(0)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-q.poke:
		case <-tick.C:
			readCIDR()
			if started {
				if err := p.Check(); err != nil {
					log.Warn("services: check the table", "error", err)
				}
			}
		}
		q.mu.Lock()
		ready := q.haveSvc && q.haveEP
		for name, s := range q.services {
			if s == nil {
				p.DeleteService(name)
			} else {
				p.SetService(s)
			}
		}
		for key, e := range q.endpoints {
			if e == nil {
				p.DeleteEndpoint(key)
			} else {
				p.SetEndpoint(key, e)
			}
		}
		clear(q.services)
		clear(q.endpoints)
		q.mu.Unlock()
		if !ready || !p.Pending() {
			continue
		}
		started = true
		full := p.full
		if err := p.Sync(); err != nil {
			log.Warn("services: program the kernel (retrying with a full sync)", "error", err)
			backoff = min(max(2*backoff, 100*time.Millisecond), 5*time.Second)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			q.wake()
			continue
		}
		backoff = 0
		if c.opts.OnSync != nil {
			c.opts.OnSync(full)
		}
	}
}

// publish keeps this node's labelled sandboxes published as endpoints, with the node's lease in a
// cluster, until ctx ends.
func publish(ctx context.Context, a *agent.Agent, log *slog.Logger) {
	m := a.Manager()
	latest := make(chan []*netmgr.Sandbox, 1)
	go func() {
		err := m.WatchSandboxes(ctx, func(sbs []*netmgr.Sandbox) error {
			select {
			case <-latest:
			default:
			}
			latest <- sbs
			return nil
		})
		if err != nil && ctx.Err() == nil {
			log.Error("services: watching sandboxes ended", "error", err)
		}
	}()
	global := map[string]bool{}
	pub := service.NewPublisher(a.Cluster(), a.Node(), func(n string) bool { return global[n] })
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var sbs []*netmgr.Sandbox
	have, failed := false, false
	for {
		select {
		case <-ctx.Done():
			return
		case sbs = <-latest:
			have = true
		case <-tick.C:
		}
		if !have {
			continue
		}
		lease := a.Lease()
		if !a.Local() && lease == store.NoLease {
			continue // not registered (again) yet
		}
		if nets, err := m.Networks(ctx); err == nil {
			clear(global)
			for _, n := range nets {
				global[n.Name] = n.Scope == "global"
			}
		}
		if err := pub.Sync(ctx, sbs, lease); err != nil {
			if ctx.Err() != nil {
				return
			}
			if !failed || !errors.Is(err, store.ErrLeaseNotFound) {
				log.Warn("services: publish endpoints (retrying)", "error", err)
			}
			failed = true
			continue
		}
		failed = false
	}
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// decodeEndpoints decodes the endpoints of changes (nil for a delete), on every CPU when there are
// many (the first list of a large cluster: 100,000 records).
func decodeEndpoints(changes []store.Change) ([]*service.Endpoint, []error) {
	eps := make([]*service.Endpoint, len(changes))
	errs := make([]error, len(changes))
	work := func(lo, hi int) {
		for i := lo; i < hi; i++ {
			if !changes[i].Deleted {
				eps[i], errs[i] = service.DecodeEndpoint(changes[i].KV.Value)
			}
		}
	}
	n := runtime.GOMAXPROCS(0)
	if len(changes) < 1024 || n == 1 {
		work(0, len(changes))
		return eps, errs
	}
	var wg sync.WaitGroup
	per := (len(changes) + n - 1) / n
	for lo := 0; lo < len(changes); lo += per {
		wg.Add(1)
		go func() {
			defer wg.Done()
			work(lo, min(lo+per, len(changes)))
		}()
	}
	wg.Wait()
	return eps, errs
}
