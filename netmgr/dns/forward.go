package dns

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/netmgr/netmgr/sandbox"
)

// maxUpstreams is how many resolvers are tried, as glibc does.
const maxUpstreams = 3

// downFor is how long an upstream that failed is tried only after the others.
const downFor = 10 * time.Second

// forwarder sends queries to the upstream resolvers from the host namespace.
type forwarder struct {
	ns         *sandbox.NetNS // nil: the caller's namespace
	static     []netip.AddrPort
	resolvConf string
	timeout    time.Duration
	budget     time.Duration
	log        *slog.Logger
	self       func(netip.AddrPort) bool

	mu       sync.Mutex
	down     map[netip.AddrPort]time.Time // failed until
	fromFile []netip.AddrPort
	stamp    fileStamp
	checked  time.Time
}

type fileStamp struct {
	mod  time.Time
	size int64
	ino  uint64
}

// upstreams returns the resolvers to try, in order: the ones not seen failing first.
func (f *forwarder) upstreams() []netip.AddrPort {
	f.mu.Lock()
	defer f.mu.Unlock()
	ups := f.static
	if len(ups) == 0 {
		f.reloadLocked()
		ups = f.fromFile
	}
	now := time.Now()
	var good, bad []netip.AddrPort
	for _, u := range ups {
		if f.self != nil && f.self(u) {
			continue
		}
		if now.Before(f.down[u]) {
			bad = append(bad, u)
		} else {
			good = append(good, u)
		}
	}
	out := append(good, bad...)
	if len(out) > maxUpstreams {
		out = out[:maxUpstreams]
	}
	return out
}

// reloadLocked re-reads resolv.conf when it changed (checked at most once a second).
func (f *forwarder) reloadLocked() {
	now := time.Now()
	if now.Sub(f.checked) < time.Second && f.fromFile != nil {
		return
	}
	f.checked = now
	st, err := os.Stat(f.resolvConf)
	if err != nil {
		if f.fromFile == nil || len(f.fromFile) > 0 {
			f.log.Warn("no upstream resolvers: cannot read the host's resolver configuration", "file", f.resolvConf, "error", err)
		}
		f.fromFile, f.stamp = []netip.AddrPort{}, fileStamp{}
		return
	}
	stamp := fileStamp{mod: st.ModTime(), size: st.Size()}
	if si, ok := st.Sys().(interface{ Ino() uint64 }); ok {
		stamp.ino = si.Ino()
	}
	if f.fromFile != nil && stamp == f.stamp {
		return
	}
	ups, err := ReadResolvConf(f.resolvConf)
	if err != nil {
		f.log.Warn("read upstream resolvers", "file", f.resolvConf, "error", err)
		ups = []netip.AddrPort{}
	}
	if len(ups) == 0 {
		f.log.Warn("no nameserver in the host's resolver configuration: names beyond the networks get SERVFAIL", "file", f.resolvConf)
	}
	f.fromFile, f.stamp = ups, stamp
}

// ReadResolvConf returns the nameservers of a resolv.conf (port 53). Lines it does not understand
// are skipped; several addresses on one nameserver line are each taken.
func ReadResolvConf(path string) ([]netip.AddrPort, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	ups := []netip.AddrPort{}
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || fields[0] != "nameserver" {
			continue
		}
		for _, fl := range fields[1:] {
			if strings.HasPrefix(fl, "#") || strings.HasPrefix(fl, ";") {
				break
			}
			if a, err := netip.ParseAddr(fl); err == nil && !slices.Contains(ups, netip.AddrPortFrom(a.Unmap(), 53)) {
				ups = append(ups, netip.AddrPortFrom(a.Unmap(), 53))
			}
		}
	}
	return ups, sc.Err()
}

func (f *forwarder) markDown(u netip.AddrPort, down bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if down {
		f.down[u] = time.Now().Add(downFor)
	} else {
		delete(f.down, u)
	}
}

// forward sends r to the upstreams in turn within the budget; over TCP when the client came over TCP
// or a UDP answer was truncated. Every failure ends in SERVFAIL before the budget runs out.
func (f *forwarder) forward(ctx context.Context, r *mdns.Msg, tcp bool) *mdns.Msg {
	ups := f.upstreams()
	if len(ups) == 0 {
		return reply(r, mdns.RcodeServerFailure)
	}
	ctx, cancel := context.WithTimeout(ctx, f.budget)
	defer cancel()
	var fallback *mdns.Msg // an upstream's own SERVFAIL or REFUSED, if no better answer comes
	for i, u := range ups {
		deadline, _ := ctx.Deadline()
		// Leave the later upstreams a share of what remains.
		try := min(f.timeout, time.Until(deadline)/time.Duration(len(ups)-i))
		if i == len(ups)-1 {
			try = min(f.timeout, time.Until(deadline))
		}
		if try <= 0 {
			break
		}
		proto := "udp"
		if tcp {
			proto = "tcp"
		}
		resp, err := f.exchange(ctx, u, r, proto, time.Now().Add(try))
		if err == nil && resp.Truncated && proto == "udp" {
			resp, err = f.exchange(ctx, u, r, "tcp", time.Now().Add(min(f.timeout, time.Until(deadline))))
		}
		if err != nil {
			f.log.Debug("upstream failed", "upstream", u, "proto", proto, "name", r.Question[0].Name, "error", err)
			f.markDown(u, true)
			continue
		}
		if resp.Rcode == mdns.RcodeServerFailure || resp.Rcode == mdns.RcodeRefused {
			fallback = resp
			continue
		}
		f.markDown(u, false)
		return resp
	}
	if fallback != nil {
		return fallback
	}
	return reply(r, mdns.RcodeServerFailure)
}

// exchange asks one upstream over proto with a socket made in the host namespace.
func (f *forwarder) exchange(ctx context.Context, u netip.AddrPort, r *mdns.Msg, proto string, deadline time.Time) (*mdns.Msg, error) {
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	var c net.Conn
	dial := func() error {
		var err error
		d := net.Dialer{Deadline: deadline}
		c, err = d.DialContext(ctx, proto, u.String())
		return err
	}
	var err error
	if f.ns != nil {
		err = f.ns.Do(dial)
	} else {
		err = dial()
	}
	if err != nil {
		return nil, err
	}
	co := &mdns.Conn{Conn: c, UDPSize: mdns.MaxMsgSize}
	defer co.Close()
	if err := c.SetDeadline(deadline); err != nil {
		return nil, err
	}
	q := r.Copy()
	q.Id = mdns.Id()
	if err := co.WriteMsg(q); err != nil {
		return nil, err
	}
	for {
		resp, err := co.ReadMsg()
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return nil, fmt.Errorf("no answer from %v in time", u)
			}
			return nil, err
		}
		if resp.Id != q.Id || len(resp.Question) != 1 || !strings.EqualFold(resp.Question[0].Name, q.Question[0].Name) ||
			resp.Question[0].Qtype != q.Question[0].Qtype {
			continue // a late answer to an earlier query on a reused port, or not an answer to this one
		}
		resp.Id = r.Id
		return resp, nil
	}
}
