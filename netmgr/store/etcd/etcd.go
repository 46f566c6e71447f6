// Package etcd is netmgr's cluster store: the [store.Store] interface, and its [store.Leaser]
// ability, on a real etcd (go.etcd.io/etcd/client/v3, at the version netmgr's go.mod pins).
//
// It maps the store's model onto etcd's one to one: a KV's Rev is the key's ModRevision, a
// [store.Cmp] compares ModRevision (0: the key is absent), List reads a consistent snapshot and
// returns its revision, Watch from revision r is an etcd watch from r+1, and a lease is an etcd lease
// (Grant, KeepAliveOnce, Revoke, clientv3.WithLease).
//
// Every key lives under a prefix ([Options.Prefix], default "/netmgr/"), so that two clusters, or
// netmgr and other users, share one etcd: reads, writes, compares and watches see only the keys
// under it, and keys come back without it.
//
// A watch survives reconnects: the etcd client resumes it from the last revision it delivered, on
// the same or another endpoint, and a watch that resumes after the changes it needs were compacted
// away (say, etcd was compacted while this client was cut off) ends with the store's compaction
// signal, an EventError wrapping a [*store.CompactedError], never with silence. [store.Follow] turns
// that into a re-list and a diff by value.
//
// Every call other than a watch is bounded by [Options.RequestTimeout] (default 5 s) unless its
// context ends earlier: an etcd that cannot be reached gives one line, wrapping [ErrUnreachable],
// such as "etcd 198.18.0.1:2379 unreachable after 5s", never a hang. [New] and [Open] check that
// etcd answers before they return.
//
// Differences from the bolt store that callers may meet: a transaction that writes one key more than
// once keeps only its last write for that key (etcd refuses duplicate keys in one transaction), so
// watchers see that one; etcd refuses a transaction of more operations than its --max-txn-ops
// (default 128); revisions are etcd's, shared by every prefix.
package etcd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/netmgr/netmgr/netmgr/store"
)

// ErrUnreachable is wrapped by the error of a call that got no answer from etcd within its time
// (an *UnreachableError).
var ErrUnreachable = errors.New("etcd unreachable")

// UnreachableError says which etcd did not answer, and for how long it was tried.
type UnreachableError struct {
	Endpoints []string
	After     time.Duration
	Cause     string // what the connection last said, when it said something useful
}

func (e *UnreachableError) Error() string {
	s := fmt.Sprintf("etcd %s unreachable after %s", strings.Join(e.Endpoints, ","), e.After)
	if e.Cause != "" {
		s += " (" + e.Cause + ")"
	}
	return s
}

// Unwrap makes errors.Is(err, ErrUnreachable) true.
func (e *UnreachableError) Unwrap() error { return ErrUnreachable }

// DefaultPrefix is the key prefix of a store whose Options name none.
const DefaultPrefix = "/netmgr/"

// DefaultTimeout bounds every call and the first connection unless Options say otherwise.
const DefaultTimeout = 5 * time.Second

// Options say which etcd to use and how.
type Options struct {
	// Endpoints are etcd's client addresses, HOST:PORT (or http:// or https:// URLs). At least one.
	Endpoints []string
	// Prefix is put before every key; a "/" is added if it does not end in one, so that "/a" and
	// "/ab" never overlap. Empty: DefaultPrefix. "/" puts netmgr's keys at the top.
	Prefix string
	// CACert is a PEM file of the CAs that sign etcd's server certificate; Cert and Key are the
	// client's certificate and key (PEM files) for an etcd that asks for one (--client-cert-auth).
	// Any of them turns TLS on.
	CACert, Cert, Key string
	// DialTimeout bounds the first check that etcd answers (default DefaultTimeout).
	DialTimeout time.Duration
	// RequestTimeout bounds each call but watches (default DefaultTimeout).
	RequestTimeout time.Duration
	// Dialer, if set, opens the connections to etcd (for a runtime that reaches etcd from another
	// network namespace, or a test). Nil: a plain TCP dial.
	Dialer func(ctx context.Context, addr string) (net.Conn, error)
}

// Store is a store.Store and store.Leaser on etcd. It is safe for concurrent use.
type Store struct {
	c       *clientv3.Client
	prefix  string
	eps     []string
	timeout time.Duration

	mu     sync.Mutex
	closed bool
	done   chan struct{}
}

var (
	_ store.Store  = (*Store)(nil)
	_ store.Leaser = (*Store)(nil)
)

// New connects to etcd and checks, within DialTimeout, that it answers.
func New(ctx context.Context, opts Options) (*Store, error) {
	if len(opts.Endpoints) == 0 {
		return nil, fmt.Errorf("%w: etcd store: no endpoints", store.ErrInvalid)
	}
	prefix := opts.Prefix
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = DefaultTimeout
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = DefaultTimeout
	}
	tlsConf, err := tlsConfig(opts)
	if err != nil {
		return nil, err
	}
	eps := make([]string, len(opts.Endpoints))
	for i, ep := range opts.Endpoints {
		eps[i] = ep
		if tlsConf != nil && !strings.Contains(ep, "://") {
			eps[i] = "https://" + ep
		}
	}
	dopts := []grpc.DialOption{
		// After an outage, reconnect within a few seconds of etcd's return (gRPC's default backoff
		// grows to two minutes).
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: opts.DialTimeout,
		}),
	}
	if opts.Dialer != nil {
		dopts = append(dopts, grpc.WithContextDialer(opts.Dialer))
	}
	c, err := clientv3.New(clientv3.Config{
		Endpoints:            eps,
		DialTimeout:          opts.DialTimeout,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: opts.DialTimeout,
		TLS:                  tlsConf,
		DialOptions:          dopts,
		Logger:               zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("etcd %s: %w", strings.Join(opts.Endpoints, ","), err)
	}
	s := &Store{c: c, prefix: prefix, eps: opts.Endpoints, timeout: opts.RequestTimeout, done: make(chan struct{})}
	// A count-only read under the prefix: it needs a quorum (linearizable) and no more rights than
	// the store's own calls.
	cctx, cancel := context.WithTimeout(ctx, opts.DialTimeout)
	defer cancel()
	if _, err := c.Get(cctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil {
		err = s.wrap(ctx, cctx, opts.DialTimeout, err)
		var ue *UnreachableError
		if errors.As(err, &ue) && ue.Cause == "" {
			// A plain connection to the first endpoint, for a moment: its error (refused, a
			// certificate etcd or this client does not accept) says why, where gRPC says only
			// "deadline exceeded".
			pctx, pcancel := context.WithTimeout(ctx, probeTime)
			ue.Cause = probe(pctx, opts.Dialer, eps[0], tlsConf)
			pcancel()
		}
		c.Close()
		return nil, err
	}
	return s, nil
}

// probeTime bounds the probe that explains an unreachable etcd.
const probeTime = time.Second

// probe connects to ep (and for TLS, shakes hands and waits a moment for the server's verdict on
// the client's certificate) and returns what went wrong, or "".
func probe(ctx context.Context, dial func(context.Context, string) (net.Conn, error), ep string, conf *tls.Config) string {
	addr := ep
	if i := strings.Index(addr, "://"); i >= 0 {
		addr = addr[i+3:]
	}
	if dial == nil {
		var d net.Dialer
		dial = func(ctx context.Context, a string) (net.Conn, error) { return d.DialContext(ctx, "tcp", a) }
	}
	raw, err := dial(ctx, addr)
	if err != nil {
		if ctx.Err() != nil {
			return ""
		}
		return err.Error()
	}
	defer raw.Close()
	if conf == nil {
		return ""
	}
	conf = conf.Clone()
	conf.ServerName, _, _ = net.SplitHostPort(addr)
	conf.NextProtos = []string{"h2"}
	tc := tls.Client(raw, conf)
	if err := tc.HandshakeContext(ctx); err != nil {
		if ctx.Err() != nil {
			return ""
		}
		return "TLS: " + err.Error()
	}
	_ = tc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	var b [1]byte
	if _, err := tc.Read(b[:]); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return ""
		}
		return "TLS: " + err.Error()
	}
	return ""
}

func tlsConfig(opts Options) (*tls.Config, error) {
	if opts.CACert == "" && opts.Cert == "" && opts.Key == "" {
		return nil, nil
	}
	if (opts.Cert == "") != (opts.Key == "") {
		return nil, fmt.Errorf("%w: etcd store: a client certificate needs both cert and key", store.ErrInvalid)
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS12}
	if opts.CACert != "" {
		pem, err := os.ReadFile(opts.CACert)
		if err != nil {
			return nil, fmt.Errorf("%w: etcd CA file: %v", store.ErrInvalid, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: etcd CA file %s: no PEM certificate in it", store.ErrInvalid, opts.CACert)
		}
		conf.RootCAs = pool
	}
	if opts.Cert != "" {
		cert, err := tls.LoadX509KeyPair(opts.Cert, opts.Key)
		if err != nil {
			return nil, fmt.Errorf("%w: etcd client certificate: %v", store.ErrInvalid, err)
		}
		conf.Certificates = []tls.Certificate{cert}
	}
	return conf, nil
}

// Prefix returns the prefix every key of the store lives under.
func (s *Store) Prefix() string { return s.prefix }

// Client returns the etcd client the store uses (for what the store does not offer; keys under
// Prefix are the store's).
func (s *Store) Client() *clientv3.Client { return s.c }

func (s *Store) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// call runs fn with a context bounded by the request timeout, and maps its error.
func (s *Store) call(ctx context.Context, fn func(ctx context.Context) error) error {
	if s.isClosed() {
		return store.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := fn(rctx); err != nil {
		return s.wrap(ctx, rctx, s.timeout, err)
	}
	return nil
}

// wrap maps an etcd client error: the caller's context ending stays its error; no answer within
// the store's own time is an *UnreachableError; etcd's lease-not-found is store.ErrLeaseNotFound.
func (s *Store) wrap(ctx, rctx context.Context, after time.Duration, err error) error {
	if s.isClosed() {
		return store.ErrClosed
	}
	if ctx.Err() != nil {
		return fmt.Errorf("etcd %s: %w", strings.Join(s.eps, ","), ctx.Err())
	}
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return fmt.Errorf("%w (etcd: %v)", store.ErrLeaseNotFound, err)
	}
	code := status.Code(err)
	if rctx.Err() != nil || code == codes.Unavailable || code == codes.DeadlineExceeded ||
		errors.Is(err, rpctypes.ErrNoLeader) || errors.Is(err, rpctypes.ErrTimeout) || errors.Is(err, rpctypes.ErrTimeoutDueToLeaderFail) {
		return &UnreachableError{Endpoints: s.eps, After: after, Cause: cause(err)}
	}
	if errors.Is(err, rpctypes.ErrCompacted) || errors.Is(err, rpctypes.ErrFutureRev) {
		return fmt.Errorf("etcd: %w", err)
	}
	return fmt.Errorf("etcd %s: %w", strings.Join(s.eps, ","), err)
}

// cause returns what a connection error says beyond "deadline exceeded", or "".
func cause(err error) string {
	msg := err.Error()
	if st, ok := status.FromError(err); ok {
		msg = st.Message()
	}
	if strings.Contains(msg, "context deadline exceeded") && !strings.Contains(msg, "last connection error") {
		return ""
	}
	if i := strings.Index(msg, "last connection error: "); i >= 0 {
		msg = msg[i+len("last connection error: "):]
	}
	return strings.TrimSpace(msg)
}

// Get returns the key or store.ErrNotFound.
func (s *Store) Get(ctx context.Context, key string) (store.KV, error) {
	var kv store.KV
	err := s.call(ctx, func(ctx context.Context) error {
		resp, err := s.c.Get(ctx, s.prefix+key)
		if err != nil {
			return err
		}
		if len(resp.Kvs) == 0 {
			return store.ErrNotFound
		}
		kv = store.KV{Key: key, Value: resp.Kvs[0].Value, Rev: resp.Kvs[0].ModRevision}
		return nil
	})
	if errors.Is(err, store.ErrNotFound) {
		return store.KV{}, fmt.Errorf("%s: %w", key, store.ErrNotFound)
	}
	return kv, err
}

// listPage is how many keys one range request of List reads.
const listPage = 1000

// List returns every key under prefix, sorted by key, and the revision they were read at: one
// consistent snapshot, read in pages of listPage keys at the first page's revision.
func (s *Store) List(ctx context.Context, prefix string) ([]store.KV, int64, error) {
	var kvs []store.KV
	var rev int64
	err := s.call(ctx, func(ctx context.Context) error {
		full := s.prefix + prefix
		end := clientv3.GetPrefixRangeEnd(full)
		from := full
		for {
			opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(listPage)}
			if rev != 0 {
				opts = append(opts, clientv3.WithRev(rev))
			}
			resp, err := s.c.Get(ctx, from, opts...)
			if err != nil {
				return err
			}
			if rev == 0 {
				rev = resp.Header.Revision
			}
			for _, kv := range resp.Kvs {
				kvs = append(kvs, store.KV{Key: strings.TrimPrefix(string(kv.Key), s.prefix), Value: kv.Value, Rev: kv.ModRevision})
			}
			if !resp.More || len(resp.Kvs) == 0 {
				return nil
			}
			from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		}
	})
	if err != nil {
		return nil, 0, err
	}
	return kvs, rev, nil
}

// Txn applies ops if every cmp holds, else returns store.ErrConflict. A key written more than once
// keeps only its last write (etcd refuses duplicate keys in one transaction).
func (s *Store) Txn(ctx context.Context, cmps []store.Cmp, ops []store.Op) error {
	conds := make([]clientv3.Cmp, 0, len(cmps))
	for _, c := range cmps {
		if c.Rev < 0 {
			return fmt.Errorf("%w: compare %s at revision %d", store.ErrInvalid, c.Key, c.Rev)
		}
		conds = append(conds, clientv3.Compare(clientv3.ModRevision(s.prefix+c.Key), "=", c.Rev))
	}
	last := make(map[string]int, len(ops))
	for i, o := range ops {
		last[o.Key] = i
	}
	eops := make([]clientv3.Op, 0, len(last))
	for i, o := range ops {
		if last[o.Key] != i {
			continue
		}
		switch {
		case o.Delete:
			eops = append(eops, clientv3.OpDelete(s.prefix+o.Key))
		case o.Lease != store.NoLease:
			eops = append(eops, clientv3.OpPut(s.prefix+o.Key, string(o.Value), clientv3.WithLease(clientv3.LeaseID(o.Lease))))
		default:
			eops = append(eops, clientv3.OpPut(s.prefix+o.Key, string(o.Value)))
		}
	}
	var ok bool
	err := s.call(ctx, func(ctx context.Context) error {
		resp, err := s.c.Txn(ctx).If(conds...).Then(eops...).Commit()
		if err != nil {
			return err
		}
		ok = resp.Succeeded
		return nil
	})
	if err != nil {
		return err
	}
	if !ok {
		return store.ErrConflict
	}
	return nil
}

// Close closes the connection; every watch ends with store.ErrClosed. It is safe to call twice.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.done)
	s.mu.Unlock()
	if err := s.c.Close(); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// Grant creates a lease of ttl, in whole seconds rounded up (etcd may raise it to its minimum).
func (s *Store) Grant(ctx context.Context, ttl time.Duration) (store.LeaseID, error) {
	if ttl <= 0 {
		return 0, fmt.Errorf("%w: lease ttl %s", store.ErrInvalid, ttl)
	}
	secs := int64((ttl + time.Second - 1) / time.Second)
	var id store.LeaseID
	err := s.call(ctx, func(ctx context.Context) error {
		resp, err := s.c.Grant(ctx, secs)
		if err != nil {
			return err
		}
		id = store.LeaseID(resp.ID)
		return nil
	})
	return id, err
}

// KeepAlive renews the lease once; an ended lease gives store.ErrLeaseNotFound.
func (s *Store) KeepAlive(ctx context.Context, id store.LeaseID) error {
	return s.call(ctx, func(ctx context.Context) error {
		_, err := s.c.KeepAliveOnce(ctx, clientv3.LeaseID(id))
		return err
	})
}

// Revoke ends the lease now and deletes its keys; an ended lease gives store.ErrLeaseNotFound.
func (s *Store) Revoke(ctx context.Context, id store.LeaseID) error {
	return s.call(ctx, func(ctx context.Context) error {
		_, err := s.c.Revoke(ctx, clientv3.LeaseID(id))
		return err
	})
}
