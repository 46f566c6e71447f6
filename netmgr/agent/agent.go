// Package agent is the long-running part of a netmgr node: it registers the node in the cluster
// store (a record kept alive by a short lease), leases the node's subnets of every network that spans
// nodes, joins those networks through the Manager (which has the driver create the node's host side),
// publishes what the drivers need their peers to know (an overlay's VTEP MAC), and keeps every joined
// network's peers in step with the live nodes. Later controllers (services, DNS) run in the same
// agent (Controller).
//
// The agent is a library type, so that a runtime embedding netmgr can run it in its own process;
// `podctl agent` wraps it. When its context ends it stops and leaves the data path as it is: pods keep
// talking, and the node's lease expires, so peers drop the node within the TTL.
package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/netmgr/netmgr/drivers"
	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/cluster"
	"github.com/netmgr/netmgr/netmgr/ipam"
	"github.com/netmgr/netmgr/netmgr/store"
)

// Controller is one more loop the agent runs beside its own (the service controller, the DNS
// server). Run blocks until ctx ends; an error other than ctx's ends the agent.
type Controller interface {
	Name() string
	Run(ctx context.Context, a *Agent) error
}

// Config configures an agent.
type Config struct {
	// Manager is this node's Manager; its network store must be Cluster (WithStores(cluster, local)).
	Manager *netmgr.Manager
	// Cluster is the cluster store (etcd): networks, node records, subnet leases. Nil: the Manager's
	// network store. A store without leases (one host's bbolt file) runs the agent on one host: no
	// node record, no networks to join, only the controllers.
	Cluster store.Store
	// Underlay is the address other nodes reach this node by (needed with a cluster store).
	Underlay netip.Addr
	// TTL of the node's record (default cluster.DefaultTTL); Grace before a dead node's subnets may be
	// taken over (default cluster.DefaultGrace).
	TTL, Grace time.Duration
	// Identity is the token that lets a restarted agent of this host take over its node record while
	// the old one still lives (cluster.WithIdentity). Default: a random token kept in the Manager's
	// state directory (agent-identity), made on the first start, so that a restart (SIGTERM, or a
	// crash) is back at once, and another host that takes the name is refused.
	Identity string
	// Resync re-reads everything this often even when no change was seen (default 30 s).
	Resync      time.Duration
	Logger      *slog.Logger
	Controllers []Controller
}

// Agent runs one node. Make it with New, run it with Run.
type Agent struct {
	cfg  Config
	m    *netmgr.Manager
	log  *slog.Logger
	node string

	member *cluster.Member
	local  bool // one host, no cluster store: controllers only
	// joinedHere holds the networks (by ID) this agent process joined and published; only the Run
	// loop touches it.
	joinedHere map[string]bool

	// peerErrs is each joined network's last SyncPeers error (published as AttrPeerError); only
	// the Run loop touches it.
	peerErrs map[string]string

	mu     sync.Mutex
	nodes  []cluster.Node // the live nodes, as last seen
	subs   map[chan struct{}]bool
	ready  chan struct{}
	readyF bool
}

// New checks cfg. It touches nothing.
func New(cfg Config) (*Agent, error) {
	if cfg.Manager == nil {
		return nil, fmt.Errorf("%w: agent needs a Manager", netmgr.ErrInvalid)
	}
	if cfg.Cluster == nil {
		cfg.Cluster = cfg.Manager.NetworkStore()
	}
	_, err := store.Leases(cfg.Cluster)
	local := err != nil
	if !local && !cfg.Underlay.IsValid() {
		return nil, fmt.Errorf("%w: agent needs this node's underlay address (the one other nodes reach it by)", netmgr.ErrInvalid)
	}
	if cfg.TTL == 0 {
		cfg.TTL = cluster.DefaultTTL
	}
	if cfg.Grace == 0 {
		cfg.Grace = cluster.DefaultGrace
	}
	if cfg.Resync == 0 {
		cfg.Resync = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Agent{cfg: cfg, m: cfg.Manager, log: cfg.Logger, node: cfg.Manager.Node(), local: local, ready: make(chan struct{}), joinedHere: map[string]bool{}}, nil
}

// Node is this agent's node name.
func (a *Agent) Node() string { return a.node }

// Manager is the node's Manager.
func (a *Agent) Manager() *netmgr.Manager { return a.m }

// Cluster is the cluster store.
func (a *Agent) Cluster() store.Store { return a.cfg.Cluster }

// Lease is the lease of this node's record: a controller that publishes keys which must vanish with
// the node (its endpoints) puts them with it (store.PutWithLease). It is store.NoLease on one host
// (Local), before Run has registered the node, and while a lost lease is being granted again; it
// changes when the record is registered again, and the keys of the old lease are gone then.
func (a *Agent) Lease() store.LeaseID {
	if a.member == nil {
		return store.NoLease
	}
	return a.member.Lease()
}

// Underlay is the node's underlay address (Config.Underlay; invalid on one host without one).
func (a *Agent) Underlay() netip.Addr { return a.cfg.Underlay }

// Subscribe returns a channel that gets a signal (coalesced) after each round of the agent's loop
// that may have joined, left or re-plumbed networks or changed peers, so that a controller that
// follows the node's joined networks (the BGP speaker) acts at once rather than polling; the
// function ends the subscription.
func (a *Agent) Subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	a.mu.Lock()
	if a.subs == nil {
		a.subs = map[chan struct{}]bool{}
	}
	a.subs[ch] = true
	a.mu.Unlock()
	return ch, func() {
		a.mu.Lock()
		delete(a.subs, ch)
		a.mu.Unlock()
	}
}

func (a *Agent) notify() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for ch := range a.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// Logger is the agent's logger.
func (a *Agent) Logger() *slog.Logger { return a.log }

// Ready is closed once the node is registered and every network that spans nodes is joined and its
// peers programmed for the first time.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

// Nodes returns the live nodes as the agent last saw them.
func (a *Agent) Nodes() []cluster.Node {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.nodes)
}

// Run registers the node and runs until ctx ends (then it returns nil, leaving the data path and
// letting the node's lease expire), or until registration or a controller fails. A name alive
// elsewhere is refused (cluster.ErrExists).
func (a *Agent) Run(ctx context.Context) error {
	if a.local {
		return a.runLocal(ctx)
	}
	// One agent per host (state and run directory): a second would take over the first one's
	// record (same identity) while it still runs.
	lock, err := lockRunDir(a.m.RunDir())
	if err != nil {
		return err
	}
	defer lock.Close()
	id := a.cfg.Identity
	if id == "" {
		var err error
		if id, err = hostIdentity(a.m.StateDir()); err != nil {
			return err
		}
	}
	a.member, err = cluster.Register(ctx, a.cfg.Cluster, cluster.Node{Name: a.node, Address: a.cfg.Underlay},
		cluster.WithTTL(a.cfg.TTL), cluster.WithGrace(a.cfg.Grace), cluster.WithLogger(a.log), cluster.WithIdentity(id))
	if err != nil {
		return err
	}
	defer a.member.Close()
	a.log.Info("node registered", "node", a.node, "underlay", a.cfg.Underlay, "ttl", a.cfg.TTL)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc, wait := a.startControllers(ctx)
	defer wait()

	nodes := cluster.WatchNodes(ctx, a.cfg.Cluster, cluster.WithLogger(a.log))
	nets := watchKeys(ctx, a.cfg.Cluster, "networks/", a.log)
	tick := time.NewTicker(a.cfg.Resync)
	defer tick.Stop()
	haveNodes := false
	for {
		select {
		case <-ctx.Done():
			a.log.Info("agent stopping; the data path stays", "node", a.node)
			return nil
		case err := <-errc:
			return err
		case ns, ok := <-nodes:
			if !ok {
				return nil
			}
			a.mu.Lock()
			a.nodes = ns
			a.mu.Unlock()
			a.log.Debug("nodes changed", "live", nodeNames(ns))
			haveNodes = true
			a.syncPeers(ctx)
		case <-nets:
			a.syncNetworks(ctx, false)
			a.syncPeers(ctx)
		case <-tick.C:
			a.syncNetworks(ctx, true)
			a.syncPeers(ctx)
		}
		a.notify()
		if haveNodes && !a.readyF && a.converged(ctx) {
			a.readyF = true
			if err := a.member.SetReady(ctx, true); err != nil {
				a.log.Warn("publish ready", "error", err)
			}
			close(a.ready)
		}
	}
}

// lockRunDir takes the agent's lock in the run directory, or fails with cluster.ErrExists naming
// the holder when another agent of this host runs.
func lockRunDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, "agent.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("agent lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		b, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: another agent of this host is running (pid %s, lock %s)", cluster.ErrExists, strings.TrimSpace(string(b)), path)
		}
		return nil, fmt.Errorf("agent lock %s: %w", path, err)
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return f, nil
}

// identityFile holds the agent's identity token in the Manager's state directory.
const identityFile = "agent-identity"

// hostIdentity is the identity of this state directory's agent in this boot: the token kept in the
// directory (made on the first call, and the directory with it) and the kernel's boot id, so that a
// restart in the same boot takes the live record over, while a copy of the state directory on
// another machine (a cloned image) or a reboot does not (the old record must expire first).
func hostIdentity(dir string) (string, error) {
	path := filepath.Join(dir, identityFile)
	id := ""
	if b, err := os.ReadFile(path); err == nil {
		id = strings.TrimSpace(string(b))
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("agent identity: %w", err)
	}
	if id == "" {
		var b [16]byte
		if _, err := rand.Read(b[:]); err != nil {
			return "", err
		}
		id = hex.EncodeToString(b[:])
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return "", fmt.Errorf("agent identity: %w", err)
		}
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(id+"\n"), 0o600); err != nil {
			return "", fmt.Errorf("agent identity: %w", err)
		}
		if err := os.Rename(tmp, path); err != nil {
			return "", fmt.Errorf("agent identity: %w", err)
		}
	}
	if boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
		id += "/" + strings.TrimSpace(string(boot))
	}
	return id, nil
}

// Local reports whether the agent runs on one host (a store without leases): no node record, no
// networks that span nodes, only the controllers.
func (a *Agent) Local() bool { return a.local }

// runLocal runs the controllers on one host until ctx ends.
func (a *Agent) runLocal(ctx context.Context) error {
	a.log.Info("agent on one host (the store has no leases): controllers only", "node", a.node)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc, wait := a.startControllers(ctx)
	defer wait()
	close(a.ready)
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		return err
	}
}

// startControllers runs each controller in a goroutine; the channel gets the first failure, and wait
// waits for all of them to return (after ctx ends).
func (a *Agent) startControllers(ctx context.Context) (<-chan error, func()) {
	errc := make(chan error, len(a.cfg.Controllers))
	var wg sync.WaitGroup
	for _, c := range a.cfg.Controllers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.Run(ctx, a); err != nil && ctx.Err() == nil {
				errc <- fmt.Errorf("controller %s: %w", c.Name(), err)
			}
		}()
	}
	return errc, wg.Wait
}

// converged reports whether every network that spans nodes is joined here.
func (a *Agent) converged(ctx context.Context) bool {
	nets, err := a.m.Networks(ctx)
	if err != nil {
		return false
	}
	js, err := a.m.JoinedNetworks(ctx)
	if err != nil {
		return false
	}
	for _, n := range nets {
		if n.Scope == "global" && !slices.ContainsFunc(js, func(j *netmgr.Joined) bool { return j.ID == n.ID }) {
			return false
		}
	}
	return true
}

// syncNetworks joins every network that spans nodes and leaves every joined one that is gone.
// A change of the networks joins only what this agent has not joined (and published) yet; the periodic
// resync (repair) joins every network again, which repairs plumbing that vanished.
func (a *Agent) syncNetworks(ctx context.Context, repair bool) {
	nets, err := a.m.Networks(ctx)
	if err != nil {
		a.log.Warn("list networks (retrying)", "error", err)
		return
	}
	js, err := a.m.JoinedNetworks(ctx)
	if err != nil {
		a.log.Warn("list joined networks", "error", err)
		return
	}
	want := map[string]*netmgr.Network{}
	for _, n := range nets {
		if n.Scope == "global" {
			want[n.Name] = n
		}
	}
	for _, j := range js {
		if n, ok := want[j.Network]; ok && n.ID == j.ID {
			continue
		}
		// Deleted from the cluster (or deleted and made again under the same name): leave it.
		if err := a.m.LeaveNetwork(ctx, j.Network, true); err != nil {
			a.log.Warn("leave network", "network", j.Network, "error", err)
			continue
		}
		delete(a.joinedHere, j.ID)
		if _, ok := want[j.Network]; !ok {
			if err := a.member.ReleaseSubnets(ctx, j.Network); err != nil {
				a.log.Warn("release subnets", "network", j.Network, "error", err)
			}
		}
		a.log.Info("network left", "network", j.Network)
	}
	for _, n := range want {
		if !repair && a.joinedHere[n.ID] {
			continue
		}
		if err := a.join(ctx, n, js); err != nil {
			a.log.Warn("join network (retrying)", "network", n.Name, "error", err)
			continue
		}
		a.joinedHere[n.ID] = true
	}
}

// join leases the node's subnets of n and joins it (again: JoinNetwork is idempotent and repairs).
func (a *Agent) join(ctx context.Context, n *netmgr.Network, js []*netmgr.Joined) error {
	pools, err := Pools(n)
	if err != nil {
		return err
	}
	var hints []netip.Prefix
	for _, j := range js {
		if j.Network == n.Name {
			hints = j.View.Subnets
		}
	}
	subnets, err := a.member.LeaseSubnets(ctx, n.Name, pools, hints...)
	if err != nil {
		return err
	}
	view := drivers.NodeView{Node: a.node, Subnets: subnets, Underlay: a.cfg.Underlay}
	for _, sn := range subnets {
		view.Gateways = append(view.Gateways, sn.Masked().Addr().Next())
	}
	j, err := a.m.JoinNetwork(ctx, n.Name, view)
	if err != nil {
		return err
	}
	a.publishAttrs(ctx, n.Name, j.View.Attrs)
	return nil
}

// AttrPeerError is the attribute the agent adds to a network of its node record while SyncPeers
// fails for it: the error, which names the peers this node could not program and why (a
// routed-global peer off this node's underlay segment: routed.ErrOffSegment). `podctl node ls`
// prints it; it goes once SyncPeers succeeds. Peers' drivers never see it.
const AttrPeerError = "peer-error"

// publishAttrs publishes the network's attributes in the node record if they changed: what the
// driver's Join published, and the last SyncPeers error.
func (a *Agent) publishAttrs(ctx context.Context, network string, driverAttrs map[string]string) {
	want := maps.Clone(driverAttrs)
	if msg := a.peerErrs[network]; msg != "" {
		if want == nil {
			want = map[string]string{}
		}
		want[AttrPeerError] = msg
	}
	if maps.Equal(a.member.Node().Networks[network].Attrs, want) {
		return
	}
	if err := a.member.SetAttrs(ctx, network, want); err != nil {
		a.log.Warn("publish attributes (retrying)", "network", network, "error", err)
	}
}

// Pools are the node subnet pools of a network that spans nodes: its CIDRs, cut at the node prefix
// of its options (node-prefix for IPv4, default 24; node-prefix6 for IPv6, default 64).
func Pools(n *netmgr.Network) ([]ipam.SubnetPool, error) {
	var pools []ipam.SubnetPool
	for _, c := range n.Subnets {
		key, def := "node-prefix", 24
		if c.Addr().Is6() {
			key, def = "node-prefix6", 64
		}
		bits := def
		if v, ok := n.Options[key]; ok {
			b, err := strconv.Atoi(v)
			if err != nil {
				return nil, fmt.Errorf("%w: network %q: option %s=%q is not a prefix length", netmgr.ErrInvalid, n.Name, key, v)
			}
			bits = b
		}
		p, err := ipam.NewSubnetPool(c, bits)
		if err != nil {
			return nil, err
		}
		pools = append(pools, p)
	}
	return pools, nil
}

// syncPeers programs every joined network's peers from the live nodes.
func (a *Agent) syncPeers(ctx context.Context) {
	js, err := a.m.JoinedNetworks(ctx)
	if err != nil {
		a.log.Warn("list joined networks", "error", err)
		return
	}
	nodes := a.Nodes()
	for _, j := range js {
		var peers []drivers.NodeView
		for _, nd := range nodes {
			nn, ok := nd.Networks[j.Network]
			if nd.Name == a.node || !ok || len(nn.Subnets) == 0 {
				continue
			}
			if len(j.View.Attrs) > 0 && len(nn.Attrs) == 0 {
				// This network's driver publishes attributes (an overlay's VTEP MAC) and the peer has
				// not yet: it leased its subnet a moment before its join finished. Its next record
				// update brings it.
				continue
			}
			attrs := nn.Attrs
			if _, ok := attrs[AttrPeerError]; ok {
				attrs = maps.Clone(attrs)
				delete(attrs, AttrPeerError)
			}
			peers = append(peers, drivers.NodeView{Node: nd.Name, Subnets: nn.Subnets, Underlay: nd.Address, Attrs: attrs})
		}
		err := a.m.SyncPeers(ctx, j.Network, peers)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			a.log.Warn("sync peers (retrying)", "network", j.Network, "error", err)
			if a.peerErrs == nil {
				a.peerErrs = map[string]string{}
			}
			a.peerErrs[j.Network] = err.Error()
		} else {
			delete(a.peerErrs, j.Network)
		}
		a.publishAttrs(ctx, j.Network, j.View.Attrs)
	}
}

func nodeNames(ns []cluster.Node) []string {
	out := make([]string, len(ns))
	for i, n := range ns {
		out[i] = n.Name
	}
	return out
}

// watchKeys sends a signal (coalesced) once at the start and after every change under prefix
// (store.Follow: it survives compaction and store errors, retrying with a backoff).
func watchKeys(ctx context.Context, st store.Store, prefix string, log *slog.Logger) <-chan struct{} {
	out := make(chan struct{}, 1)
	go func() {
		err := store.Follow(ctx, st, prefix, func(store.Update) error {
			select {
			case out <- struct{}{}:
			default:
			}
			return nil
		}, store.FollowErrors(func(err error) { log.Warn("watch networks (retrying)", "error", err) }))
		if err != nil && ctx.Err() == nil {
			log.Error("watching networks ended", "error", err)
		}
	}()
	return out
}
