package dns

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/netmgr/netmgr/netmgr/store"
)

// KeyHosts is the cluster store prefix of the DNS records of sandboxes on networks that span nodes:
// dns/hosts/NODE/SANDBOX -> HostRecord, put by each node's DNS controller with the node's lease, so
// that a node's records vanish with it.
const KeyHosts = "dns/hosts/"

// HostKey is the store key of a node's sandbox record.
func HostKey(node, sandbox string) string { return KeyHosts + node + "/" + sandbox }

// HostRecord is one sandbox of one node as the other nodes' DNS servers see it: its name, aliases
// and its addresses on the networks that span nodes.
type HostRecord struct {
	Node    string                  `json:"node"`
	Name    string                  `json:"name"`
	Aliases []string                `json:"aliases,omitempty"`
	Addrs   map[string][]netip.Addr `json:"addrs"`
}

// ClusterHosts is a HostSource (and Notifier) for a node of a cluster: it answers from a local
// source (this node's networks and sandboxes, ManagerSource) merged with the records the other
// nodes publish of their sandboxes on networks that span nodes (Net.Spans), and publishes this node's
// records in turn. Each read of the local source (the server's, every Poll) is handed to the
// publisher, which writes what changed with the node's lease; the other nodes' records are followed
// (store.Follow) and a change makes the server re-read at once.
type ClusterHosts struct {
	local HostSource
	st    store.Store
	node  string
	lease func() store.LeaseID
	log   *slog.Logger

	changed chan struct{}
	pub     chan []Host // the latest local hosts on spanning networks, for the publisher

	mu     sync.Mutex
	remote map[string]HostRecord // by key; other nodes' only
}

// NewClusterHosts starts following the other nodes' records in st and publishing node's (with the
// lease lease returns; store.NoLease: none yet, publish later) until ctx ends.
func NewClusterHosts(ctx context.Context, local HostSource, st store.Store, node string, lease func() store.LeaseID, log *slog.Logger) *ClusterHosts {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &ClusterHosts{local: local, st: st, node: node, lease: lease, log: log,
		changed: make(chan struct{}, 1), pub: make(chan []Host, 1), remote: map[string]HostRecord{}}
	go c.follow(ctx)
	go c.publish(ctx)
	return c
}

// Changed implements Notifier.
func (c *ClusterHosts) Changed() <-chan struct{} { return c.changed }

// Hosts implements HostSource: the local networks and hosts, and the other nodes' hosts on the
// networks here that span nodes.
func (c *ClusterHosts) Hosts(ctx context.Context) ([]Net, []Host, error) {
	nets, hosts, err := c.local.Hosts(ctx)
	if err != nil {
		return nil, nil, err
	}
	spans := map[string]bool{}
	for _, n := range nets {
		if n.Spans {
			spans[n.Name] = true
		}
	}
	// Hand this node's records to the publisher (latest wins; it never blocks the server).
	mine := spanning(hosts, spans)
	for sent := false; !sent; {
		select {
		case c.pub <- mine:
			sent = true
		default:
			select {
			case <-c.pub: // an older one the publisher has not taken yet
			default:
			}
		}
	}

	c.mu.Lock()
	keys := make([]string, 0, len(c.remote))
	for k := range c.remote {
		keys = append(keys, k)
	}
	slices.Sort(keys) // a stable order, so that an unchanged view is an unchanged Snapshot
	for _, k := range keys {
		r := c.remote[k]
		h := Host{Name: r.Name, Aliases: r.Aliases, Addrs: map[string][]netip.Addr{}}
		for network, addrs := range r.Addrs {
			if spans[network] {
				h.Addrs[network] = addrs
			}
		}
		if len(h.Addrs) > 0 {
			hosts = append(hosts, h)
		}
	}
	c.mu.Unlock()
	return nets, hosts, nil
}

// spanning is hosts cut to their addresses on the networks in spans (and those left with none
// dropped).
func spanning(hosts []Host, spans map[string]bool) []Host {
	var out []Host
	for _, h := range hosts {
		o := Host{Name: h.Name, Aliases: h.Aliases, Addrs: map[string][]netip.Addr{}}
		for network, addrs := range h.Addrs {
			if spans[network] && len(addrs) > 0 {
				o.Addrs[network] = addrs
			}
		}
		if len(o.Addrs) > 0 {
			out = append(out, o)
		}
	}
	return out
}

func (c *ClusterHosts) poke() {
	select {
	case c.changed <- struct{}{}:
	default:
	}
}

// follow keeps c.remote in step with the other nodes' records.
func (c *ClusterHosts) follow(ctx context.Context) {
	own := KeyHosts + c.node + "/"
	err := store.Follow(ctx, c.st, KeyHosts, func(u store.Update) error {
		next := map[string]HostRecord{}
		for k, kv := range u.State {
			if strings.HasPrefix(k, own) {
				continue // the local source is this node's truth
			}
			var r HostRecord
			if err := json.Unmarshal(kv.Value, &r); err != nil || r.Name == "" {
				continue
			}
			next[k] = r
		}
		c.mu.Lock()
		c.remote = next
		c.mu.Unlock()
		c.poke()
		return nil
	}, store.FollowErrors(func(err error) { c.log.Debug("dns: follow cluster names (retrying)", "error", err) }))
	if err != nil && ctx.Err() == nil {
		c.log.Warn("dns: following cluster names ended", "error", err)
	}
}

// publish writes this node's records as the server reads them, until ctx ends.
func (c *ClusterHosts) publish(ctx context.Context) {
	p := &hostPublisher{st: c.st, node: c.node}
	relist := time.NewTicker(30 * time.Second)
	defer relist.Stop()
	var last []Host
	have, failing := false, false
	for {
		select {
		case <-ctx.Done():
			return
		case last = <-c.pub:
			have = true
		case <-relist.C:
			p.published = nil // re-read what the store holds now and then
		}
		lease := c.lease()
		if !have || lease == store.NoLease {
			// Nothing read yet (publishing nothing would delete an earlier run's records), or not
			// registered (yet, or again): nothing would vanish with the node.
			continue
		}
		err := p.sync(ctx, last, lease)
		if err != nil && ctx.Err() == nil && !failing {
			c.log.Warn("dns: publish this node's names (retrying)", "error", err)
		}
		failing = err != nil
	}
}

// hostPublisher makes the store hold exactly one node's records (as service.Publisher does for
// endpoints).
type hostPublisher struct {
	st        store.Store
	node      string
	lease     store.LeaseID
	published map[string][]byte // what the store holds for this node, by key, as last written or read
}

func (p *hostPublisher) sync(ctx context.Context, hosts []Host, lease store.LeaseID) error {
	prefix := KeyHosts + p.node + "/"
	if p.published == nil || lease != p.lease {
		kvs, _, err := p.st.List(ctx, prefix)
		if err != nil {
			return err
		}
		p.published = map[string][]byte{}
		for _, kv := range kvs {
			p.published[kv.Key] = kv.Value
		}
		if lease != p.lease {
			for k := range p.published {
				p.published[k] = nil // the old lease's keys are gone or going: put them again
			}
		}
		p.lease = lease
	}
	want := map[string][]byte{}
	for _, h := range hosts {
		b, err := json.Marshal(HostRecord{Node: p.node, Name: h.Name, Aliases: h.Aliases, Addrs: h.Addrs})
		if err != nil {
			return err
		}
		want[HostKey(p.node, h.Name)] = b
	}
	var ops []store.Op
	for k, v := range want {
		if old, ok := p.published[k]; !ok || old == nil || !bytes.Equal(old, v) {
			ops = append(ops, store.PutWithLease(k, v, lease))
		}
	}
	for k := range p.published {
		if _, ok := want[k]; !ok {
			ops = append(ops, store.Del(k))
		}
	}
	slices.SortFunc(ops, func(a, b store.Op) int { return strings.Compare(a.Key, b.Key) })
	for len(ops) > 0 { // etcd takes at most 128 ops in one transaction by default
		n := min(len(ops), 100)
		if err := p.st.Txn(ctx, nil, ops[:n]); err != nil {
			p.published = nil
			return fmt.Errorf("publish DNS names of node %s: %w", p.node, err)
		}
		for _, op := range ops[:n] {
			if op.Delete {
				delete(p.published, op.Key)
			} else {
				p.published[op.Key] = op.Value
			}
		}
		ops = ops[n:]
	}
	return nil
}
