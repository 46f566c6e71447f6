package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/netmgr/netmgr/drivers"
	"github.com/netmgr/netmgr/netmgr/store"
)

// Key layout (see doc.go).
const (
	KeyNodes   = "cluster/nodes/"   // cluster/nodes/NAME -> Node (JSON), put with the node's lease
	KeySubnets = "cluster/subnets/" // cluster/subnets/NETWORK/ADDR-BITS -> subnet lease (JSON), no lease
)

// Errors, the drivers' (and so netmgr's) sentinels: test them with errors.Is.
var (
	// ErrInvalid: a bad node name, address, option or pool.
	ErrInvalid = drivers.ErrInvalid
	// ErrExists: the node name is alive, registered by another agent.
	ErrExists = drivers.ErrExists
	// ErrFull: a network's cluster CIDR has no node subnet left.
	ErrFull = drivers.ErrFull
	// ErrNotFound: no such node (no record and no subnet lease).
	ErrNotFound = drivers.ErrNotFound
)

// DefaultTTL is the node record's lease TTL: a node whose agent stops disappears from its peers this
// long after its last keep-alive.
const DefaultTTL = 10 * time.Second

// DefaultGrace is how long a dead node's subnet stays its own (measured from the lease's last renewal)
// before another node may take it over: 24 hours, flannel's subnet lease. A node that comes back
// within it (a reboot, a repair, an upgrade, a long etcd outage) gets its subnet back, so pods left
// running keep their addresses. Reclaiming happens only when a network's CIDR has no never-leased
// subnet left, so a long grace costs nothing until the pool is full; then `podctl node rm` (RemoveNode)
// frees a dead node's subnets at once.
const DefaultGrace = 24 * time.Hour

// Node is a node's record: cluster/nodes/NAME while its agent keeps the node's lease alive.
type Node struct {
	Name string `json:"name"`
	// Address is the underlay address other nodes reach this node by (an overlay's VTEP address).
	Address netip.Addr `json:"address"`
	// Networks are what the node carries per cluster network: its leased subnets and the driver's
	// attributes (e.g. an overlay's VTEP MAC).
	Networks map[string]NodeNetwork `json:"networks,omitempty"`
	// Ready is set by the agent once the node's data path is programmed.
	Ready bool `json:"ready"`
	// Identity is the token of the agent that registered the node (see WithIdentity).
	Identity string `json:"identity,omitempty"`
}

// NodeNetwork is a node's part of one cluster network.
type NodeNetwork struct {
	Subnets []netip.Prefix    `json:"subnets,omitempty"` // one per family, leased from the network's CIDR
	Attrs   map[string]string `json:"attrs,omitempty"`   // published by the driver, e.g. "vtep-mac"
}

// Subnets returns the node's subnets of every network, sorted by network name then as leased.
func (n Node) Subnets() []netip.Prefix {
	var names []string
	for k := range n.Networks {
		names = append(names, k)
	}
	slices.Sort(names)
	var out []netip.Prefix
	for _, k := range names {
		out = append(out, n.Networks[k].Subnets...)
	}
	return out
}

// Equal compares two records by value.
func (n Node) Equal(o Node) bool { return bytes.Equal(n.encode(), o.encode()) }

// Clone returns a deep copy.
func (n Node) Clone() Node {
	c := n
	if n.Networks != nil {
		c.Networks = make(map[string]NodeNetwork, len(n.Networks))
		for k, v := range n.Networks {
			nv := NodeNetwork{Subnets: slices.Clone(v.Subnets)}
			if v.Attrs != nil {
				nv.Attrs = make(map[string]string, len(v.Attrs))
				for ak, av := range v.Attrs {
					nv.Attrs[ak] = av
				}
			}
			c.Networks[k] = nv
		}
	}
	return c
}

func (n Node) encode() []byte {
	b, err := json.Marshal(n)
	if err != nil {
		panic(err) // a Node always encodes
	}
	return b
}

func decodeNode(kv store.KV) (Node, error) {
	var n Node
	if err := json.Unmarshal(kv.Value, &n); err != nil {
		return Node{}, fmt.Errorf("node record %s: %w", kv.Key, err)
	}
	if want := strings.TrimPrefix(kv.Key, KeyNodes); n.Name != want {
		return Node{}, fmt.Errorf("node record %s names node %q", kv.Key, n.Name)
	}
	return n, nil
}

var nameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)

// CheckName refuses a node or network name that cannot be a key component: 1-63 letters, digits,
// '_', '.', '-', starting with a letter or digit (netmgr's rule for names).
func CheckName(kind, name string) error {
	if len(name) == 0 || len(name) > 63 || !nameRE.MatchString(name) {
		return fmt.Errorf("%w: %s name %q must be 1-63 characters of letters, digits, '_', '.', '-', starting with a letter or digit", ErrInvalid, kind, name)
	}
	return nil
}

// GetNode returns the live record of a node, or ErrNotFound.
func GetNode(ctx context.Context, st store.Store, name string) (Node, error) {
	if err := CheckName("node", name); err != nil {
		return Node{}, err
	}
	kv, err := st.Get(ctx, KeyNodes+name)
	if errors.Is(err, store.ErrNotFound) {
		return Node{}, fmt.Errorf("%w: node %q is not alive (no record)", ErrNotFound, name)
	}
	if err != nil {
		return Node{}, err
	}
	return decodeNode(kv)
}

// ListNodes returns the live nodes sorted by name, and the revision they were read at. Records that do
// not decode are skipped and logged (log may be nil).
func ListNodes(ctx context.Context, st store.Store, log *slog.Logger) ([]Node, int64, error) {
	kvs, rev, err := st.List(ctx, KeyNodes)
	if err != nil {
		return nil, 0, err
	}
	return decodeNodes(kvs, logger(log)), rev, nil
}

func decodeNodes(kvs []store.KV, log *slog.Logger) []Node {
	out := make([]Node, 0, len(kvs))
	for _, kv := range kvs {
		n, err := decodeNode(kv)
		if err != nil {
			log.Warn("cluster: skipping a node record", "key", kv.Key, "err", err)
			continue
		}
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b Node) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func logger(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}

// backoff is a capped exponential delay with jitter, for retries against a store that fails.
type backoff struct {
	min, max, cur time.Duration
}

func (b *backoff) next() time.Duration {
	if b.cur < b.min {
		b.cur = b.min
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	// jitter: 75%..125%, so that many nodes do not retry in step
	return b.cur*3/4 + time.Duration(rand.Int64N(int64(b.cur/2)+1))
}

func (b *backoff) reset() { b.cur = 0 }

// sleep waits d or until ctx ends; false when ctx ended.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
