package bgp

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/netmgr/netmgr/netmgr/store"
)

// KeyStatus is where each node's speaker publishes its sessions: bgp/NODE, with the node's lease
// (gone with the node).
const KeyStatus = "bgp/"

// Status is one node's speaker as `podctl node ls` shows it.
type Status struct {
	Node     string       `json:"node"`
	ASN      uint32       `json:"asn"`
	RouterID netip.Addr   `json:"router_id"`
	Peers    []PeerStatus `json:"peers"`
	// Advertised are the prefixes the node originates.
	Advertised []netip.Prefix `json:"advertised"`
	// Installed are the learned routes the speaker put into the kernel.
	Installed int `json:"installed"`
	// Warning is trouble beside the sessions (no port to listen on, no IPv6 next hop).
	Warning string `json:"warning,omitempty"`
}

// PeerStatus is one session.
type PeerStatus struct {
	Peer  Peer   `json:"peer"`
	State string `json:"state"` // idle, connect, active, opensent, openconfirm, established
	// Since is when the session entered State.
	Since time.Time `json:"since"`
	// Advertised and Received count prefixes (all families) while established.
	Advertised uint64 `json:"advertised"`
	Received   uint64 `json:"received"`
	// Error is why the session is not established: the last connection error or the peer's
	// NOTIFICATION, while retrying.
	Error string `json:"error,omitempty"`
}

func (p PeerStatus) String() string {
	s := fmt.Sprintf("peer %s %s", p.Peer, p.State)
	if p.State == "established" {
		s += fmt.Sprintf(", %d routes advertised, %d received", p.Advertised, p.Received)
	}
	if !p.Since.IsZero() {
		s += fmt.Sprintf(" (for %s)", time.Since(p.Since).Round(time.Second))
	}
	if p.Error != "" {
		s += ": " + p.Error + " (retrying)"
	}
	return s
}

// Lines are the status as text lines, one per session (and one for a warning).
func (s Status) Lines() []string {
	var out []string
	for _, p := range s.Peers {
		out = append(out, fmt.Sprintf("%s, bgp AS%d: %s", s.Node, s.ASN, p))
	}
	if s.Warning != "" {
		out = append(out, fmt.Sprintf("%s, bgp: %s", s.Node, s.Warning))
	}
	return out
}

// ListStatus reads every node's published speaker status.
func ListStatus(ctx context.Context, st store.Store) ([]Status, error) {
	kvs, _, err := st.List(ctx, KeyStatus)
	if err != nil {
		return nil, err
	}
	var out []Status
	for _, kv := range kvs {
		var s Status
		if err := json.Unmarshal(kv.Value, &s); err != nil || !strings.HasPrefix(kv.Key, KeyStatus) {
			continue
		}
		out = append(out, s)
	}
	return out, nil
}
