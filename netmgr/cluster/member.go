package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/netmgr/netmgr/netmgr/ipam"
	"github.com/netmgr/netmgr/netmgr/store"
)

type config struct {
	ttl      time.Duration
	grace    time.Duration
	renew    time.Duration
	identity string
	log      *slog.Logger
	now      func() time.Time
}

// Option configures Register (and WatchNodes, which uses only WithLogger).
type Option func(*config)

// WithTTL sets the node record's lease TTL (default DefaultTTL): a node whose agent dies disappears
// from its peers within it. The record is kept alive every ttl/3.
func WithTTL(ttl time.Duration) Option { return func(c *config) { c.ttl = ttl } }

// WithGrace sets how long a dead node's subnets stay its own after their last renewal (default
// DefaultGrace); see DefaultGrace.
func WithGrace(d time.Duration) Option { return func(c *config) { c.grace = d } }

// WithRenewInterval sets how often a live node renews its subnet leases (default grace/24, at least
// the TTL).
func WithRenewInterval(d time.Duration) Option { return func(c *config) { c.renew = d } }

// WithIdentity sets the agent's identity token, recorded in the node record. An agent whose token is
// the record's takes over a record that is still alive (its own predecessor's, killed less than a
// TTL ago) instead of being refused; any other agent is refused with ErrExists while the record
// lives. Give a token that stays the same across restarts of this host's agent and differs between
// hosts (e.g. one kept in the agent's state directory). Default: a random token per Member, so that
// only the lease's expiry frees the name.
func WithIdentity(id string) Option { return func(c *config) { c.identity = id } }

// WithLogger sets the logger of the keep-alive and watch goroutines (default: discard).
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.log = l } }

// WithClock sets the clock of the subnet leases' timestamps (tests; default time.Now).
func WithClock(now func() time.Time) Option { return func(c *config) { c.now = now } }

func newConfig(opts []Option) (config, error) {
	c := config{ttl: DefaultTTL, grace: DefaultGrace, now: time.Now}
	for _, o := range opts {
		o(&c)
	}
	c.log = logger(c.log)
	if c.ttl <= 0 {
		return c, fmt.Errorf("%w: node lease TTL %v: must be positive", ErrInvalid, c.ttl)
	}
	if c.grace <= 0 {
		return c, fmt.Errorf("%w: subnet grace period %v: must be positive", ErrInvalid, c.grace)
	}
	if c.renew <= 0 {
		c.renew = max(c.grace/24, c.ttl)
	}
	return c, nil
}

// Member is this node's membership: its record, kept alive by a goroutine, and its subnet leases.
// It is safe for concurrent use.
type Member struct {
	st     store.Store
	leaser store.Leaser
	cfg    config
	key    string
	name   string
	sl     *subnetLeaser

	opMu    sync.Mutex // one writer of the record and the subnet leases at a time; holds mu inside
	mu      sync.Mutex
	node    Node // the record as this node wants it
	pools   map[string][]ipam.SubnetPool
	lease   store.LeaseID
	dirty   bool      // node may differ from what the store holds
	renewed time.Time // when the subnet leases were last renewed
	closed  bool

	kick   chan struct{}
	cancel context.CancelFunc
	done   chan struct{}
}

// Register publishes node's record under cluster/nodes/NAME with a lease of the TTL and starts the
// goroutine that keeps it alive (every TTL/3; after a lease is lost, e.g. to a store outage longer
// than the TTL, it grants a new one and writes the record again; store errors are retried with
// backoff and logged, never fatal). Subnets in node.Networks are not published: LeaseSubnets leases and
// publishes them; attributes are.
//
// A name whose record is alive, written by another agent (see WithIdentity), is refused with
// ErrExists and nothing is changed. st must be a store.Leaser (store.Leases says why not).
func Register(ctx context.Context, st store.Store, node Node, opts ...Option) (*Member, error) {
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	if err := CheckName("node", node.Name); err != nil {
		return nil, err
	}
	if !node.Address.IsValid() {
		return nil, fmt.Errorf("%w: node %q: no underlay address", ErrInvalid, node.Name)
	}
	for nw := range node.Networks {
		if err := CheckName("network", nw); err != nil {
			return nil, err
		}
	}
	leaser, err := store.Leases(st)
	if err != nil {
		return nil, err
	}
	if cfg.identity == "" {
		var b [8]byte
		_, _ = rand.Read(b[:])
		cfg.identity = hex.EncodeToString(b[:])
	}
	node = node.Clone()
	node.Identity = cfg.identity
	for nw, v := range node.Networks {
		v.Subnets = nil
		node.Networks[nw] = v
	}
	m := &Member{
		st: st, leaser: leaser, cfg: cfg, key: KeyNodes + node.Name, name: node.Name,
		sl:    &subnetLeaser{st: st, node: node.Name, grace: cfg.grace, now: cfg.now, log: cfg.log},
		node:  node,
		pools: map[string][]ipam.SubnetPool{},
		kick:  make(chan struct{}, 1),
		done:  make(chan struct{}),
	}
	if _, err := m.claimCmp(ctx); err != nil { // refused before a lease is even granted
		if errors.Is(err, ErrExists) {
			return nil, err
		}
		return nil, fmt.Errorf("register node %q: %w", node.Name, err)
	}
	lease, err := leaser.Grant(ctx, cfg.ttl)
	if err != nil {
		return nil, fmt.Errorf("register node %q: lease: %w", node.Name, err)
	}
	if err := m.writeRecord(ctx, lease, node); err != nil {
		m.revoke(lease)
		if errors.Is(err, ErrExists) {
			return nil, err
		}
		return nil, fmt.Errorf("register node %q: %w", node.Name, err)
	}
	m.lease = lease
	m.renewed = cfg.now()
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	m.cancel = cancel
	go m.run(runCtx)
	return m, nil
}

// revoke ends a lease that holds nothing of ours, best effort.
func (m *Member) revoke(lease store.LeaseID) {
	ctx, cancel := context.WithTimeout(context.Background(), m.cfg.ttl)
	defer cancel()
	_ = m.leaser.Revoke(ctx, lease)
}

// claimCmp returns the compare under which this agent may write the node's key: absent, or holding a
// record of this agent's identity at its revision; a live record of another agent is ErrExists.
func (m *Member) claimCmp(ctx context.Context) (store.Cmp, error) {
	cmp := store.Absent(m.key)
	kv, err := m.st.Get(ctx, m.key)
	switch {
	case err == nil:
		cur, derr := decodeNode(kv)
		if derr != nil || cur.Identity != m.cfg.identity {
			return cmp, fmt.Errorf("%w: node %q is alive, registered by another agent (underlay address %s): stop that agent (its record goes within its lease TTL) or choose another node name",
				ErrExists, m.name, cur.Address)
		}
		cmp.Rev = kv.Rev
	case !errors.Is(err, store.ErrNotFound):
		return cmp, err
	}
	return cmp, nil
}

// writeRecord puts n at the node's key with lease, under claimCmp's compare.
func (m *Member) writeRecord(ctx context.Context, lease store.LeaseID, n Node) error {
	for attempt := 0; ; attempt++ {
		cmp, err := m.claimCmp(ctx)
		if err != nil {
			return err
		}
		err = m.st.Txn(ctx, []store.Cmp{cmp}, []store.Op{store.PutWithLease(m.key, n.encode(), lease)})
		if !errors.Is(err, store.ErrConflict) || attempt >= 10 {
			return err
		}
	}
}

// Node returns the node's record as this Member publishes it.
func (m *Member) Node() Node {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.node.Clone()
}

// Lease returns the record's current lease (store.NoLease while it is being granted again).
func (m *Member) Lease() store.LeaseID {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lease
}

var errClosed = errors.New("cluster member closed")

// Update changes the record (fn gets a copy; name, identity and leased subnets stay as they are: use
// LeaseSubnets and ReleaseSubnets for those) and publishes it. When publishing fails the error is
// returned and the change is kept: the keep-alive goroutine goes on publishing it.
func (m *Member) Update(ctx context.Context, fn func(*Node)) error {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return errClosed
	}
	old := m.node
	n := old.Clone()
	fn(&n)
	n.Name, n.Identity = old.Name, old.Identity
	for nw, v := range n.Networks {
		v.Subnets = slices.Clone(old.Networks[nw].Subnets)
		n.Networks[nw] = v
	}
	for nw, v := range old.Networks {
		if _, ok := n.Networks[nw]; !ok && len(v.Subnets) > 0 {
			if n.Networks == nil {
				n.Networks = map[string]NodeNetwork{}
			}
			n.Networks[nw] = NodeNetwork{Subnets: slices.Clone(v.Subnets)}
		}
	}
	if !n.Address.IsValid() {
		n.Address = old.Address
	}
	m.node = n
	m.dirty = true
	m.mu.Unlock()
	return m.publishLocked(ctx)
}

// SetAttrs replaces the node's attributes of a network (a driver's, e.g. the VTEP MAC) and publishes
// them (see Update).
func (m *Member) SetAttrs(ctx context.Context, network string, attrs map[string]string) error {
	if err := CheckName("network", network); err != nil {
		return err
	}
	return m.Update(ctx, func(n *Node) {
		if n.Networks == nil {
			n.Networks = map[string]NodeNetwork{}
		}
		v := n.Networks[network]
		v.Attrs = nil
		if len(attrs) > 0 {
			v.Attrs = make(map[string]string, len(attrs))
			for k, a := range attrs {
				v.Attrs[k] = a
			}
		}
		n.Networks[network] = v
	})
}

// SetReady sets the record's ready flag and publishes it (see Update).
func (m *Member) SetReady(ctx context.Context, ready bool) error {
	return m.Update(ctx, func(n *Node) { n.Ready = ready })
}

// publishLocked writes the record now if there is a lease; on failure it wakes the keep-alive
// goroutine, which goes on trying. Called with opMu held.
func (m *Member) publishLocked(ctx context.Context) error {
	m.mu.Lock()
	lease, n := m.lease, m.node.Clone()
	m.mu.Unlock()
	err := errors.New("the node's lease is being granted again")
	if lease != store.NoLease {
		err = m.writeRecord(ctx, lease, n)
	}
	if err != nil {
		m.wake()
		return fmt.Errorf("publish node %q: %w (the keep-alive goroutine goes on trying)", n.Name, err)
	}
	m.mu.Lock()
	m.dirty = false
	m.mu.Unlock()
	return nil
}

func (m *Member) wake() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// LeaseSubnets leases this node's subnet of each pool (at most one per address family) of a cluster
// network, publishes them in the node's record, and returns them in the pools' order. A node holding a
// subnet of a pool gets that one again (so a node back under its name after a restart or a lost lease
// keeps its subnet); else a hint (e.g. remembered in the node's local state) is taken when it is free
// or its holder is dead and past the grace period; else a free subnet; else, once the grace period of a
// dead node's subnet is over, that one. A pool with none left is ErrFull, and then nothing is leased.
// The keep-alive goroutine renews the leases. A failure to publish the record is logged and retried by
// that goroutine; the subnets are leased all the same.
func (m *Member) LeaseSubnets(ctx context.Context, network string, pools []ipam.SubnetPool, hints ...netip.Prefix) ([]netip.Prefix, error) {
	if err := CheckName("network", network); err != nil {
		return nil, err
	}
	families := map[bool]bool{}
	for _, p := range pools {
		if err := ipam.CheckNodePrefix(p.CIDR, p.Bits); err != nil {
			return nil, fmt.Errorf("%w: network %q: %w", ErrInvalid, network, err)
		}
		if families[p.CIDR.Addr().Is4()] {
			return nil, fmt.Errorf("%w: network %q: two pools of one address family (%v)", ErrInvalid, network, pools)
		}
		families[p.CIDR.Addr().Is4()] = true
	}
	m.opMu.Lock()
	defer m.opMu.Unlock()
	m.mu.Lock()
	closed, held := m.closed, slices.Clone(m.node.Networks[network].Subnets)
	m.mu.Unlock()
	if closed {
		return nil, errClosed
	}
	var got, fresh []netip.Prefix
	for _, p := range pools {
		s, err := m.sl.acquire(ctx, network, p, hintFor(p, hints, held))
		if err != nil {
			if rerr := m.sl.release(ctx, network, fresh); rerr != nil {
				m.cfg.log.Warn("cluster: could not free the subnets of a failed lease", "network", network, "subnets", fresh, "err", rerr)
			}
			return nil, err
		}
		got = append(got, s)
		if !slices.Contains(held, s) {
			fresh = append(fresh, s)
		}
	}
	m.mu.Lock()
	if m.node.Networks == nil {
		m.node.Networks = map[string]NodeNetwork{}
	}
	v := m.node.Networks[network]
	v.Subnets = slices.Clone(got)
	m.node.Networks[network] = v
	m.pools[network] = slices.Clone(pools)
	m.renewed = m.cfg.now()
	m.dirty = true
	m.mu.Unlock()
	if err := m.publishLocked(ctx); err != nil {
		m.cfg.log.Warn("cluster: subnets leased, record not published yet", "network", network, "subnets", got, "err", err)
	}
	return got, nil
}

// hintFor returns the first of hints, then held, that is a node subnet of pool.
func hintFor(p ipam.SubnetPool, hints, held []netip.Prefix) netip.Prefix {
	for _, h := range append(slices.Clone(hints), held...) {
		if p.Contains(h) {
			return h
		}
	}
	return netip.Prefix{}
}

// ReleaseSubnets frees this node's subnets of a network (the node stops carrying it, or the network is
// deleted) and drops the network from the record.
func (m *Member) ReleaseSubnets(ctx context.Context, network string) error {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	m.mu.Lock()
	closed, held := m.closed, slices.Clone(m.node.Networks[network].Subnets)
	m.mu.Unlock()
	if closed {
		return errClosed
	}
	if err := m.sl.release(ctx, network, held); err != nil {
		return fmt.Errorf("network %q: free node subnets %v: %w", network, held, err)
	}
	m.mu.Lock()
	delete(m.node.Networks, network)
	delete(m.pools, network)
	m.dirty = true
	m.mu.Unlock()
	return m.publishLocked(ctx)
}

// Close stops keeping the record alive and returns once the goroutine has stopped. The lease is left
// to expire: peers drop the node within the TTL, and its subnet leases stay its own for the grace
// period. This is what an agent does on SIGTERM, leaving the data path in place.
func (m *Member) Close() {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	m.cancel()
	<-m.done
}

// Leave stops keeping the record alive and revokes its lease now: peers drop the node at once. The
// subnet leases stay (see RemoveNode to free them).
func (m *Member) Leave(ctx context.Context) error {
	m.Close()
	m.mu.Lock()
	lease := m.lease
	m.lease = store.NoLease
	m.mu.Unlock()
	if lease == store.NoLease {
		return nil
	}
	if err := m.leaser.Revoke(ctx, lease); err != nil && !errors.Is(err, store.ErrLeaseNotFound) {
		return fmt.Errorf("node %q: revoke its lease: %w", m.name, err)
	}
	return nil
}

// run keeps the record alive until ctx ends.
func (m *Member) run(ctx context.Context) {
	defer close(m.done)
	interval := m.cfg.ttl / 3
	retry := backoff{min: min(100*time.Millisecond, interval), max: interval}
	wait := interval
	ticks := 0
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.kick:
		case <-t.C:
		}
		tctx, cancel := context.WithTimeout(ctx, m.cfg.ttl)
		err := m.tick(tctx, &ticks)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			wait = retry.next()
			m.cfg.log.Warn("cluster: keeping the node record alive: store error, retrying", "node", m.name, "err", err, "retry_in", wait)
		} else {
			retry.reset()
			wait = interval
		}
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(wait)
	}
}

// tick keeps the lease alive once, and registers again when the lease or the record was lost, the
// record needs publishing, or the subnet leases are due for renewal.
func (m *Member) tick(ctx context.Context, ticks *int) error {
	m.mu.Lock()
	lease, dirty := m.lease, m.dirty
	renew := m.cfg.now().Sub(m.renewed) >= m.cfg.renew
	m.mu.Unlock()
	if lease != store.NoLease && !dirty {
		err := m.leaser.KeepAlive(ctx, lease)
		switch {
		case errors.Is(err, store.ErrLeaseNotFound):
			m.cfg.log.Warn("cluster: the node's lease has ended (the store did not hear from this node for longer than its TTL): registering again",
				"node", m.name, "lease", lease)
			m.setLease(store.NoLease)
			return m.sync(ctx, true)
		case err != nil:
			return fmt.Errorf("keep-alive: %w", err)
		}
		*ticks++
		if *ticks%3 == 0 { // once per TTL: is the record still there, and ours?
			kv, err := m.st.Get(ctx, m.key)
			switch {
			case errors.Is(err, store.ErrNotFound):
				m.cfg.log.Warn("cluster: the node's record is gone although its lease lives (removed by podctl node rm?): registering again", "node", m.name)
				return m.sync(ctx, true)
			case err != nil:
				return err
			}
			if n, err := decodeNode(kv); err != nil || n.Identity != m.cfg.identity {
				return m.sync(ctx, false) // refused with ErrExists, logged by run
			}
		}
		if !renew {
			return nil
		}
	}
	return m.sync(ctx, renew || lease == store.NoLease)
}

func (m *Member) setLease(l store.LeaseID) {
	m.mu.Lock()
	m.lease = l
	m.mu.Unlock()
}

// sync grants a lease if there is none, leases (renews) the subnets when asked to, and writes the
// record.
func (m *Member) sync(ctx context.Context, subnets bool) error {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	m.mu.Lock()
	lease, closed := m.lease, m.closed
	pools := make(map[string][]ipam.SubnetPool, len(m.pools))
	held := map[string][]netip.Prefix{}
	for nw, p := range m.pools {
		pools[nw] = p
		held[nw] = slices.Clone(m.node.Networks[nw].Subnets)
	}
	m.mu.Unlock()
	if closed {
		return nil
	}
	if lease == store.NoLease {
		// Another agent holding the name now: neither grant nor touch the subnets (retried later).
		if _, err := m.claimCmp(ctx); err != nil {
			return err
		}
		var err error
		if lease, err = m.leaser.Grant(ctx, m.cfg.ttl); err != nil {
			return fmt.Errorf("grant: %w", err)
		}
		m.setLease(lease)
		subnets = true
	}
	if subnets {
		for nw, ps := range pools {
			var got []netip.Prefix
			for _, p := range ps {
				s, err := m.sl.acquire(ctx, nw, p, hintFor(p, nil, held[nw]))
				if errors.Is(err, ErrFull) {
					// Its subnet was taken over and none is left: publish the node without one
					// rather than not at all (or with a subnet another node holds).
					m.cfg.log.Error("cluster: the node has no subnet of a network any more", "node", m.name, "network", nw, "err", err)
					continue
				}
				if err != nil {
					return fmt.Errorf("network %q: renew the node's subnet of %s: %w", nw, p.CIDR, err)
				}
				got = append(got, s)
			}
			if !slices.Equal(got, held[nw]) {
				m.cfg.log.Error("cluster: the node's subnets changed (its old ones were taken over while it was away): pods with addresses in the old ones must be recreated",
					"node", m.name, "network", nw, "old", held[nw], "new", got)
			}
			m.mu.Lock()
			v := m.node.Networks[nw]
			v.Subnets = got
			m.node.Networks[nw] = v
			m.dirty = true
			m.mu.Unlock()
		}
		m.mu.Lock()
		m.renewed = m.cfg.now()
		m.mu.Unlock()
	}
	m.mu.Lock()
	n := m.node.Clone()
	m.mu.Unlock()
	err := m.writeRecord(ctx, lease, n)
	switch {
	case errors.Is(err, store.ErrLeaseNotFound):
		m.setLease(store.NoLease)
		m.wake()
		return fmt.Errorf("publish: %w", err)
	case errors.Is(err, ErrExists):
		// Another agent holds the name now: keep no lease of ours, and try again later (it may die).
		m.setLease(store.NoLease)
		m.revoke(lease)
		return err
	case err != nil:
		return fmt.Errorf("publish: %w", err)
	}
	m.mu.Lock()
	m.dirty = false
	m.mu.Unlock()
	return nil
}
