package proxy

import (
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"github.com/google/nftables"

	"github.com/netmgr/netmgr/netmgr/service"
)

// Proxier holds the services and endpoints a node has seen and what it has programmed for each
// service, and brings the kernel's table in line: Sync programs only the services that changed
// since the last Sync (their map elements and chains), or everything (a full sync) at the start,
// after a failure, when the service CIDR changed or when the table was found damaged. It is not
// safe for concurrent use.
type Proxier struct {
	k    kernel
	node string
	log  *slog.Logger
	cidr [2]netip.Prefix // IPv4, IPv6
	pods [2][]netip.Prefix

	services  map[string]*service.Service
	endpoints map[string]*service.Endpoint
	epIndex   map[string]map[string]bool // "k=v" -> endpoint keys with that label
	svcIndex  map[string]map[string]bool // "k=v" -> services selecting it

	programmed map[string]*svcPlan
	shared     map[string]int // elements several services put in (hairpin): how many
	dirty      map[string]bool
	full       bool // the next Sync is a full one
	synced     bool // a full sync has succeeded
}

// NewProxier programs the table of the network namespace open at nsFd (-1: the caller's) for node.
func NewProxier(nsFd int, node string, log *slog.Logger) *Proxier {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Proxier{k: kernel{nsFd: nsFd}, node: node, log: log,
		services: map[string]*service.Service{}, endpoints: map[string]*service.Endpoint{},
		epIndex: map[string]map[string]bool{}, svcIndex: map[string]map[string]bool{},
		programmed: map[string]*svcPlan{}, shared: map[string]int{}, dirty: map[string]bool{}, full: true}
}

// Close releases the proxier's netlink sockets; the table stays.
func (p *Proxier) Close() { p.k.close() }

// SetPodCIDRs sets the pod networks' subnets (every network's, the cluster CIDRs of those that span
// nodes): a connection to a cluster IP from any other source (a client beyond the routers) is
// masqueraded, as kube-proxy does with --cluster-cidr. A change is a full sync.
func (p *Proxier) SetPodCIDRs(cs ...netip.Prefix) {
	var next [2][]netip.Prefix
	for _, c := range cs {
		i := 0
		if c.Addr().Is6() {
			i = 1
		}
		if c.IsValid() && !slices.Contains(next[i], c.Masked()) {
			next[i] = append(next[i], c.Masked())
		}
	}
	for i := range next {
		slices.SortFunc(next[i], func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	}
	if !slices.Equal(next[0], p.pods[0]) || !slices.Equal(next[1], p.pods[1]) {
		p.pods = next
		p.full = true
	}
}

// SetCIDR sets the service CIDRs (at most one per family; a family not given has none) whose
// unallocated addresses are dropped (a change: a full sync).
func (p *Proxier) SetCIDR(cs ...netip.Prefix) {
	var next [2]netip.Prefix
	for _, c := range cs {
		if c.Addr().Is6() {
			next[1] = c
		} else if c.IsValid() {
			next[0] = c
		}
	}
	if next != p.cidr {
		p.cidr = next
		p.full = true
	}
}

func pairs(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	return out
}

func indexAdd(ix map[string]map[string]bool, keys []string, v string) {
	for _, k := range keys {
		if ix[k] == nil {
			ix[k] = map[string]bool{}
		}
		ix[k][v] = true
	}
}

func indexDel(ix map[string]map[string]bool, keys []string, v string) {
	for _, k := range keys {
		delete(ix[k], v)
		if len(ix[k]) == 0 {
			delete(ix, k)
		}
	}
}

// SetService records a service (new or changed).
func (p *Proxier) SetService(s *service.Service) {
	if old := p.services[s.Name]; old != nil {
		indexDel(p.svcIndex, pairs(old.Selector), s.Name)
	}
	p.services[s.Name] = s
	indexAdd(p.svcIndex, pairs(s.Selector), s.Name)
	p.dirty[s.Name] = true
}

// DeleteService forgets a service.
func (p *Proxier) DeleteService(name string) {
	if old := p.services[name]; old != nil {
		indexDel(p.svcIndex, pairs(old.Selector), name)
	}
	delete(p.services, name)
	p.dirty[name] = true
}

// touch marks the services selecting labels dirty (needless before a full sync, which does all).
func (p *Proxier) touch(labels map[string]string) {
	if p.full {
		return
	}
	for _, kv := range pairs(labels) {
		for name := range p.svcIndex[kv] {
			if s := p.services[name]; s != nil && s.Matches(labels) {
				p.dirty[name] = true
			}
		}
	}
}

// SetEndpoint records an endpoint under its store key (new or changed).
func (p *Proxier) SetEndpoint(key string, e *service.Endpoint) {
	if old := p.endpoints[key]; old != nil {
		indexDel(p.epIndex, pairs(old.Labels), key)
		p.touch(old.Labels)
	}
	p.endpoints[key] = e
	indexAdd(p.epIndex, pairs(e.Labels), key)
	p.touch(e.Labels)
}

// DeleteEndpoint forgets an endpoint.
func (p *Proxier) DeleteEndpoint(key string) {
	if old := p.endpoints[key]; old != nil {
		indexDel(p.epIndex, pairs(old.Labels), key)
		p.touch(old.Labels)
	}
	delete(p.endpoints, key)
}

// ForceFull makes the next Sync a full one.
func (p *Proxier) ForceFull() { p.full = true }

// Pending reports whether a Sync has anything to do.
func (p *Proxier) Pending() bool { return p.full || len(p.dirty) > 0 }

func (p *Proxier) backends(s *service.Service) []backend {
	var smallest map[string]bool
	for _, kv := range pairs(s.Selector) {
		set := p.epIndex[kv]
		if set == nil {
			return nil
		}
		if smallest == nil || len(set) < len(smallest) {
			smallest = set
		}
	}
	var out []backend
	for key := range smallest {
		e := p.endpoints[key]
		if e == nil || !s.Matches(e.Labels) {
			continue
		}
		ip, ok := e.Addr(p.node, s.ClusterIP.Is6())
		if !ok {
			continue
		}
		out = append(out, backend{ip: ip, local: e.Node == p.node, name: key})
	}
	return out
}

func (p *Proxier) planOf(name string) *svcPlan {
	s := p.services[name]
	if s == nil {
		return nil
	}
	return plan(s, p.backends(s))
}

// Sync programs what changed (or everything, see Proxier). On failure the next Sync is a full one.
func (p *Proxier) Sync() error {
	if err := p.k.open(); err != nil {
		return err
	}
	if p.full {
		if err := p.fullSync(); err != nil {
			p.log.Warn("services: full sync failed", "error", err)
			return err
		}
		return nil
	}
	if len(p.dirty) == 0 {
		return nil
	}
	names := make([]string, 0, len(p.dirty))
	for n := range p.dirty {
		names = append(names, n)
	}
	slices.Sort(names)
	next := map[string]*svcPlan{}
	for _, n := range names {
		next[n] = p.planOf(n)
		// Each service's changes are one transaction; many changed services may take several.
		if err := p.diff(p.programmed[n], next[n], true); err != nil {
			p.full = true
			p.k.close()
			return err
		}
	}
	if err := p.k.flush(); err != nil {
		p.full = true
		return err
	}
	for _, n := range names {
		old := p.programmed[n]
		if next[n] == nil {
			delete(p.programmed, n)
		} else {
			p.programmed[n] = next[n]
		}
		p.clearConntrack(old, next[n])
	}
	p.dirty = map[string]bool{}
	return nil
}

// Check looks at the table and schedules a full sync if it is gone or was flushed.
func (p *Proxier) Check() error {
	if err := p.k.open(); err != nil {
		return err
	}
	ok, err := p.k.intact()
	if err != nil {
		p.k.close()
		return err
	}
	if !ok && p.synced {
		p.log.Warn("services: the table was flushed or deleted by someone; programming it again", "table", TableName)
		p.full = true
	}
	return nil
}

// fullSync replaces the table by everything at once: the delete and the fixed parts in one batch,
// the services in batches after it.
func (p *Proxier) fullSync() error {
	start := time.Now()
	c := p.k.conn
	for i, v6 := range []bool{false, true} {
		exists, err := p.k.tableExists(v6)
		if err != nil {
			p.k.close()
			return err
		}
		table := tableOf(v6)
		if exists {
			c.DelTable(table)
		}
		c.AddTable(table)
		for _, n := range fixedSets() {
			if err := c.AddSet(mapSet(n, v6), nil); err != nil {
				return err
			}
		}
		for _, ch := range fixedChains(v6) {
			c.AddChain(ch)
		}
		// Rules that jump to a chain come after the chain exists (all are added above).
		rules := fixedRules(p.cidr[i], p.pods[i], v6)
		for _, name := range []string{chainMarkMasq, chainMasq, chainFromOutside, chainChecks, chainServices,
			"filter-prerouting", "filter-output", "nat-prerouting", "nat-output", "nat-postrouting"} {
			for _, r := range rules[name] {
				c.AddRule(&nftables.Rule{Table: table, Chain: chain(name, v6), Exprs: r})
				p.k.ops++
			}
		}
	}
	p.k.atomic = true
	defer func() { p.k.atomic = false }()
	old := p.programmed
	p.programmed = map[string]*svcPlan{}
	p.shared = map[string]int{}
	names := make([]string, 0, len(p.services))
	for n := range p.services {
		names = append(names, n)
	}
	slices.Sort(names)
	// The chained services' sets and chains first, then every element at once, in full messages.
	var elems []elem
	seen := map[string]bool{}
	for _, n := range names {
		pl := p.planOf(n)
		if len(pl.chains) > 0 || len(pl.sets) > 0 {
			if err := p.diff(nil, &svcPlan{v6: pl.v6, chains: pl.chains, sets: pl.sets}, true); err != nil {
				p.k.close()
				return err
			}
		}
		for id, e := range pl.elems {
			if e.set == setHairpin {
				p.shared[id]++
				if seen[id] {
					continue
				}
				seen[id] = true
			}
			elems = append(elems, e)
		}
		p.programmed[n] = pl
	}
	if err := p.k.elements(elems, false, true); err != nil {
		p.k.close()
		return err
	}
	if err := p.k.flush(); err != nil {
		return err
	}
	for n, o := range old {
		p.clearConntrack(o, p.programmed[n])
	}
	p.full, p.synced = false, true
	p.dirty = map[string]bool{}
	p.log.Info("services: full sync", "services", len(p.services), "endpoints", len(p.endpoints), "took", time.Since(start))
	return nil
}

// diff queues the changes from old to next (either may be nil). With split, the batch may be cut
// (a full sync); without, it is one transaction.
func (p *Proxier) diff(old, next *svcPlan, split bool) error {
	if old == nil {
		old = &svcPlan{}
	}
	if next == nil {
		next = &svcPlan{v6: old.v6}
	}
	if old.v6 != next.v6 && (len(old.elems) > 0 || len(old.chains) > 0 || len(old.sets) > 0) {
		// A service recreated with a cluster IP of the other family: out of one table, into the other.
		if err := p.diff(old, nil, split); err != nil {
			return err
		}
		return p.diff(nil, next, split)
	}
	c := p.k.conn
	// 1. Elements that go or change.
	var del, add []elem
	for id, e := range old.elems {
		if n, ok := next.elems[id]; !ok || n != e {
			del = append(del, e)
		}
	}
	for id, e := range next.elems {
		if o, ok := old.elems[id]; !ok || o != e {
			add = append(add, e)
		}
	}
	// The hairpin set is shared: an endpoint behind several services is one element.
	del = slices.DeleteFunc(del, func(e elem) bool {
		if e.set != setHairpin {
			return false
		}
		p.shared[e.id()]--
		if p.shared[e.id()] > 0 {
			return true
		}
		delete(p.shared, e.id())
		return false
	})
	add = slices.DeleteFunc(add, func(e elem) bool {
		if e.set != setHairpin {
			return false
		}
		p.shared[e.id()]++
		return p.shared[e.id()] > 1
	})
	if err := p.k.elements(del, true, false); err != nil {
		return err
	}
	// 2. New affinity sets, new chains.
	for name, timeout := range next.sets {
		if _, ok := old.sets[name]; !ok {
			if err := c.AddSet(affinitySet(name, timeout, next.v6), nil); err != nil {
				return err
			}
			p.k.ops++
		}
	}
	oldChains := map[string]chainPlan{}
	for _, ch := range old.chains {
		oldChains[ch.name] = ch
	}
	newChains := map[string]bool{}
	for _, ch := range next.chains {
		newChains[ch.name] = true
		if _, ok := oldChains[ch.name]; !ok {
			c.AddChain(chain(ch.name, ch.v6))
			p.k.ops++
		}
	}
	// 3. Rules of new and changed chains.
	for _, ch := range next.chains {
		o, ok := oldChains[ch.name]
		if ok && o.sig == ch.sig {
			continue
		}
		if ok {
			c.FlushChain(chain(ch.name, ch.v6))
			p.k.ops++
		}
		p.k.rules(ch)
	}
	// 4. Elements that come or change.
	if err := p.k.elements(add, false, false); err != nil {
		return err
	}
	// 5. Chains and sets that go: flushed first (they may jump to each other), then deleted.
	var gone []string
	for _, ch := range old.chains {
		if !newChains[ch.name] {
			gone = append(gone, ch.name)
			c.FlushChain(chain(ch.name, ch.v6))
			p.k.ops++
		}
	}
	for _, name := range gone {
		c.DelChain(chain(name, old.v6))
		p.k.ops++
	}
	for name := range old.sets {
		if _, ok := next.sets[name]; !ok {
			c.DelSet(&nftables.Set{Table: tableOf(old.v6), Name: name})
			p.k.ops++
		}
	}
	if split && p.k.ops >= p.k.limit() {
		return p.k.flush()
	}
	return nil
}

// clearConntrack removes the UDP conntrack entries of endpoints that no longer serve a destination
// (Kubernetes issue 59368: a UDP client keeps sending to a dead pod until its entry times out).
func (p *Proxier) clearConntrack(old, next *svcPlan) {
	if old == nil || len(old.udp) == 0 {
		return
	}
	keep := map[udpFlow]bool{}
	if next != nil {
		for _, f := range next.udp {
			keep[f] = true
		}
	}
	for _, f := range old.udp {
		if keep[f] {
			continue
		}
		n, err := p.k.conntrackDelete(f)
		if err != nil {
			p.log.Warn("services: clear UDP conntrack entries", "endpoint", f.endpoint, "port", f.port, "error", err)
			continue
		}
		if n > 0 {
			p.log.Debug("services: cleared UDP conntrack entries", "endpoint", f.endpoint, "port", f.port, "entries", n)
		}
	}
}

// Counts reports how many services and endpoints the proxier holds and how many services it has
// programmed.
func (p *Proxier) Counts() (services, endpoints, programmed int) {
	return len(p.services), len(p.endpoints), len(p.programmed)
}
