package proxy

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/google/nftables/expr"

	"github.com/netmgr/netmgr/netmgr/service"
)

// backend is one endpoint of a service as this node reaches it.
type backend struct {
	ip    netip.Addr
	local bool
	name  string // node/sandbox, for a stable order
}

// elem is one element of a fixed set (key only), data map (data) or verdict map (kind, chain).
type elem struct {
	v6    bool // in the ip6 table
	set   string
	key   string // the key's bytes
	kind  expr.VerdictKind
	chain string
	data  string // a data map's value
}

func (e elem) id() string {
	if e.v6 {
		return "6\x00" + e.set + "\x00" + e.key
	}
	return e.set + "\x00" + e.key
}

// chainPlan is one chain of a service and its rules.
type chainPlan struct {
	v6    bool
	name  string
	rules []rule
	sig   string
}

// udpFlow is a UDP destination of a service (cluster IP or node port) and one endpoint behind it: when
// the endpoint goes, the conntrack entries of that pair go too.
type udpFlow struct {
	dst      netip.Addr // the cluster IP, or invalid for a node port (any local address)
	port     uint16
	endpoint netip.Addr
}

// svcPlan is everything one service puts in the table of its cluster IP's family.
type svcPlan struct {
	v6     bool
	elems  map[string]elem
	chains []chainPlan // endpoint chains first: the ones that jump come after their targets
	sets   map[string]time.Duration
	udp    []udpFlow
}

func (p *svcPlan) chain(name string, rules ...rule) {
	c := chainPlan{v6: p.v6, name: name, rules: rules}
	for _, r := range rules {
		c.sig += r.String() + ";"
	}
	p.chains = append(p.chains, c)
}

func (p *svcPlan) add(e elem) {
	e.v6 = p.v6
	p.elems[e.id()] = e
}

// plan computes what service s puts in the table on node, given its backends: map elements only,
// unless it has ClientIP affinity or a port with more than maxMapped backends (then chains, see
// rules.go).
func plan(s *service.Service, bs []backend) *svcPlan {
	p := &svcPlan{v6: s.ClusterIP.Is6(), elems: map[string]elem{}, sets: map[string]time.Duration{}}
	if !s.ClusterIP.IsValid() {
		return p
	}
	slices.SortFunc(bs, func(a, b backend) int {
		return cmp.Or(a.ip.Compare(b.ip), cmp.Compare(a.name, b.name))
	})
	bs = slices.CompactFunc(bs, func(a, b backend) bool { return a.ip == b.ip })
	var local []backend
	for _, b := range bs {
		if b.local {
			local = append(local, b)
		}
	}
	p.add(elem{set: setClusterIPs, key: string(s.ClusterIP.AsSlice())})
	chained := s.SessionAffinity == service.AffinityClientIP || len(bs) > maxMapped
	for _, port := range s.Ports {
		ipKey := string(keyAddrProtoPort(s.ClusterIP, port.Protocol, port.Port))
		npKey := string(keyProtoPort(port.Protocol, port.NodePort))
		for _, b := range bs {
			if port.Protocol == service.UDP {
				p.udp = append(p.udp, udpFlow{dst: s.ClusterIP, port: port.Port, endpoint: b.ip})
				if port.NodePort != 0 {
					p.udp = append(p.udp, udpFlow{port: port.NodePort, endpoint: b.ip})
				}
			}
		}
		if len(bs) == 0 {
			p.add(elem{set: setNoEndpoints, key: ipKey})
		}
		if port.NodePort != 0 {
			switch {
			case s.ExternalTrafficPolicy == service.PolicyLocal && len(local) == 0:
				// No local endpoint: drop, as kube-proxy does, so that the client (or a load
				// balancer's health check) goes to a node that has one.
				p.add(elem{set: setNPDrop, key: npKey})
			case len(bs) == 0:
				p.add(elem{set: setNPReject, key: npKey})
			}
		}
		if len(bs) == 0 {
			continue
		}
		if chained {
			p.chainPort(s, port, bs, ipKey, npKey)
			continue
		}
		p.add(elem{set: fmt.Sprintf("%s%d", setSizePrefix, len(bs)), key: ipKey})
		for i, b := range bs {
			p.add(elem{set: mapBackends, key: ipKey + string(slotKey(i)), data: string(addrPortData(b.ip, port.TargetPort))})
			if b.local { // only a pod of this node can reach itself through this node
				p.add(elem{set: setHairpin, key: string(b.ip.AsSlice()) + string(b.ip.AsSlice())})
			}
		}
		if port.NodePort == 0 {
			continue
		}
		np := bs
		if s.ExternalTrafficPolicy == service.PolicyLocal {
			np = local // and no masquerade: the backend sees the client's address
		} else {
			p.add(elem{set: setNPMasq, key: npKey})
		}
		if len(np) == 0 {
			continue
		}
		p.add(elem{set: fmt.Sprintf("%s%d", setNPSizePrefix, len(np)), key: npKey})
		for i, b := range np {
			p.add(elem{set: mapNPBackends, key: npKey + string(slotKey(i)), data: string(addrPortData(b.ip, port.TargetPort))})
		}
	}
	return p
}

// chainPort adds the chained form of one port with backends (kube-proxy's layout).
func (p *svcPlan) chainPort(s *service.Service, port service.Port, bs []backend, ipKey, npKey string) {
	aff := s.SessionAffinity == service.AffinityClientIP
	base := fmt.Sprintf("%s/%s/%d", s.Name, port.Protocol, port.Port)
	svcChain := "svc-" + base
	var epChains, localChains []string
	var checks, localChecks []rule
	for _, b := range bs {
		suffix := fmt.Sprintf("%s__%s/%d", base, b.ip, port.TargetPort)
		ep := "ep-" + suffix
		rules := []rule{{kind: "hairpin", ip: b.ip}}
		if aff {
			set := "aff-" + suffix
			p.sets[set] = s.AffinityTimeout
			rules = append(rules, rule{kind: "affupdate", set: set, timeout: s.AffinityTimeout})
			checks = append(checks, rule{kind: "affcheck", set: set, chain: ep})
			if b.local {
				localChecks = append(localChecks, rule{kind: "affcheck", set: set, chain: ep})
			}
		}
		rules = append(rules, rule{kind: "dnat", ip: b.ip, port: port.TargetPort, proto: port.Protocol})
		p.chain(ep, rules...)
		epChains = append(epChains, ep)
		if b.local {
			localChains = append(localChains, ep)
		}
	}
	p.chain(svcChain, append(checks, rule{kind: "lb", chains: epChains})...)
	p.add(elem{set: mapServiceIPs, key: ipKey, kind: expr.VerdictGoto, chain: svcChain})
	if port.NodePort == 0 {
		return
	}
	switch {
	case s.ExternalTrafficPolicy == service.PolicyLocal && len(localChains) > 0:
		loc := "loc-" + base
		p.chain(loc, append(localChecks, rule{kind: "lb", chains: localChains})...)
		p.add(elem{set: mapNodePorts, key: npKey, kind: expr.VerdictGoto, chain: loc})
	case s.ExternalTrafficPolicy != service.PolicyLocal:
		ext := "ext-" + base
		p.chain(ext, rule{kind: "markmasq"}, rule{kind: "goto", chain: svcChain})
		p.add(elem{set: mapNodePorts, key: npKey, kind: expr.VerdictGoto, chain: ext})
	}
}
