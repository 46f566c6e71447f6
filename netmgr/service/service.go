// Package service is netmgr's service model: a service is a name, a label selector, ports, a type
// (ClusterIP or NodePort), a cluster IP from the store's service CIDR and, for NodePort, a node port
// per service port; its endpoints are the labelled sandboxes of every node. Services live in the
// store (bolt on one host, etcd in a cluster) under services/NAME; their cluster IPs and node ports
// are claimed by keys of their own (serviceips/IP, nodeports/PROTO/PORT) in the transaction that
// records the service, so two concurrent creates never share one. Endpoints are published by each
// node's agent under endpoints/NODE/SANDBOX, with the node's lease in a cluster, so that they vanish
// with the node.
//
// The controller that programs the kernel is in service/proxy; the read API here (List, Get, Watch)
// is for every other consumer (DNS).
package service

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/ipam"
	"github.com/netmgr/netmgr/netmgr/store"
)

// Sentinel errors are netmgr's: test with errors.Is.
var (
	ErrInvalid  = netmgr.ErrInvalid
	ErrExists   = netmgr.ErrExists
	ErrNotFound = netmgr.ErrNotFound
	ErrFull     = netmgr.ErrFull
)

// Types and policies.
const (
	ClusterIP = "ClusterIP"
	NodePort  = "NodePort"

	AffinityNone     = ""
	AffinityClientIP = "ClientIP"

	PolicyCluster = "Cluster"
	PolicyLocal   = "Local"

	TCP = "tcp"
	UDP = "udp"
)

// Store keys.
const (
	KeyServices  = "services/"   // services/NAME -> Service
	KeyEndpoints = "endpoints/"  // endpoints/NODE/SANDBOX -> Endpoint
	keyIPs       = "serviceips/" // serviceips/IP -> NAME
	keyNodePorts = "nodeports/"  // nodeports/PROTO/PORT -> NAME
	keyConfig    = "serviceconfig"
)

// Defaults, as in Kubernetes.
var (
	DefaultCIDR                   = netip.MustParsePrefix("10.96.0.0/12")
	NodePortMin            uint16 = 30000
	NodePortMax            uint16 = 32767
	DefaultAffinityTimeout        = 3 * time.Hour
)

// Port is one port of a service.
type Port struct {
	Port       uint16 `json:"port"`
	TargetPort uint16 `json:"target_port"`
	Protocol   string `json:"protocol"`
	NodePort   uint16 `json:"node_port"`
}

func (p Port) String() string {
	s := fmt.Sprintf("%d:%d/%s", p.Port, p.TargetPort, p.Protocol)
	if p.NodePort != 0 {
		s += fmt.Sprintf(" (node port %d)", p.NodePort)
	}
	return s
}

// Service is one service as recorded.
type Service struct {
	Name                  string            `json:"name"`
	Type                  string            `json:"type"`
	ClusterIP             netip.Addr        `json:"cluster_ip"`
	Ports                 []Port            `json:"ports"`
	Selector              map[string]string `json:"selector"`
	SessionAffinity       string            `json:"session_affinity,omitempty"`
	AffinityTimeout       time.Duration     `json:"affinity_timeout,omitempty"`
	ExternalTrafficPolicy string            `json:"external_traffic_policy"`
	Created               time.Time         `json:"created"`
}

// Matches reports whether labels satisfy the service's selector (every pair present).
func (s *Service) Matches(labels map[string]string) bool {
	if len(s.Selector) == 0 {
		return false
	}
	for k, v := range s.Selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// Spec is what Create takes. Zero values take the defaults: type ClusterIP, a free cluster IP, a free
// node port per port of a NodePort service, protocol tcp, target port = port, policy Cluster.
type Spec struct {
	Name                  string
	Selector              map[string]string
	Ports                 []Port
	Type                  string
	ClusterIP             netip.Addr
	SessionAffinity       string
	AffinityTimeout       time.Duration
	ExternalTrafficPolicy string
}

// Config is the store's service configuration.
type Config struct {
	CIDRs []netip.Prefix `json:"cidrs"` // at most one per family
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
}

// ParsePort parses PORT[:TARGETPORT][/tcp|udp].
func ParsePort(s string) (Port, error) {
	p := Port{Protocol: TCP}
	rest := s
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		p.Protocol = strings.ToLower(rest[i+1:])
		rest = rest[:i]
		if p.Protocol != TCP && p.Protocol != UDP {
			return Port{}, invalid("port %q: protocol %q must be tcp or udp", s, p.Protocol)
		}
	}
	num := func(v string) (uint16, error) {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 65535 {
			return 0, invalid("port %q: %q must be a number from 1 to 65535", s, v)
		}
		return uint16(n), nil
	}
	a, b, two := strings.Cut(rest, ":")
	var err error
	if p.Port, err = num(a); err != nil {
		return Port{}, err
	}
	p.TargetPort = p.Port
	if two {
		if p.TargetPort, err = num(b); err != nil {
			return Port{}, err
		}
	}
	return p, nil
}

// ParseSelector parses K=V[,K=V...].
func ParseSelector(s string) (map[string]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, invalid("selector is empty: give K=V[,K=V]")
	}
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" || v == "" || strings.ContainsAny(k+v, " \t=") {
			return nil, invalid("selector %q: %q is not K=V", s, kv)
		}
		out[k] = v
	}
	return out, nil
}

// checkName validates a service name: 1-63 of [a-z0-9-], starting with a letter, not ending with
// '-' (a DNS label, as Kubernetes requires, so that DNS can serve it).
func checkName(name string) error {
	ok := len(name) > 0 && len(name) <= 63 && name[0] >= 'a' && name[0] <= 'z' && name[len(name)-1] != '-'
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			ok = false
		}
	}
	if !ok {
		return invalid("service name %q must be 1-63 characters of lower-case letters, digits and '-', starting with a letter and not ending with '-'", name)
	}
	return nil
}

// Registry reads and writes services in a store.
type Registry struct {
	st store.Store
}

// New returns the registry of st.
func New(st store.Store) *Registry { return &Registry{st: st} }

// Store is the registry's store.
func (r *Registry) Store() store.Store { return r.st }

// Config returns the store's service configuration (the default CIDR when none is set).
func (r *Registry) Config(ctx context.Context) (Config, error) {
	kv, err := r.st.Get(ctx, keyConfig)
	if errors.Is(err, store.ErrNotFound) {
		return Config{CIDRs: []netip.Prefix{DefaultCIDR}}, nil
	}
	if err != nil {
		return Config{}, err
	}
	var c Config
	if err := json.Unmarshal(kv.Value, &c); err != nil {
		return Config{}, fmt.Errorf("service configuration: %w", err)
	}
	return c, nil
}

// SetCIDRs sets the service CIDRs of the store (at most one IPv4 and one IPv6). It is refused while
// a service has a cluster IP outside them.
func (r *Registry) SetCIDRs(ctx context.Context, cidrs ...netip.Prefix) error {
	var v4, v6 int
	for i, c := range cidrs {
		if !c.IsValid() || c.Bits() > c.Addr().BitLen()-2 {
			return invalid("service CIDR %s: must be a prefix of at least 4 addresses", c)
		}
		cidrs[i] = c.Masked()
		if c.Addr().Is4() {
			v4++
		} else {
			v6++
		}
	}
	if len(cidrs) == 0 || v4 > 1 || v6 > 1 {
		return invalid("give one service CIDR per family (got %v)", cidrs)
	}
	svcs, err := r.List(ctx)
	if err != nil {
		return err
	}
	for _, s := range svcs {
		if !slices.ContainsFunc(cidrs, func(p netip.Prefix) bool { return p.Contains(s.ClusterIP) }) {
			return invalid("service %q has cluster IP %s, outside %v: remove it first", s.Name, s.ClusterIP, cidrs)
		}
	}
	b, _ := json.Marshal(Config{CIDRs: cidrs})
	return r.st.Txn(ctx, nil, []store.Op{store.Put(keyConfig, b)})
}

func decode(kv store.KV) (*Service, error) {
	var s Service
	if err := json.Unmarshal(kv.Value, &s); err != nil {
		return nil, fmt.Errorf("service record %s: %w", kv.Key, err)
	}
	return &s, nil
}

// Get returns one service.
func (r *Registry) Get(ctx context.Context, name string) (*Service, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	kv, err := r.st.Get(ctx, KeyServices+name)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: no service named %q", ErrNotFound, name)
	}
	if err != nil {
		return nil, err
	}
	return decode(kv)
}

// List returns every service, sorted by name.
func (r *Registry) List(ctx context.Context) ([]*Service, error) {
	kvs, _, err := r.st.List(ctx, KeyServices)
	if err != nil {
		return nil, err
	}
	out := make([]*Service, 0, len(kvs))
	for _, kv := range kvs {
		s, err := decode(kv)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// Watch calls fn with every service, sorted by name, at the start and after each change, until ctx
// ends or fn fails (store.Follow: it survives compaction and store errors).
func Watch(ctx context.Context, st store.Store, fn func([]*Service) error) error {
	return store.Follow(ctx, st, KeyServices, func(u store.Update) error {
		out := make([]*Service, 0, len(u.State))
		for _, kv := range u.State {
			s, err := decode(kv)
			if err != nil {
				continue
			}
			out = append(out, s)
		}
		slices.SortFunc(out, func(a, b *Service) int { return cmp.Compare(a.Name, b.Name) })
		return fn(out)
	})
}

// Create validates spec and records the service with its cluster IP and node ports, all claimed in
// one transaction. Nothing is changed when it fails.
func (r *Registry) Create(ctx context.Context, spec Spec) (*Service, error) {
	s, err := r.create(ctx, spec)
	if err != nil {
		return nil, fmt.Errorf("create service %q: %w", spec.Name, err)
	}
	return s, nil
}

func (r *Registry) create(ctx context.Context, spec Spec) (*Service, error) {
	s, err := normalize(spec)
	if err != nil {
		return nil, err
	}
	cfg, err := r.Config(ctx)
	if err != nil {
		return nil, err
	}
	if s.ClusterIP.IsValid() {
		if !slices.ContainsFunc(cfg.CIDRs, func(p netip.Prefix) bool { return usable(p, s.ClusterIP) }) {
			return nil, invalid("cluster IP %s is not a host address of the service CIDR %v", s.ClusterIP, cfg.CIDRs)
		}
	}
	for attempt := 0; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if _, err := r.st.Get(ctx, KeyServices+s.Name); err == nil {
			return nil, fmt.Errorf("%w: a service named %q exists", ErrExists, s.Name)
		} else if !errors.Is(err, store.ErrNotFound) {
			return nil, err
		}
		try := *s
		try.Ports = slices.Clone(s.Ports)
		cmps := []store.Cmp{store.Absent(KeyServices + s.Name)}
		var ops []store.Op
		ip, err := r.chooseIP(ctx, cfg, s.ClusterIP)
		if err != nil {
			return nil, err
		}
		try.ClusterIP = ip
		cmps = append(cmps, store.Absent(keyIPs+ip.String()))
		ops = append(ops, store.Put(keyIPs+ip.String(), []byte(s.Name)))
		if s.Type == NodePort {
			if err := r.chooseNodePorts(ctx, &try); err != nil {
				return nil, err
			}
			for _, p := range try.Ports {
				k := nodePortKey(p.Protocol, p.NodePort)
				cmps = append(cmps, store.Absent(k))
				ops = append(ops, store.Put(k, []byte(s.Name)))
			}
		}
		try.Created = time.Now().UTC()
		b, err := json.Marshal(&try)
		if err != nil {
			return nil, err
		}
		ops = append(ops, store.Put(KeyServices+s.Name, b))
		err = r.st.Txn(ctx, cmps, ops)
		if err == nil {
			return &try, nil
		}
		if !errors.Is(err, store.ErrConflict) || attempt > 50 {
			return nil, err
		}
		// Someone took the name, the address or a port meanwhile: read again and choose again (a
		// given address or port that is now taken is refused by the next round's checks).
		time.Sleep(time.Duration(rand.IntN(5)) * time.Millisecond)
	}
}

func nodePortKey(proto string, port uint16) string {
	return fmt.Sprintf("%s%s/%d", keyNodePorts, proto, port)
}

// usable reports whether a is a host address of p (not its network address, nor its IPv4
// broadcast address).
func usable(p netip.Prefix, a netip.Addr) bool {
	pool, err := ipam.NewPool(p, netip.Addr{})
	if err != nil {
		return false
	}
	return pool.Check(a, func(netip.Addr) bool { return false }) == nil || a == pool.Gateway
}

func (r *Registry) chooseIP(ctx context.Context, cfg Config, want netip.Addr) (netip.Addr, error) {
	if want.IsValid() {
		kv, err := r.st.Get(ctx, keyIPs+want.String())
		if err == nil {
			return netip.Addr{}, fmt.Errorf("%w: cluster IP %s is taken by service %q", ErrExists, want, kv.Value)
		}
		if !errors.Is(err, store.ErrNotFound) {
			return netip.Addr{}, err
		}
		return want, nil
	}
	var cidr netip.Prefix
	for _, c := range cfg.CIDRs {
		if c.Addr().Is4() || !cidr.IsValid() {
			cidr = c
		}
		if c.Addr().Is4() {
			break
		}
	}
	kvs, _, err := r.st.List(ctx, keyIPs)
	if err != nil {
		return netip.Addr{}, err
	}
	taken := make(map[netip.Addr]bool, len(kvs))
	for _, kv := range kvs {
		if a, err := netip.ParseAddr(strings.TrimPrefix(kv.Key, keyIPs)); err == nil {
			taken[a] = true
		}
	}
	// The first host address (10.96.0.1) is the pool's "gateway": Kubernetes keeps it for its own
	// API service, and so it stays free here unless asked for.
	pool, err := ipam.NewPool(cidr, netip.Addr{})
	if err != nil {
		return netip.Addr{}, err
	}
	// Start at a random place, as Kubernetes does, so that concurrent creates rarely collide.
	cursor := randomAddr(cidr)
	a, err := pool.Next(cursor, func(a netip.Addr) bool { return taken[a] })
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%w: no free cluster IP in %s", ErrFull, cidr)
	}
	return a, nil
}

func randomAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	host := p.Addr().BitLen() - p.Bits()
	for i := len(b) - 1; i >= 0 && host > 0; i-- {
		n := min(host, 8)
		b[i] |= byte(rand.IntN(1<<n)) & byte(1<<n-1)
		host -= n
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func (r *Registry) chooseNodePorts(ctx context.Context, s *Service) error {
	kvs, _, err := r.st.List(ctx, keyNodePorts)
	if err != nil {
		return err
	}
	taken := map[string]string{}
	for _, kv := range kvs {
		taken[kv.Key] = string(kv.Value)
	}
	for i := range s.Ports {
		p := &s.Ports[i]
		if p.NodePort != 0 {
			if who, ok := taken[nodePortKey(p.Protocol, p.NodePort)]; ok {
				return fmt.Errorf("%w: node port %d/%s is taken by service %q", ErrExists, p.NodePort, p.Protocol, who)
			}
			taken[nodePortKey(p.Protocol, p.NodePort)] = s.Name
			continue
		}
		n := int(NodePortMax-NodePortMin) + 1
		start := rand.IntN(n)
		for j := 0; j < n; j++ {
			port := NodePortMin + uint16((start+j)%n)
			k := nodePortKey(p.Protocol, port)
			if _, ok := taken[k]; !ok {
				p.NodePort = port
				taken[k] = s.Name
				break
			}
		}
		if p.NodePort == 0 {
			return fmt.Errorf("%w: no free node port in %d-%d for %s", ErrFull, NodePortMin, NodePortMax, p.Protocol)
		}
	}
	return nil
}

// normalize validates spec and fills the defaults; it reads nothing.
func normalize(spec Spec) (*Service, error) {
	if err := checkName(spec.Name); err != nil {
		return nil, err
	}
	if len(spec.Selector) == 0 {
		return nil, invalid("a service needs a selector (--selector K=V[,K=V])")
	}
	for k, v := range spec.Selector {
		if k == "" || v == "" || strings.ContainsAny(k+v, " \t=,") {
			return nil, invalid("selector %q=%q is not K=V", k, v)
		}
	}
	s := &Service{Name: spec.Name, Selector: spec.Selector, Type: cmp.Or(spec.Type, ClusterIP), ClusterIP: spec.ClusterIP,
		SessionAffinity: spec.SessionAffinity, AffinityTimeout: spec.AffinityTimeout, ExternalTrafficPolicy: cmp.Or(spec.ExternalTrafficPolicy, PolicyCluster)}
	switch strings.ToLower(s.Type) {
	case "clusterip":
		s.Type = ClusterIP
	case "nodeport":
		s.Type = NodePort
	default:
		return nil, invalid("type %q must be ClusterIP or NodePort", spec.Type)
	}
	switch strings.ToLower(s.SessionAffinity) {
	case "", "none":
		s.SessionAffinity = AffinityNone
		if s.AffinityTimeout != 0 {
			return nil, invalid("an affinity timeout needs session affinity ClientIP")
		}
	case "clientip":
		s.SessionAffinity = AffinityClientIP
		if s.AffinityTimeout == 0 {
			s.AffinityTimeout = DefaultAffinityTimeout
		}
		if s.AffinityTimeout < time.Second || s.AffinityTimeout > 24*time.Hour {
			return nil, invalid("affinity timeout %v must be from 1s to 24h", s.AffinityTimeout)
		}
	default:
		return nil, invalid("session affinity %q must be ClientIP or None", spec.SessionAffinity)
	}
	switch strings.ToLower(s.ExternalTrafficPolicy) {
	case "cluster":
		s.ExternalTrafficPolicy = PolicyCluster
	case "local":
		s.ExternalTrafficPolicy = PolicyLocal
	default:
		return nil, invalid("external traffic policy %q must be Cluster or Local", spec.ExternalTrafficPolicy)
	}
	if len(spec.Ports) == 0 {
		return nil, invalid("a service needs at least one port (--port PORT[:TARGETPORT][/tcp|udp])")
	}
	seen := map[string]bool{}
	for _, p := range spec.Ports {
		p.Protocol = cmp.Or(strings.ToLower(p.Protocol), TCP)
		if p.Protocol != TCP && p.Protocol != UDP {
			return nil, invalid("port %d: protocol %q must be tcp or udp", p.Port, p.Protocol)
		}
		if p.Port == 0 {
			return nil, invalid("port 0: a port must be from 1 to 65535")
		}
		if p.TargetPort == 0 {
			p.TargetPort = p.Port
		}
		k := fmt.Sprintf("%d/%s", p.Port, p.Protocol)
		if seen[k] {
			return nil, invalid("port %s is given twice", k)
		}
		seen[k] = true
		if p.NodePort != 0 {
			if s.Type != NodePort {
				return nil, invalid("node port %d: only a NodePort service has node ports (--type NodePort)", p.NodePort)
			}
			if p.NodePort < NodePortMin || p.NodePort > NodePortMax {
				return nil, invalid("node port %d is outside the node port range %d-%d", p.NodePort, NodePortMin, NodePortMax)
			}
			nk := fmt.Sprintf("node %d/%s", p.NodePort, p.Protocol)
			if seen[nk] {
				return nil, invalid("node port %d/%s is given twice", p.NodePort, p.Protocol)
			}
			seen[nk] = true
		}
		s.Ports = append(s.Ports, p)
	}
	if s.ExternalTrafficPolicy == PolicyLocal && s.Type != NodePort {
		return nil, invalid("external traffic policy Local needs type NodePort")
	}
	return s, nil
}

// Delete removes a service and frees its cluster IP and node ports.
func (r *Registry) Delete(ctx context.Context, name string) error {
	if err := checkName(name); err != nil {
		return fmt.Errorf("delete service %q: %w", name, err)
	}
	for {
		kv, err := r.st.Get(ctx, KeyServices+name)
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("delete service %q: %w: no service named %q", name, ErrNotFound, name)
		}
		if err != nil {
			return err
		}
		s, err := decode(kv)
		if err != nil {
			return err
		}
		ops := []store.Op{store.Del(KeyServices + name), store.Del(keyIPs + s.ClusterIP.String())}
		for _, p := range s.Ports {
			if p.NodePort != 0 {
				ops = append(ops, store.Del(nodePortKey(p.Protocol, p.NodePort)))
			}
		}
		err = r.st.Txn(ctx, []store.Cmp{{Key: kv.Key, Rev: kv.Rev}}, ops)
		if !errors.Is(err, store.ErrConflict) {
			return err
		}
	}
}
