package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"reflect"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	mdns "github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/sandbox"
)

// OptDNS is the network option that turns the server off for a network (`--opt dns=false`).
const OptDNS = "dns"

// DefaultDomain is the cluster domain of service names.
const DefaultDomain = "cluster.local"

// ServiceSource gives the service names to answer for. The service controller implements it; a
// source that also implements Notifier is re-read as soon as it signals, otherwise every Poll.
type ServiceSource interface {
	Services(ctx context.Context) ([]Service, error)
}

// HostSource gives the networks to listen on and the sandboxes on them. The default reads the
// Manager's records (ManagerSource).
type HostSource interface {
	Hosts(ctx context.Context) ([]Net, []Host, error)
}

// Notifier is implemented by sources that can tell when they may have changed: a receive on the
// channel makes the server re-read every source at once.
type Notifier interface {
	Changed() <-chan struct{}
}

// Config configures a Server.
type Config struct {
	// Manager is this node's Manager: its networks and sandboxes (unless Hosts is set) and its host
	// namespace (unless HostNetNS is set).
	Manager *netmgr.Manager
	// Hosts overrides where networks and sandboxes come from.
	Hosts HostSource
	// Services, if set, gives the service names.
	Services ServiceSource
	// HostNetNS is the namespace to listen and to reach the upstreams in; default the Manager's.
	HostNetNS string
	// Domain is the cluster domain (default cluster.local).
	Domain string
	// Upstreams are the resolvers to forward to; empty: the nameservers of ResolvConf, re-read when
	// the file changes.
	Upstreams []netip.AddrPort
	// ResolvConf is the host's resolver configuration (default /etc/resolv.conf).
	ResolvConf string
	// UpstreamTimeout bounds one try at one upstream (default 1 s); ForwardBudget bounds all tries
	// of one query (default 1.5 s), after which the client gets SERVFAIL.
	UpstreamTimeout, ForwardBudget time.Duration
	// TTL of local answers in seconds (default 5).
	TTL uint32
	// Poll is how often the sources are re-read (default 200 ms).
	Poll time.Duration
	// Port to listen on (default 53).
	Port   int
	Logger *slog.Logger
}

// maxForwards bounds the UDP queries being forwarded at once; more get SERVFAIL at once.
const maxForwards = 1024

// Server is the DNS server. Make it with New, run it with Run.
type Server struct {
	cfg   Config
	log   *slog.Logger
	hosts HostSource
	fwd   *forwarder
	tab   atomic.Pointer[table]

	mu        sync.Mutex
	listeners map[string]*listener // by network and address
	failed    map[string]bool      // binds that failed, logged once
	inflight  chan struct{}        // forwards under way over UDP (bounded)
	ns        *sandbox.NetNS
}

// New checks cfg. It touches nothing.
func New(cfg Config) (*Server, error) {
	if cfg.Manager == nil && (cfg.Hosts == nil || cfg.HostNetNS == "") {
		return nil, fmt.Errorf("%w: the DNS server needs a Manager (or a host source and a host namespace)", netmgr.ErrInvalid)
	}
	if cfg.Hosts == nil {
		cfg.Hosts = ManagerSource{M: cfg.Manager}
	}
	if cfg.HostNetNS == "" {
		cfg.HostNetNS = cfg.Manager.HostNetNS()
	}
	if cfg.Domain == "" {
		cfg.Domain = DefaultDomain
	}
	if _, ok := mdns.IsDomainName(cfg.Domain); !ok {
		return nil, fmt.Errorf("%w: DNS domain %q is not a domain name", netmgr.ErrInvalid, cfg.Domain)
	}
	if cfg.ResolvConf == "" {
		cfg.ResolvConf = "/etc/resolv.conf"
	}
	if cfg.UpstreamTimeout <= 0 {
		cfg.UpstreamTimeout = time.Second
	}
	if cfg.ForwardBudget <= 0 {
		cfg.ForwardBudget = 1500 * time.Millisecond
	}
	if cfg.TTL == 0 {
		cfg.TTL = 5
	}
	if cfg.Poll <= 0 {
		cfg.Poll = 200 * time.Millisecond
	}
	if cfg.Port == 0 {
		cfg.Port = 53
	}
	if cfg.Port < 0 || cfg.Port > 65535 {
		return nil, fmt.Errorf("%w: DNS port %d", netmgr.ErrInvalid, cfg.Port)
	}
	for _, u := range cfg.Upstreams {
		if !u.IsValid() || u.Port() == 0 {
			return nil, fmt.Errorf("%w: DNS upstream %v is not an address and port", netmgr.ErrInvalid, u)
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: cfg.Logger.With("component", "dns"), hosts: cfg.Hosts, listeners: map[string]*listener{}, failed: map[string]bool{},
		inflight: make(chan struct{}, maxForwards)}
	s.fwd = &forwarder{static: cfg.Upstreams, resolvConf: cfg.ResolvConf, timeout: cfg.UpstreamTimeout, budget: cfg.ForwardBudget,
		log: s.log, down: map[netip.AddrPort]time.Time{}, self: s.isListenAddr}
	s.tab.Store(buildTable(Snapshot{}, cfg.Domain))
	return s, nil
}

// ParseUpstream parses an upstream resolver: IP or IP:PORT (port 53 by default).
func ParseUpstream(s string) (netip.AddrPort, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.AddrPortFrom(a, 53), nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil || ap.Port() == 0 {
		return netip.AddrPort{}, fmt.Errorf("%w: DNS upstream %q is not IP or IP:PORT", netmgr.ErrInvalid, s)
	}
	return ap, nil
}

// Run serves until ctx ends, then closes every listener. It fails only if the host namespace cannot
// be opened; a listen address that cannot be bound yet is retried every Poll.
func (s *Server) Run(ctx context.Context) error {
	ns, err := sandbox.Open(s.cfg.HostNetNS)
	if err != nil {
		return fmt.Errorf("dns: open host namespace: %w", err)
	}
	defer ns.Close()
	s.mu.Lock()
	s.ns = ns
	s.mu.Unlock()
	s.fwd.ns = ns
	defer s.closeAll()

	var changed []<-chan struct{}
	for _, src := range []any{s.hosts, s.cfg.Services} {
		if n, ok := src.(Notifier); ok && n != nil {
			changed = append(changed, n.Changed())
		}
	}
	wake := make(chan struct{}, 1)
	for _, c := range changed {
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case _, ok := <-c:
					if !ok {
						return
					}
					select {
					case wake <- struct{}{}:
					default:
					}
				}
			}
		}()
	}
	tick := time.NewTicker(s.cfg.Poll)
	defer tick.Stop()
	var last *Snapshot
	failing := false
	for {
		snap, err := s.read(ctx)
		if err != nil && ctx.Err() == nil && !failing {
			// Once until it works again: a store that stays unreadable must not flood the log.
			s.log.Warn("read names (keeping the last answers, retrying)", "error", err)
		}
		failing = err != nil
		switch {
		case err != nil: // the last answers stay
		case last == nil || !reflect.DeepEqual(*last, snap):
			s.tab.Store(buildTable(snap, s.cfg.Domain))
			s.reconcile(snap.Nets)
			last = &snap
		default:
			s.reconcile(snap.Nets) // retry binds that failed
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case <-wake:
		}
	}
}

func (s *Server) read(ctx context.Context) (Snapshot, error) {
	nets, hosts, err := s.hosts.Hosts(ctx)
	if err != nil {
		return Snapshot{}, err
	}
	snap := Snapshot{Nets: nets, Hosts: hosts}
	if s.cfg.Services != nil {
		if snap.Services, err = s.cfg.Services.Services(ctx); err != nil {
			return Snapshot{}, fmt.Errorf("services: %w", err)
		}
	}
	return snap, nil
}

// Addrs returns the addresses the server listens on now (UDP and TCP both bound), by network.
func (s *Server) Addrs() map[string][]netip.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string][]netip.Addr{}
	for _, l := range s.listeners {
		out[l.net] = append(out[l.net], l.addr)
	}
	return out
}

// isListenAddr reports whether an upstream is this server itself (a host resolv.conf naming a
// network's gateway would make every forward a loop).
func (s *Server) isListenAddr(a netip.AddrPort) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.listeners {
		if l.addr == a.Addr().Unmap() && int(a.Port()) == s.cfg.Port {
			return true
		}
	}
	return false
}

// listener serves one network on one address.
type listener struct {
	s    *Server
	net  string
	addr netip.Addr
	udp  []net.PacketConn
	tcp  *mdns.Server
	wg   sync.WaitGroup // the UDP readers
}

func lkey(network string, a netip.Addr) string { return network + "|" + a.String() }

func (s *Server) reconcile(nets []Net) {
	s.mu.Lock()
	defer s.mu.Unlock()
	want := map[string]bool{}
	for _, n := range nets {
		for _, gw := range n.Gateways {
			if gw.IsValid() {
				want[lkey(n.Name, gw.Unmap())] = true
			}
		}
	}
	for k, l := range s.listeners {
		if !want[k] {
			l.close()
			delete(s.listeners, k)
			s.log.Info("stopped listening", "network", l.net, "addr", l.addr)
		}
	}
	for k := range s.failed {
		if !want[k] {
			delete(s.failed, k)
		}
	}
	for _, n := range nets {
		for _, gw := range n.Gateways {
			gw = gw.Unmap()
			k := lkey(n.Name, gw)
			if !gw.IsValid() || s.listeners[k] != nil {
				continue
			}
			l := &listener{s: s, net: n.Name, addr: gw}
			if err := l.open(s.ns, s.cfg.Port); err != nil {
				// The gateway may not be on a host interface (yet), or not at all (a macvlan
				// network's router): retried at every poll, logged once.
				if !s.failed[k] {
					s.log.Debug("cannot listen (retrying)", "network", n.Name, "addr", gw, "error", err)
				}
				s.failed[k] = true
				continue
			}
			delete(s.failed, k)
			s.listeners[k] = l
			s.log.Info("listening", "network", n.Name, "addr", netip.AddrPortFrom(gw, uint16(s.cfg.Port)))
		}
	}
}

func (s *Server) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, l := range s.listeners {
		l.close()
		delete(s.listeners, k)
	}
}

// open binds UDP and TCP on the address inside the host namespace and starts serving.
func (l *listener) open(ns *sandbox.NetNS, port int) error {
	hp := net.JoinHostPort(l.addr.String(), strconv.Itoa(port))
	var ln net.Listener
	// One UDP socket per CPU (SO_REUSEPORT; the kernel spreads clients over them), each read by a
	// goroutine of its own: one reader alone is the bottleneck with several clients.
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) }); err != nil {
			return err
		}
		return serr
	}}
	readers := min(max(runtime.GOMAXPROCS(0), 1), 4)
	var pcs []net.PacketConn
	err := ns.Do(func() error {
		for range readers {
			pc, err := lc.ListenPacket(context.Background(), "udp", hp)
			if err != nil {
				return err
			}
			pcs = append(pcs, pc)
		}
		var err error
		ln, err = net.Listen("tcp", hp)
		return err
	})
	if err != nil {
		for _, pc := range pcs {
			pc.Close()
		}
		return err
	}
	l.udp = pcs
	l.tcp = &mdns.Server{Listener: ln, Handler: l, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second, IdleTimeout: func() time.Duration { return 8 * time.Second }}
	started := make(chan struct{})
	l.tcp.NotifyStartedFunc = func() { close(started) }
	go func() {
		if err := l.tcp.ActivateAndServe(); err != nil && !errors.Is(err, net.ErrClosed) {
			l.s.log.Debug("serve ended", "network", l.net, "addr", l.addr, "error", err)
		}
	}()
	<-started
	for _, pc := range pcs {
		l.wg.Add(1)
		go l.serveUDP(pc.(*net.UDPConn))
	}
	return nil
}

func (l *listener) close() {
	_ = l.tcp.Shutdown()
	for _, pc := range l.udp {
		pc.Close()
	}
	l.wg.Wait()
}

// serveUDP answers the queries on one UDP socket: a local answer in this goroutine (no goroutine
// per query: that and the library's per-packet work were most of the cost), a forward in a
// goroutine of its own so that a slow upstream holds up nothing else.
// writeUDP sends one answer, or drops it when the socket cannot take it now (MSG_DONTWAIT): a client
// that does not read (a flood of garbage from one socket whose answers fill its buffer) must never
// make the listener wait, or it stalls for every client.
func writeUDP(pc *net.UDPConn, b []byte, to netip.AddrPort) {
	rc, err := pc.SyscallConn()
	if err != nil {
		return
	}
	var sa unix.Sockaddr
	if a := to.Addr(); a.Is4() {
		sa = &unix.SockaddrInet4{Port: int(to.Port()), Addr: a.As4()}
	} else {
		sa = &unix.SockaddrInet6{Port: int(to.Port()), Addr: a.As16()}
	}
	_ = rc.Write(func(fd uintptr) bool {
		_ = unix.Sendto(int(fd), b, unix.MSG_DONTWAIT, sa)
		return true // sent or dropped: never wait for the socket
	})
}

func (l *listener) serveUDP(pc *net.UDPConn) {
	defer l.wg.Done()
	buf := make([]byte, mdns.MaxMsgSize)
	out := make([]byte, 0, 4096)
	for {
		n, from, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		r := new(mdns.Msg)
		if err := r.Unpack(buf[:n]); err != nil || r.Response {
			// Unparseable: FORMERR when the header at least is there and asks something, as the
			// library's own server does; a response is never answered (no loops).
			var h mdns.Msg
			if n >= 12 && buf[2]&0x80 == 0 && h.Unpack(buf[:12]) == nil {
				m := reply(&h, mdns.RcodeFormatError)
				m.Question = nil
				if b, err := m.PackBuffer(out); err == nil {
					writeUDP(pc, b, from)
				}
			}
			continue
		}
		resp, forward := l.s.local(l.s.tab.Load(), l.net, from.Addr().Unmap(), r)
		if forward {
			select {
			case l.s.inflight <- struct{}{}:
			default:
				// Too many forwards waiting on the upstreams: fail this one now rather than pile
				// up goroutines behind a dead resolver.
				if b, err := reply(r, mdns.RcodeServerFailure).PackBuffer(out); err == nil {
					writeUDP(pc, b, from)
				}
				continue
			}
			go func() {
				defer func() { <-l.s.inflight }()
				resp := l.s.fwd.forward(context.Background(), r, false)
				resp.Truncate(udpSize(r))
				if b, err := resp.Pack(); err == nil {
					writeUDP(pc, b, from)
				}
			}()
			continue
		}
		if b, err := resp.PackBuffer(out); err == nil {
			writeUDP(pc, b, from)
		}
	}
}

// udpSize is the largest answer the client takes over UDP.
func udpSize(r *mdns.Msg) int {
	size := mdns.MinMsgSize
	if o := r.IsEdns0(); o != nil && int(o.UDPSize()) > size {
		size = int(o.UDPSize())
	}
	return size
}

// ServeDNS answers one query that reached this listener over TCP.
func (l *listener) ServeDNS(w mdns.ResponseWriter, r *mdns.Msg) {
	resp, forward := l.s.local(l.s.tab.Load(), l.net, addrOf(w.RemoteAddr()), r)
	if forward {
		resp = l.s.fwd.forward(context.Background(), r, true)
	}
	_ = w.WriteMsg(resp)
}

func addrOf(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.UDPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	case *net.TCPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	}
	return netip.Addr{}
}
