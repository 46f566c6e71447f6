package service

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/store"
)

// Endpoint is one labelled sandbox of one node, as its node's agent publishes it.
type Endpoint struct {
	Sandbox string            `json:"sandbox"`
	Node    string            `json:"node"`
	Labels  map[string]string `json:"labels"`
	Addrs   []EndpointAddr    `json:"addrs"`
}

// EndpointAddr is one address of an endpoint, on one network. Global networks span nodes (every
// node routes to them); a local network's addresses are reachable only from the endpoint's node.
type EndpointAddr struct {
	Network string     `json:"network"`
	IP      netip.Addr `json:"ip"`
	Global  bool       `json:"global,omitempty"`
}

// Addr returns the endpoint's address that a proxy on node reaches it by: on its own node any
// address, elsewhere one on a network that spans nodes; IPv4 first. ok is false if there is none.
func (e *Endpoint) Addr(node string, v6 bool) (netip.Addr, bool) {
	for _, a := range e.Addrs {
		if a.IP.Is6() != v6 || (!a.Global && e.Node != node) {
			continue
		}
		return a.IP, true
	}
	return netip.Addr{}, false
}

// EndpointKey is the store key of a node's endpoint.
func EndpointKey(node, sandbox string) string { return KeyEndpoints + node + "/" + sandbox }

// DecodeEndpoint decodes an endpoint record.
func DecodeEndpoint(b []byte) (*Endpoint, error) {
	if e, ok := decodeEndpointFast(b); ok {
		return e, nil
	}
	var e Endpoint
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, fmt.Errorf("endpoint record: %w", err)
	}
	return &e, nil
}

// Endpoints returns every published endpoint of the store, sorted by node and sandbox.
func (r *Registry) Endpoints(ctx context.Context) ([]*Endpoint, error) {
	kvs, _, err := r.st.List(ctx, KeyEndpoints)
	if err != nil {
		return nil, err
	}
	var out []*Endpoint
	for _, kv := range kvs {
		if e, err := DecodeEndpoint(kv.Value); err == nil {
			out = append(out, e)
		}
	}
	return out, nil
}

// Publisher publishes one node's labelled sandboxes as endpoints: Sync puts what changed and
// deletes what went, with the node's lease when there is one (so that they vanish with the node).
// It is not safe for concurrent use.
type Publisher struct {
	st     store.Store
	node   string
	global func(network string) bool
	lease  store.LeaseID
	// published is what the store holds for this node, by key, as last written or read.
	published map[string][]byte
}

// NewPublisher returns the publisher of node's endpoints into st. global reports whether a network
// spans nodes (nil: none does).
func NewPublisher(st store.Store, node string, global func(network string) bool) *Publisher {
	if global == nil {
		global = func(string) bool { return false }
	}
	return &Publisher{st: st, node: node, global: global}
}

// LabelReady is the sandbox label a pod's readiness probes keep (netmgr/pod's LabelReady): a sandbox
// whose LabelReady is "false" is not an endpoint until it turns ready; one without it (no readiness
// probe) always is, as in Kubernetes.
const LabelReady = "netmgr.io/ready"

// EndpointOf is a sandbox's endpoint, or nil if the sandbox has no labels, no address, or is not
// ready (LabelReady).
func EndpointOf(node string, sb *netmgr.Sandbox, global func(string) bool) *Endpoint {
	if len(sb.Labels) == 0 || sb.Labels[LabelReady] == "false" {
		return nil
	}
	e := &Endpoint{Sandbox: sb.Name, Node: node, Labels: sb.Labels}
	for _, a := range sb.Attachments {
		for _, p := range []netip.Prefix{a.IPv4, a.IPv6} {
			if p.IsValid() {
				e.Addrs = append(e.Addrs, EndpointAddr{Network: a.Network, IP: p.Addr(), Global: global(a.Network)})
			}
		}
	}
	if len(e.Addrs) == 0 {
		return nil
	}
	return e
}

// Sync makes the store hold exactly the endpoints of sbs for this node, with lease (store.NoLease
// on a store without leases). A lease other than the last one's (the node's record was registered
// again) re-puts every endpoint.
func (p *Publisher) Sync(ctx context.Context, sbs []*netmgr.Sandbox, lease store.LeaseID) error {
	prefix := KeyEndpoints + p.node + "/"
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
			// The old lease's keys are gone or going: write everything again.
			for k := range p.published {
				p.published[k] = nil
			}
		}
		p.lease = lease
	}
	want := map[string][]byte{}
	for _, sb := range sbs {
		if e := EndpointOf(p.node, sb, p.global); e != nil {
			b, err := json.Marshal(e)
			if err != nil {
				return err
			}
			want[EndpointKey(p.node, sb.Name)] = b
		}
	}
	var ops []store.Op
	for k, v := range want {
		if old, ok := p.published[k]; !ok || old == nil || !bytes.Equal(old, v) {
			if lease != store.NoLease {
				ops = append(ops, store.PutWithLease(k, v, lease))
			} else {
				ops = append(ops, store.Put(k, v))
			}
		}
	}
	for k := range p.published {
		if _, ok := want[k]; !ok && strings.HasPrefix(k, prefix) {
			ops = append(ops, store.Del(k))
		}
	}
	if len(ops) == 0 {
		return nil
	}
	slices.SortFunc(ops, func(a, b store.Op) int { return strings.Compare(a.Key, b.Key) })
	// Bounded transactions: etcd takes at most 128 ops in one by default.
	for len(ops) > 0 {
		n := min(len(ops), 100)
		if err := p.st.Txn(ctx, nil, ops[:n]); err != nil {
			p.published = nil // re-read next time
			return fmt.Errorf("publish endpoints of node %s: %w", p.node, err)
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
