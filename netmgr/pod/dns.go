package pod

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/netmgr/netmgr/netmgr"
)

// DNS policies of a pod, as Kubernetes names them.
const (
	// DNSClusterFirst (the default): the pod's network DNS server (netmgr/dns on the gateway of its
	// first network with DNS on), the cluster search domains and ndots:5, with DNSConfig added.
	DNSClusterFirst = "ClusterFirst"
	// DNSDefault: the host's resolv.conf, with DNSConfig added.
	DNSDefault = "Default"
	// DNSNone: only DNSConfig (which must name a nameserver).
	DNSNone = "None"
)

// DNSConfig is a pod's own resolver settings (Kubernetes' dnsConfig).
type DNSConfig struct {
	Nameservers []netip.Addr `json:"nameservers,omitempty"`
	Searches    []string     `json:"searches,omitempty"`
	// Options are NAME or NAME:VALUE, as resolv.conf writes them.
	Options []string `json:"options,omitempty"`
}

// HostAlias is one more line of a pod's hosts file (Kubernetes' hostAliases).
type HostAlias struct {
	IP        netip.Addr `json:"ip"`
	Hostnames []string   `json:"hostnames"`
}

// WithDNSDomain sets the cluster domain of the pods' search path (default cluster.local).
func WithDNSDomain(d string) Option { return func(m *Manager) { m.domain = d } }

// WithHostResolvConf sets the host's resolver configuration that dnsPolicy Default and pods without
// a DNS-enabled network get (default /etc/resolv.conf).
func WithHostResolvConf(path string) Option { return func(m *Manager) { m.hostResolv = path } }

func (s *Spec) validateDNS() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", netmgr.ErrInvalid, fmt.Sprintf(format, a...))
	}
	switch s.DNSPolicy {
	case "", DNSClusterFirst, DNSDefault:
	case DNSNone:
		if s.DNSConfig == nil || len(s.DNSConfig.Nameservers) == 0 {
			return bad("dnsPolicy None needs dnsConfig with at least one nameserver")
		}
	default:
		return bad("dnsPolicy %q is not ClusterFirst, Default or None", s.DNSPolicy)
	}
	if c := s.DNSConfig; c != nil {
		if len(c.Nameservers) > 3 {
			return bad("dnsConfig: at most 3 nameservers (a resolver uses no more)")
		}
		for _, n := range c.Nameservers {
			if !n.IsValid() {
				return bad("dnsConfig: a nameserver is not an IP address")
			}
		}
		if len(c.Searches) > 32 {
			return bad("dnsConfig: at most 32 search domains")
		}
		for _, d := range append(slices.Clone(c.Searches), c.Options...) {
			if d == "" || strings.ContainsAny(d, " \t\r\n#;") {
				return bad("dnsConfig: %q cannot be written to resolv.conf", d)
			}
		}
	}
	for _, h := range s.HostAliases {
		if !h.IP.IsValid() {
			return bad("hostAliases: an entry has no IP address")
		}
		if len(h.Hostnames) == 0 {
			return bad("hostAliases: %s has no hostnames", h.IP)
		}
		for _, n := range h.Hostnames {
			if n == "" || strings.ContainsAny(n, " \t\r\n#") {
				return bad("hostAliases: hostname %q cannot be written to a hosts file", n)
			}
		}
	}
	return nil
}

// filesDir is where a pod's resolv.conf and hosts live (under the netmgr run dir: they go with a
// reboot, as the pod does).
func (m *Manager) filesDir(pod string) string {
	return filepath.Join(m.nm.RunDir(), "pods", pod)
}

// writeDNSFiles writes the pod's resolv.conf and hosts and returns their paths.
func (m *Manager) writeDNSFiles(ctx context.Context, spec *Spec, sb *netmgr.Sandbox, hostname string) (resolv, hosts string, err error) {
	rc, err := m.resolvConf(ctx, spec, sb)
	if err != nil {
		return "", "", err
	}
	dir := m.filesDir(spec.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	resolv, hosts = filepath.Join(dir, "resolv.conf"), filepath.Join(dir, "hosts")
	if err := os.WriteFile(resolv, rc, 0o644); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(hosts, HostsFile(spec, sb, hostname), 0o644); err != nil {
		return "", "", err
	}
	return resolv, hosts, nil
}

// resolvConf builds the pod's resolv.conf for its DNS policy.
func (m *Manager) resolvConf(ctx context.Context, spec *Spec, sb *netmgr.Sandbox) ([]byte, error) {
	var ns []netip.Addr
	var search, opts []string
	policy := spec.DNSPolicy
	if policy == "" {
		policy = DNSClusterFirst
	}
	if policy == DNSClusterFirst {
		if gw, ok := m.clusterDNS(ctx, sb); ok {
			ns = []netip.Addr{gw}
			search = []string{"svc." + m.domain, m.domain}
			opts = []string{"ndots:5"}
		} else {
			policy = DNSDefault // no DNS server on the pod's networks: the host's resolvers, as Docker does
		}
	}
	if policy == DNSDefault {
		hns, hsearch, hopts := readResolvConf(m.hostResolv)
		ns, search, opts = hns, hsearch, hopts
	}
	if c := spec.DNSConfig; c != nil {
		for _, n := range c.Nameservers {
			if !slices.Contains(ns, n) {
				ns = append(ns, n)
			}
		}
		for _, s := range c.Searches {
			if !slices.Contains(search, s) {
				search = append(search, s)
			}
		}
		for _, o := range c.Options {
			name, _, _ := strings.Cut(o, ":")
			opts = slices.DeleteFunc(opts, func(x string) bool { n, _, _ := strings.Cut(x, ":"); return n == name })
			opts = append(opts, o)
		}
	}
	return ResolvConf(ns, search, opts), nil
}

// clusterDNS is the gateway of the pod's first network whose DNS server is on.
func (m *Manager) clusterDNS(ctx context.Context, sb *netmgr.Sandbox) (netip.Addr, bool) {
	for _, a := range sb.Attachments {
		n, err := m.nm.Network(ctx, a.Network)
		if err != nil || !dnsOn(n.Options) {
			continue
		}
		for _, gw := range a.Gateways {
			if gw.IsValid() && (gw.Is4() || !a.IPv4.IsValid()) {
				return gw, true
			}
		}
	}
	return netip.Addr{}, false
}

// dnsOn is netmgr/dns.DNSEnabled (not imported: the pod facade does not link the server).
func dnsOn(opts map[string]string) bool {
	v, ok := opts["dns"]
	if !ok {
		return true
	}
	on, err := strconv.ParseBool(v)
	return err != nil || on
}

// ResolvConf renders a resolv.conf.
func ResolvConf(nameservers []netip.Addr, search, options []string) []byte {
	var b bytes.Buffer
	b.WriteString("# written by netmgr for this pod\n")
	for _, n := range nameservers {
		fmt.Fprintf(&b, "nameserver %s\n", n)
	}
	if len(search) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(search, " "))
	}
	if len(options) > 0 {
		fmt.Fprintf(&b, "options %s\n", strings.Join(options, " "))
	}
	return b.Bytes()
}

// readResolvConf reads the nameservers, search domains and options of a resolv.conf; a missing
// file gives none.
func readResolvConf(path string) (ns []netip.Addr, search, opts []string) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, nil
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "nameserver":
			if a, err := netip.ParseAddr(f[1]); err == nil && !slices.Contains(ns, a) {
				ns = append(ns, a)
			}
		case "search", "domain":
			search = f[1:]
		case "options":
			opts = append(opts, f[1:]...)
		}
	}
	return ns, search, opts
}

// HostsFile renders a pod's hosts file: localhost, the pod's addresses with its hostname (and its
// name, when they differ), and the spec's hostAliases.
func HostsFile(spec *Spec, sb *netmgr.Sandbox, hostname string) []byte {
	var b bytes.Buffer
	b.WriteString("# written by netmgr for this pod\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	names := hostname
	if spec.Name != hostname {
		names += " " + spec.Name
	}
	if sb != nil {
		for _, a := range sb.Attachments {
			for _, p := range []netip.Prefix{a.IPv4, a.IPv6} {
				if p.IsValid() {
					fmt.Fprintf(&b, "%s\t%s\n", p.Addr(), names)
				}
			}
		}
	}
	if len(spec.HostAliases) > 0 {
		b.WriteString("# hostAliases\n")
		for _, h := range spec.HostAliases {
			fmt.Fprintf(&b, "%s\t%s\n", h.IP, strings.Join(h.Hostnames, " "))
		}
	}
	return b.Bytes()
}
