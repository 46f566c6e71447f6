package etcd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr/store"
	"github.com/netmgr/netmgr/netmgr/store/storetest"
)

// open connects a store to e under prefix, closing it at cleanup.
func open(t *testing.T, e *testutil.Etcd, prefix string) *Store {
	t.Helper()
	s, err := New(context.Background(), Options{Endpoints: []string{e.Endpoint}, Prefix: prefix, Dialer: e.Dial})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestContract runs the contract every store passes against a real etcd: each subtest on a prefix of
// its own, on one server.
func TestContract(t *testing.T) {
	e := testutil.StartEtcd(t, testutil.EtcdOptions{})
	storetest.Run(t, func(t *testing.T) storetest.Harness {
		return storetest.Harness{
			Store:   open(t, e, "/contract/"+t.Name()+"/"),
			Compact: func(t *testing.T) { e.Compact(0) },
		}
	})
}

// TestContractPrefixed runs it through store.WithPrefix, which must keep the etcd store's leases.
func TestContractPrefixed(t *testing.T) {
	e := testutil.StartEtcd(t, testutil.EtcdOptions{})
	storetest.Run(t, func(t *testing.T) storetest.Harness {
		s := open(t, e, "/contract/"+t.Name()+"/")
		return storetest.Harness{
			Store:   store.WithPrefix(s, "nodes/n1/"),
			Close:   s.Close,
			Compact: func(t *testing.T) { e.Compact(0) },
		}
	})
}

// Two clusters share one etcd under two prefixes ("/a" and "/ab" too, which must not overlap): each
// reads, lists and watches only its own keys.
func TestPrefixIsolation(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e := testutil.StartEtcd(t, testutil.EtcdOptions{})
	a, ab, root := open(t, e, "/a"), open(t, e, "/ab/"), open(t, e, "/")
	if a.Prefix() != "/a/" {
		t.Fatalf("prefix %q, want /a/", a.Prefix())
	}
	rev := storetest.Rev(t, a)
	wa, err := a.Watch(ctx, "", rev)
	if err != nil {
		t.Fatal(err)
	}
	wab, err := ab.Watch(ctx, "", rev)
	if err != nil {
		t.Fatal(err)
	}
	storetest.Txn(t, a, store.Put("networks/n", []byte("a's")))
	storetest.Txn(t, ab, store.Put("networks/n", []byte("ab's")))
	storetest.Txn(t, root, store.Put("x", nil))
	storetest.Txn(t, a, store.Put("end", nil))
	storetest.Txn(t, ab, store.Put("end", nil))
	if got := strings.Join(storetest.UpTo(t, wa, "end", rev), ","); got != "put networks/n=a's@1" {
		t.Fatalf("a's watch: %s", got)
	}
	if got := strings.Join(storetest.UpTo(t, wab, "end", rev), ","); got != "put networks/n=ab's@2" {
		t.Fatalf("ab's watch: %s", got)
	}
	if kv, err := a.Get(ctx, "networks/n"); err != nil || string(kv.Value) != "a's" {
		t.Fatalf("a's key: %+v %v", kv, err)
	}
	kvs, _, err := a.List(ctx, "")
	if err != nil || len(kvs) != 2 || kvs[0].Key != "end" || kvs[1].Key != "networks/n" {
		t.Fatalf("a's list: %+v %v", kvs, err)
	}
	kvs, _, _ = root.List(ctx, "")
	var keys []string
	for _, kv := range kvs {
		keys = append(keys, kv.Key)
	}
	if got := strings.Join(keys, " "); got != "a/end a/networks/n ab/end ab/networks/n x" {
		t.Fatalf("keys in etcd: %s", got)
	}
	// A compare under one prefix does not see the other's key.
	if err := ab.Txn(ctx, []store.Cmp{store.Absent("only-a")}, []store.Op{store.Put("y", nil)}); err != nil {
		t.Fatal(err)
	}
}

// List reads in pages at one revision: more keys than a page, all of them, in order.
func TestListPages(t *testing.T) {
	ctx := context.Background()
	e := testutil.StartEtcd(t, testutil.EtcdOptions{})
	s := open(t, e, "/pages/")
	var ops []store.Op
	n := 0
	for i := 0; i < 2*listPage+10; i++ {
		ops = append(ops, store.Put(fmt.Sprintf("k/%05d", (i*7919)%(2*listPage+10)), nil))
		if len(ops) == 100 {
			storetest.Txn(t, s, ops...)
			n += len(ops)
			ops = nil
		}
	}
	storetest.Txn(t, s, ops...)
	n += len(ops)
	kvs, _, err := s.List(ctx, "")
	if err != nil || len(kvs) != n {
		t.Fatalf("listed %d keys, %v; want %d", len(kvs), err, n)
	}
	for i := 1; i < len(kvs); i++ {
		if kvs[i-1].Key >= kvs[i].Key {
			t.Fatalf("not sorted at %d: %s, %s", i, kvs[i-1].Key, kvs[i].Key)
		}
	}
}

var unreachableLine = regexp.MustCompile(`^etcd 127\.0\.0\.1:\d+ unreachable after 5s`)

// An etcd that does not answer (nothing listens; or something accepts connections and never speaks)
// gives one line naming it, within the default 5 s, from New and from every call; never a hang.
func TestUnreachable(t *testing.T) {
	ns := testutil.NewNS(t, "noetcd")
	var silent net.Listener
	err := ns.Do(func() (err error) {
		silent, err = net.Listen("tcp", "127.0.0.1:0") // never accepts: the handshake completes, nothing answers
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		var c net.Conn
		err := ns.Do(func() (err error) {
			var d net.Dialer
			c, err = d.DialContext(ctx, "tcp", addr)
			return err
		})
		return c, err
	}
	for _, ep := range []string{"127.0.0.1:2379", silent.Addr().String()} {
		start := time.Now()
		_, err := New(context.Background(), Options{Endpoints: []string{ep}, Dialer: dial})
		took := time.Since(start)
		t.Logf("%s: %q, in %s", ep, err, took.Round(time.Millisecond))
		if !errors.Is(err, ErrUnreachable) || !unreachableLine.MatchString(err.Error()) || strings.Contains(err.Error(), "\n") {
			t.Fatalf("New(%s): %v; want one line `etcd %s unreachable after 5s`", ep, err, ep)
		}
		// A bound against a hang, not a measure of speed.
		if took > 30*time.Second {
			t.Fatalf("New(%s) took %s", ep, took)
		}
	}
	// A store whose etcd goes away: each call ends, as unreachable.
	e := testutil.StartEtcd(t, testutil.EtcdOptions{})
	s := open(t, e, "/gone/")
	e.Stop()
	calls := map[string]func() error{
		"get":   func() error { _, err := s.Get(context.Background(), "k"); return err },
		"list":  func() error { _, _, err := s.List(context.Background(), ""); return err },
		"txn":   func() error { return s.Txn(context.Background(), nil, []store.Op{store.Put("k", nil)}) },
		"grant": func() error { _, err := s.Grant(context.Background(), time.Second); return err },
		"watch": func() error { _, err := s.Watch(context.Background(), "", 0); return err },
	}
	var wg sync.WaitGroup
	for name, call := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			err := call()
			if !errors.Is(err, ErrUnreachable) || !unreachableLine.MatchString(err.Error()) {
				t.Errorf("%s with etcd stopped: %v, want unreachable after 5s", name, err)
			}
			if took := time.Since(start); took > 30*time.Second {
				t.Errorf("%s took %s", name, took)
			}
		}()
	}
	wg.Wait()
	// The caller's shorter context is its own error, not etcd's.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := s.Get(ctx, "k"); !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrUnreachable) {
		t.Fatalf("get with the caller's deadline: %v", err)
	}
}

// A watch survives etcd stopping and coming back (and being killed and coming back): the events
// after the restart arrive, in order, on the same channel.
func TestWatchSurvivesRestart(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e := testutil.StartEtcd(t, testutil.EtcdOptions{})
	s := open(t, e, "/restart/")
	rev := storetest.Rev(t, s)
	ch, err := s.Watch(ctx, "k/", rev)
	if err != nil {
		t.Fatal(err)
	}
	storetest.Txn(t, s, store.Put("k/1", []byte("before")))
	if got := storetest.Describe(storetest.Next(t, ch), rev); got != "put k/1=before@1" {
		t.Fatalf("first event %s", got)
	}
	for i, restart := range []func(){e.Stop, e.Kill} {
		restart()
		e.Restart()
		// The store's own calls wait for the connection to come back.
		var err error
		for try := 0; try < 5; try++ {
			if err = s.Txn(ctx, nil, []store.Op{store.Put("k/after", []byte{'0' + byte(i)})}); err == nil {
				break
			}
		}
		if err != nil {
			t.Fatalf("put after restart %d: %v", i, err)
		}
		e := storetest.Next(t, ch)
		if e.Type != store.EventPut || e.KV.Key != "k/after" || string(e.KV.Value) != string([]byte{'0' + byte(i)}) {
			t.Fatalf("after restart %d: %s", i, storetest.Describe(e, rev))
		}
	}
}

// cutter is a Dialer whose connections the test can cut, as a network partition between one client
// and etcd: Cut closes them and refuses new ones until Restore.
type cutter struct {
	dial  func(ctx context.Context, addr string) (net.Conn, error)
	mu    sync.Mutex
	cut   bool
	conns []net.Conn
}

func (c *cutter) Dial(ctx context.Context, addr string) (net.Conn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cut {
		return nil, errors.New("cut")
	}
	conn, err := c.dial(ctx, addr)
	if err == nil {
		c.conns = append(c.conns, conn)
	}
	return conn, err
}

func (c *cutter) Cut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cut = true
	for _, conn := range c.conns {
		conn.Close()
	}
	c.conns = nil
}

func (c *cutter) Restore() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cut = false
}

// A watcher cut off from etcd while its history is compacted gets the compaction signal when it
// comes back, not silence: the changes it missed are gone, and it must re-list.
func TestWatchCompactedWhileDisconnected(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e := testutil.StartEtcd(t, testutil.EtcdOptions{})
	cut := &cutter{dial: e.Dial}
	w, err := New(ctx, Options{Endpoints: []string{e.Endpoint}, Prefix: "/cut/", Dialer: cut.Dial})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	s := open(t, e, "/cut/")
	rev := storetest.Txn(t, s, store.Put("k/0", nil))
	ch, err := w.Watch(ctx, "k/", rev)
	if err != nil {
		t.Fatal(err)
	}
	last := storetest.Txn(t, s, store.Put("k/1", []byte("seen")))
	if got := storetest.Describe(storetest.Next(t, ch), rev); got != "put k/1=seen@1" {
		t.Fatalf("first event %s", got)
	}
	cut.Cut()
	storetest.Txn(t, s, store.Put("k/2", []byte("missed")))
	storetest.Txn(t, s, store.Del("k/1"))
	at := e.Compact(0)
	cut.Restore()
	ev := storetest.Next(t, ch)
	var ce *store.CompactedError
	if ev.Type != store.EventError || !errors.As(ev.Err, &ce) {
		t.Fatalf("after the partition: %s, want ErrCompacted", storetest.Describe(ev, rev))
	}
	if ce.Rev != at-1 || ce.Asked != last {
		t.Fatalf("compacted error %+v, want Rev %d Asked %d", ce, at-1, last)
	}
	storetest.Closed(t, ch, rev)
}

// TLS: an etcd that serves clients over TLS and asks for a client certificate. The store connects
// with the CA, cert and key (by Options and by URL); without a client certificate, or trusting
// another CA, it fails with one line.
func TestTLS(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	ca := newCA(t, dir, "ca")
	srvCert, srvKey := ca.issue(t, dir, "server", "127.0.0.1")
	cliCert, cliKey := ca.issue(t, dir, "client", "")
	other := newCA(t, dir, "other")
	e := testutil.StartEtcd(t, testutil.EtcdOptions{TLS: &testutil.EtcdTLS{CA: ca.certFile, Cert: srvCert, Key: srvKey, ClientCertAuth: true}})

	s, err := New(ctx, Options{Endpoints: []string{e.Endpoint}, Prefix: "/tls/", CACert: ca.certFile, Cert: cliCert, Key: cliKey, Dialer: e.Dial})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rev := storetest.Rev(t, s)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch, err := s.Watch(wctx, "", rev)
	if err != nil {
		t.Fatal(err)
	}
	storetest.Txn(t, s, store.Put("k", []byte("v")))
	if got := storetest.Describe(storetest.Next(t, ch), rev); got != "put k=v@1" {
		t.Fatalf("event over TLS: %s", got)
	}

	o, err := ParseURL("etcd://" + e.Endpoint + "?prefix=/tls&cacert=" + ca.certFile + "&cert=" + cliCert + "&key=" + cliKey)
	if err != nil {
		t.Fatal(err)
	}
	o.Dialer = e.Dial
	u, err := New(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if kv, err := u.Get(ctx, "k"); err != nil || string(kv.Value) != "v" {
		t.Fatalf("get through the URL's store: %+v %v", kv, err)
	}

	for _, c := range []struct {
		name string
		o    Options
		says string
	}{
		{"no client certificate", Options{CACert: ca.certFile}, "certificate required"},
		{"another CA", Options{CACert: other.certFile, Cert: cliCert, Key: cliKey}, "certificate signed by unknown authority"},
		{"no TLS", Options{}, "unreachable after 2s"},
	} {
		c.o.Endpoints, c.o.Dialer, c.o.DialTimeout = []string{e.Endpoint}, e.Dial, 2*time.Second
		_, err := New(ctx, c.o)
		t.Logf("%s: %v", c.name, err)
		if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), c.says) || strings.Contains(err.Error(), "\n") {
			t.Fatalf("%s: %v, want one line saying %q", c.name, err, c.says)
		}
	}
	if _, err := New(ctx, Options{Endpoints: []string{e.Endpoint}, CACert: filepath.Join(dir, "missing.pem")}); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("missing CA file: %v, want ErrInvalid", err)
	}
	if _, err := New(ctx, Options{Endpoints: []string{e.Endpoint}, Cert: cliCert}); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("cert without key: %v, want ErrInvalid", err)
	}
}

// The etcd server `make etcd` builds (tools/etcd/go.mod) is the version of the client go.mod pins.
func TestServerVersionMatchesClient(t *testing.T) {
	version := func(path, module string) string {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		m := regexp.MustCompile(`(?m)^\s*` + regexp.QuoteMeta(module) + `\s+(v\S+)`).FindSubmatch(b)
		if m == nil {
			t.Fatalf("%s does not require %s", path, module)
		}
		return string(m[1])
	}
	client := version("../../../go.mod", "go.etcd.io/etcd/client/v3")
	server := version("../../../tools/etcd/go.mod", "go.etcd.io/etcd/server/v3")
	if client != server {
		t.Fatalf("go.mod pins the etcd client at %s, tools/etcd/go.mod the server at %s: keep them one version", client, server)
	}
}

// store.Follow over etcd: a follower cut off while etcd compacts its history gets the compaction
// signal when it comes back, re-lists, and hands the difference by value (the attribute change it
// never saw, the delete, the new key; not the key changed and changed back).
func TestFollowCompactedWhileDisconnected(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e := testutil.StartEtcd(t, testutil.EtcdOptions{})
	cut := &cutter{dial: e.Dial}
	w, err := New(ctx, Options{Endpoints: []string{e.Endpoint}, Prefix: "/follow/", Dialer: cut.Dial})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	s := open(t, e, "/follow/")
	storetest.Txn(t, s, store.Put("nodes/a", []byte("mac=1")), store.Put("nodes/b", []byte("1")), store.Put("nodes/d", []byte("1")))
	ups := make(chan string, 100)
	errc := make(chan error, 1)
	go func() {
		errc <- store.Follow(ctx, w, "nodes/", func(u store.Update) error {
			var parts []string
			for _, c := range u.Changes {
				if c.Deleted {
					parts = append(parts, "del "+c.KV.Key)
				} else {
					parts = append(parts, "put "+c.KV.Key+"="+string(c.KV.Value))
				}
			}
			ups <- fmt.Sprintf("resync=%v %s", u.Resync, strings.Join(parts, ", "))
			return nil
		})
	}()
	next := func() string {
		t.Helper()
		select {
		case u := <-ups:
			return u
		case err := <-errc:
			t.Fatalf("Follow returned %v", err)
		case <-time.After(30 * time.Second):
			t.Fatal("no update in 30s")
		}
		return ""
	}
	if got := next(); got != "resync=true put nodes/a=mac=1, put nodes/b=1, put nodes/d=1" {
		t.Fatalf("first update %q", got)
	}
	storetest.Txn(t, s, store.Put("nodes/c", []byte("1")))
	if got := next(); got != "resync=false put nodes/c=1" {
		t.Fatalf("watched update %q", got)
	}
	cut.Cut()
	storetest.Txn(t, s, store.Put("nodes/a", []byte("mac=2")))
	storetest.Txn(t, s, store.Del("nodes/b"))
	storetest.Txn(t, s, store.Put("nodes/d", []byte("2")))
	storetest.Txn(t, s, store.Put("nodes/d", []byte("1")))
	e.Compact(0)
	cut.Restore()
	if got := next(); got != "resync=true put nodes/a=mac=2, del nodes/b" {
		t.Fatalf("after the partition and compaction: %q", got)
	}
	storetest.Txn(t, s, store.Put("nodes/e", []byte("1")))
	if got := next(); got != "resync=false put nodes/e=1" {
		t.Fatalf("watched after the re-list: %q", got)
	}
}
