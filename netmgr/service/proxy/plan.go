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

// elem is one element of a fixed map or set; verdict "" with drop false is a plain set element.
type elem struct {
	set   string
	key   string // the key's bytes
	kind  expr.VerdictKind
	chain string
}

func (e elem) id() string { return e.set + "\x00" + e.key }

// chainPlan is one chain of a service and its rules.
type chainPlan struct {
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

// svcPlan is everything one service puts in the table.
type svcPlan struct {
	elems  map[string]elem
	chains []chainPlan // endpoint chains first: the ones that jump come after their targets
	sets   map[string]time.Duration
	udp    []udpFlow
}

func (p *svcPlan) chain(name string, rules ...rule) {
	c := chainPlan{name: name, rules: rules}
	for _, r := range rules {
		c.sig += r.String() + ";"
	}
	p.chains = append(p.chains, c)
}

func (p *svcPlan) add(e elem) { p.elems[e.id()] = e }

// plan computes what service s puts in the table on node, given its backends.
func plan(s *service.Service, bs []backend) *svcPlan {
	p := &svcPlan{elems: map[string]elem{}, sets: map[string]time.Duration{}}
	if !s.ClusterIP.Is4() {
		return p // IPv6 services are not programmed yet
	}
	slices.SortFunc(bs, func(a, b backend) int {
		return cmp.Or(a.ip.Compare(b.ip), cmp.Compare(a.name, b.name))
	})
	bs = slices.CompactFunc(bs, func(a, b backend) bool { return a.ip == b.ip })
	p.add(elem{set: setClusterIPs, key: string(s.ClusterIP.AsSlice())})
	aff := s.SessionAffinity == service.AffinityClientIP
	for _, port := range s.Ports {
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
			if port.Protocol == service.UDP {
				p.udp = append(p.udp, udpFlow{dst: s.ClusterIP, port: port.Port, endpoint: b.ip})
				if port.NodePort != 0 {
					p.udp = append(p.udp, udpFlow{port: port.NodePort, endpoint: b.ip})
				}
			}
		}
		ipKey := string(keyAddrProtoPort(s.ClusterIP, port.Protocol, port.Port))
		if len(epChains) > 0 {
			p.chain(svcChain, append(checks, rule{kind: "lb", chains: epChains})...)
			p.add(elem{set: mapServiceIPs, key: ipKey, kind: expr.VerdictGoto, chain: svcChain})
		} else {
			p.add(elem{set: mapNoEPServices, key: ipKey, kind: expr.VerdictGoto, chain: chainReject})
		}
		if port.NodePort == 0 {
			continue
		}
		npKey := string(keyProtoPort(port.Protocol, port.NodePort))
		switch {
		case s.ExternalTrafficPolicy == service.PolicyLocal && len(localChains) > 0:
			// Only this node's endpoints, and no masquerade: the backend sees the client's address.
			loc := "loc-" + base
			p.chain(loc, append(localChecks, rule{kind: "lb", chains: localChains})...)
			p.add(elem{set: mapNodePorts, key: npKey, kind: expr.VerdictGoto, chain: loc})
		case s.ExternalTrafficPolicy == service.PolicyLocal:
			// No local endpoint: drop, as kube-proxy does, so that the client (or a load balancer's
			// health check) goes to a node that has one.
			p.add(elem{set: mapNoEPNodePort, key: npKey, kind: expr.VerdictDrop})
		case len(epChains) > 0:
			ext := "ext-" + base
			p.chain(ext, rule{kind: "markmasq"}, rule{kind: "goto", chain: svcChain})
			p.add(elem{set: mapNodePorts, key: npKey, kind: expr.VerdictGoto, chain: ext})
		default:
			p.add(elem{set: mapNoEPNodePort, key: npKey, kind: expr.VerdictGoto, chain: chainReject})
		}
	}
	return p
}
