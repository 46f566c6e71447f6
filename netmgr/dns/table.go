package dns

import (
	"net/netip"
	"slices"
	"strings"

	mdns "github.com/miekg/dns"
)

// Service is one service name the server answers for, with its cluster IPs.
type Service struct {
	Name      string
	Namespace string // optional: adds NAME.NAMESPACE[.svc[.DOMAIN]]
	IPs       []netip.Addr
}

// Host is one sandbox as the server sees it: its name, its aliases, and its addresses per network.
type Host struct {
	Name    string
	Aliases []string
	// Addrs maps a network name to the sandbox's addresses on it.
	Addrs map[string][]netip.Addr
}

// Net is one network the server listens on.
type Net struct {
	Name     string
	Subnets  []netip.Prefix
	Gateways []netip.Addr // the listen addresses
	Internal bool         // no forwarding: an internal network's queries stay in it
	// Spans is set for a network that spans nodes (overlay, routed-global): in a cluster
	// (ClusterHosts) its sandboxes on every node resolve.
	Spans bool
}

// Snapshot is everything the server answers from at one moment.
type Snapshot struct {
	Nets     []Net
	Hosts    []Host
	Services []Service
}

// netTable is what one network's clients see.
type netTable struct {
	net   Net
	names map[string][]netip.Addr // lower-case FQDN -> addresses
	ptr   map[netip.Addr]string   // address -> FQDN
}

// table is an immutable lookup structure built from a Snapshot.
type table struct {
	nets   map[string]*netTable
	svc    map[string][]netip.Addr
	svcPtr map[netip.Addr]string
	domain string // lower-case, with the trailing dot: "cluster.local."
}

func fqdn(s string) string { return mdns.Fqdn(strings.ToLower(s)) }

func addUnique(m map[string][]netip.Addr, name string, addrs []netip.Addr) {
	for _, a := range addrs {
		if !slices.Contains(m[name], a) {
			m[name] = append(m[name], a)
		}
	}
}

func buildTable(s Snapshot, domain string) *table {
	t := &table{nets: map[string]*netTable{}, svc: map[string][]netip.Addr{}, svcPtr: map[netip.Addr]string{}, domain: fqdn(domain)}
	for _, n := range s.Nets {
		t.nets[n.Name] = &netTable{net: n, names: map[string][]netip.Addr{}, ptr: map[netip.Addr]string{}}
	}
	// Names first, aliases after, so a sandbox's own name wins a PTR and an alias never shadows a name.
	for pass := 0; pass < 2; pass++ {
		for _, h := range s.Hosts {
			for network, addrs := range h.Addrs {
				nt := t.nets[network]
				if nt == nil || len(addrs) == 0 {
					continue
				}
				names := []string{h.Name}
				if pass == 1 {
					names = h.Aliases
				}
				for _, name := range names {
					if !validLabel(name) {
						continue
					}
					f := fqdn(name)
					if pass == 1 {
						if _, taken := nt.names[f]; taken {
							continue
						}
					}
					addUnique(nt.names, f, addrs)
					// NAME.DOMAIN too: the pods' search path (svc.DOMAIN DOMAIN, ndots:5) finds it
					// there first, as Podman's NAME.dns.podman, without a forward.
					addUnique(nt.names, f+t.domain, addrs)
					for _, a := range addrs {
						if _, ok := nt.ptr[a]; !ok {
							nt.ptr[a] = f
						}
					}
				}
			}
		}
	}
	for _, sv := range s.Services {
		if sv.Name == "" || len(sv.IPs) == 0 {
			continue
		}
		base := strings.ToLower(sv.Name)
		if sv.Namespace != "" {
			base += "." + strings.ToLower(sv.Namespace)
		}
		long := base + ".svc." + t.domain
		for _, n := range []string{base + ".", base + ".svc.", long} {
			addUnique(t.svc, n, sv.IPs)
		}
		if sv.Namespace != "" {
			// The short name without a namespace too, as a pod in the same namespace would use it.
			addUnique(t.svc, fqdn(sv.Name), sv.IPs)
		}
		for _, a := range sv.IPs {
			if _, ok := t.svcPtr[a]; !ok {
				t.svcPtr[a] = long
			}
		}
	}
	return t
}

// validLabel reports whether name can be a DNS name (labels of letters, digits, '-' and '_', 63
// bytes at most each, 253 in all). netmgr's sandbox names allow '.', which makes several labels.
func validLabel(name string) bool {
	if name == "" || len(name) > 253 {
		return false
	}
	_, ok := mdns.IsDomainName(name)
	return ok
}
