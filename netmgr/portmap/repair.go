package portmap

import (
	"net/netip"
	"strconv"
	"strings"

	"github.com/netmgr/netmgr/netmgr/firewall"
	"github.com/netmgr/netmgr/netmgr/store"
)

// The decisions of repair. The caller lists the firewall's elements and the port keys before the
// sandbox records, so that anything created meanwhile is not mistaken for a leftover, and deletes a
// key with a compare on the revision it listed.

// HeldKeys returns the holder and guard keys that the given sandboxes' records name.
func HeldKeys(sandboxes ...[]Record) map[string]bool {
	held := map[string]bool{}
	for _, ports := range sandboxes {
		for _, p := range ports {
			held[p.HolderKey()] = true
			held[GuardKey(p.Protocol, p.HostPort)] = true
		}
	}
	return held
}

func isGuard(key string) bool  { return strings.Count(key, "/") == 2 }
func isHolder(key string) bool { return strings.Count(key, "/") == 3 }

// Orphans returns the holder keys of kvs (a List of KeyPrefix) that held does not name and whose
// owner (the key's value) is not busy: an operation in flight holds keys its record may not name yet.
func Orphans(kvs []store.KV, held map[string]bool, busy func(owner string) bool) []store.KV {
	var out []store.KV
	for _, kv := range kvs {
		if held[kv.Key] || busy(string(kv.Value)) || isGuard(kv.Key) {
			continue // a guard stays while any key under it stays: see EmptyGuards
		}
		out = append(out, kv)
	}
	return out
}

// EmptyGuards returns the guard keys of kvs that no holder key of kvs is under and held does not name.
func EmptyGuards(kvs []store.KV, held map[string]bool) []store.KV {
	hasHolder := map[string]bool{}
	for _, kv := range kvs {
		if isHolder(kv.Key) {
			hasHolder[kv.Key[:strings.LastIndexByte(kv.Key, '/')]] = true
		}
	}
	var out []store.KV
	for _, kv := range kvs {
		if isGuard(kv.Key) && !hasHolder[kv.Key] && !held[kv.Key] {
			out = append(out, kv)
		}
	}
	return out
}

// FirewallPorts turns a sandbox's port records into firewall ports, one per target family.
func FirewallPorts(owner string, ports []Record) []firewall.Port {
	var out []firewall.Port
	for _, p := range ports {
		for _, t := range []netip.Addr{p.Target4, p.Target6} {
			if t.IsValid() {
				out = append(out, firewall.Port{
					Protocol: p.Protocol, HostIP: p.HostIP, HostPort: p.HostPort,
					Target: netip.AddrPortFrom(t, p.ContainerPort), Owner: owner,
				})
			}
		}
	}
	return out
}

// ID identifies a firewall port by what the firewall matches and where it forwards to (not its owner).
func ID(p firewall.Port) string {
	host := "*"
	if p.HostIP.IsValid() && !p.HostIP.IsUnspecified() {
		host = p.HostIP.String()
	}
	return p.Protocol + "|" + host + "|" + strconv.Itoa(int(p.HostPort)) + "|" + p.Target.String()
}

// Diff is the firewall's ports against the ports the records want.
type Diff struct {
	Stale   []firewall.Port            // in the firewall, wanted by no record
	Missing map[string][]firewall.Port // owner -> its wanted ports that the firewall lacks
	Wanted  bool                       // some record wants a port
}

// Compare compares have (the firewall's ports) with want (each owner's FirewallPorts).
func Compare(have []firewall.Port, want map[string][]firewall.Port) Diff {
	d := Diff{Missing: map[string][]firewall.Port{}}
	wanted := map[string]bool{}
	for _, ps := range want {
		for _, p := range ps {
			wanted[ID(p)] = true
		}
	}
	d.Wanted = len(wanted) > 0
	present := map[string]bool{}
	for _, p := range have {
		present[ID(p)] = true
		if !wanted[ID(p)] {
			d.Stale = append(d.Stale, p)
		}
	}
	for owner, ps := range want {
		for _, p := range ps {
			if !present[ID(p)] {
				d.Missing[owner] = append(d.Missing[owner], p)
			}
		}
	}
	return d
}

// Still returns those of ports that the owner's current records still want (a re-read under its lock).
func Still(ports []firewall.Port, owner string, current []Record) []firewall.Port {
	cur := map[string]bool{}
	for _, p := range FirewallPorts(owner, current) {
		cur[ID(p)] = true
	}
	var out []firewall.Port
	for _, p := range ports {
		if cur[ID(p)] {
			out = append(out, p)
		}
	}
	return out
}
