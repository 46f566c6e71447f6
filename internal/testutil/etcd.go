package testutil

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/netmgr/netmgr/sandbox"
)

// EtcdBinary returns the path of the etcd server that `make etcd` builds into the repository's bin/,
// or an error saying how to build it.
func EtcdBinary() (string, error) {
	_, file, _, _ := runtime.Caller(0)
	p := filepath.Join(filepath.Dir(file), "..", "..", "bin", "etcd")
	if _, err := os.Stat(p); err != nil {
		return p, fmt.Errorf("bin/etcd not built: run `make etcd` (builds the etcd server at the version go.mod pins)")
	}
	return filepath.Clean(p), nil
}

// RequireEtcd returns the etcd binary for a test that needs a real etcd. Without it the test fails,
// or under -short skips, saying how to build it.
func RequireEtcd(tb testing.TB) string {
	tb.Helper()
	p, err := EtcdBinary()
	if err != nil {
		if testing.Short() {
			tb.Skip(err)
		}
		tb.Fatal(err)
	}
	return p
}

// EtcdTLS are the PEM files of an etcd that serves clients over TLS.
type EtcdTLS struct {
	CA, Cert, Key string // the CA that signed Cert; the server's certificate and key
	// ClientCertAuth makes etcd require a client certificate signed by CA.
	ClientCertAuth bool
}

// EtcdOptions change how StartEtcd runs etcd; the zero value is a plain etcd on 127.0.0.1 inside a
// namespace of its own.
type EtcdOptions struct {
	// NS is the network namespace etcd runs in. Nil: a new one (NewNS), where etcd listens on its
	// loopback. etcd never runs in the test's own namespace.
	NS *sandbox.NetNS
	// Addr is the address etcd listens on inside NS. Empty: 127.0.0.1.
	Addr string
	// ClientPort and PeerPort: 0 picks free ports in NS.
	ClientPort, PeerPort int
	// TLS serves clients over TLS.
	TLS *EtcdTLS
	// Fsync keeps etcd's fsyncs (tests run it with --unsafe-no-fsync unless this is set).
	Fsync bool
	// Args are more flags for etcd.
	Args []string
}

// Etcd is a private etcd server of a test. StartEtcd stops it and removes its data at cleanup.
type Etcd struct {
	Endpoint string // HOST:PORT for clients, inside NS
	NS       *sandbox.NetNS
	Dir      string // the data directory
	Log      string // the file etcd logs to

	tb     testing.TB
	bin    string
	args   []string
	client *http.Client
	scheme string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

// StartEtcd starts an etcd for the test and waits until it is healthy (or fails the test). Clients
// reach it at Endpoint from inside NS; a client in the test's own namespace dials through Dial.
func StartEtcd(tb testing.TB, opts EtcdOptions) *Etcd {
	tb.Helper()
	RequireRoot(tb)
	bin := RequireEtcd(tb)
	ns := opts.NS
	if ns == nil {
		ns = NewNS(tb, "etcd")
	}
	addr := opts.Addr
	if addr == "" {
		addr = "127.0.0.1"
	}
	cport, pport := opts.ClientPort, opts.PeerPort
	if cport == 0 || pport == 0 {
		ports, err := freePorts(ns, addr, 2)
		if err != nil {
			tb.Fatal(err)
		}
		if cport == 0 {
			cport = ports[0]
		}
		if pport == 0 {
			pport = ports[1]
		}
	}
	dir := tb.TempDir()
	e := &Etcd{
		Endpoint: net.JoinHostPort(addr, strconv.Itoa(cport)),
		NS:       ns, Dir: filepath.Join(dir, "data"), Log: filepath.Join(dir, "etcd.log"),
		tb: tb, bin: bin, scheme: "http",
	}
	tr := &http.Transport{DialContext: func(ctx context.Context, _, a string) (net.Conn, error) { return e.Dial(ctx, a) }}
	if opts.TLS != nil {
		e.scheme = "https"
		pem, err := os.ReadFile(opts.TLS.CA)
		if err != nil {
			tb.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		conf := &tls.Config{RootCAs: pool}
		if opts.TLS.ClientCertAuth {
			// The harness's own calls use the server's key pair as a client certificate: the CA
			// signed it, and the tests' certificates carry both usages.
			c, err := tls.LoadX509KeyPair(opts.TLS.Cert, opts.TLS.Key)
			if err != nil {
				tb.Fatal(err)
			}
			conf.Certificates = []tls.Certificate{c}
		}
		tr.TLSClientConfig = conf
	}
	e.client = &http.Client{Transport: tr, Timeout: 10 * time.Second}
	curl := e.scheme + "://" + e.Endpoint
	purl := "http://" + net.JoinHostPort(addr, strconv.Itoa(pport))
	e.args = []string{
		"--name", "test", "--data-dir", e.Dir,
		"--listen-client-urls", curl, "--advertise-client-urls", curl,
		"--listen-peer-urls", purl, "--initial-advertise-peer-urls", purl,
		"--initial-cluster", "test=" + purl, "--initial-cluster-state", "new",
		"--log-outputs", "stderr", "--log-level", "warn",
	}
	if !opts.Fsync {
		e.args = append(e.args, "--unsafe-no-fsync")
	}
	if t := opts.TLS; t != nil {
		e.args = append(e.args, "--cert-file", t.Cert, "--key-file", t.Key, "--trusted-ca-file", t.CA)
		if t.ClientCertAuth {
			e.args = append(e.args, "--client-cert-auth")
		}
	}
	e.args = append(e.args, opts.Args...)
	tb.Cleanup(func() {
		e.Kill()
		e.client.CloseIdleConnections()
		if tb.Failed() {
			if b, err := os.ReadFile(e.Log); err == nil && len(b) > 0 {
				tb.Logf("etcd log (last lines):\n%s", lastLines(string(b), 20))
			}
		}
	})
	if err := e.start(); err != nil {
		tb.Fatal(err)
	}
	return e
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// freePorts returns n distinct TCP ports free on addr inside ns (held open together while picked,
// so that they differ).
func freePorts(ns *sandbox.NetNS, addr string, n int) ([]int, error) {
	var ports []int
	err := ns.Do(func() error {
		for range n {
			l, err := net.Listen("tcp", net.JoinHostPort(addr, "0"))
			if err != nil {
				return err
			}
			defer l.Close()
			ports = append(ports, l.Addr().(*net.TCPAddr).Port)
		}
		return nil
	})
	return ports, err
}

// Dial connects to addr from inside the etcd's namespace (an etcd store's Options.Dialer).
func (e *Etcd) Dial(ctx context.Context, addr string) (net.Conn, error) {
	var c net.Conn
	err := e.NS.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	return c, err
}

func (e *Etcd) start() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cmd != nil {
		return errors.New("etcd is running")
	}
	logf, err := os.OpenFile(e.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	// nsenter execs etcd in place: the process Stop signals is etcd itself.
	cmd := exec.Command("nsenter", append([]string{"--net=" + e.NS.Path(), e.bin}, e.args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	e.cmd, e.exited = cmd, exited
	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := e.healthy(); err == nil {
			return nil
		} else if time.Now().After(deadline) {
			e.killLocked()
			return fmt.Errorf("etcd not healthy within 30s: %v\n%s", err, e.tail())
		}
		select {
		case <-exited:
			e.cmd = nil
			return fmt.Errorf("etcd exited at start:\n%s", e.tail())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (e *Etcd) tail() string {
	b, _ := os.ReadFile(e.Log)
	return lastLines(string(b), 10)
}

func (e *Etcd) healthy() error {
	resp, err := e.client.Get(e.scheme + "://" + e.Endpoint + "/health")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var h struct{ Health string }
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		return err
	}
	if h.Health != "true" {
		return fmt.Errorf("health %q", h.Health)
	}
	return nil
}

// Stop stops etcd with SIGTERM and waits for it (SIGKILL after 10 s). Its data stays for Restart.
func (e *Etcd) Stop() {
	e.tb.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cmd == nil {
		return
	}
	_ = e.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-e.exited:
	case <-time.After(10 * time.Second):
		e.tb.Errorf("etcd did not stop within 10s of SIGTERM: killed")
		_ = e.cmd.Process.Kill()
		<-e.exited
	}
	e.cmd = nil
}

// Kill kills etcd with SIGKILL, as a crash. Its data stays for Restart.
func (e *Etcd) Kill() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.killLocked()
}

func (e *Etcd) killLocked() {
	if e.cmd == nil {
		return
	}
	_ = e.cmd.Process.Kill()
	<-e.exited
	e.cmd = nil
}

// Restart starts a stopped or killed etcd again on the same data and address (restarting a running
// one stops it first), and waits until it is healthy.
func (e *Etcd) Restart() {
	e.tb.Helper()
	e.Stop()
	if err := e.start(); err != nil {
		e.tb.Fatal(err)
	}
}

// post calls etcd's JSON gateway (no gRPC client in the harness).
func (e *Etcd) post(path string, req, resp any) error {
	body, _ := json.Marshal(req)
	r, err := e.client.Post(e.scheme+"://"+e.Endpoint+path, "application/json", bytes.NewReader(body))
	if err != nil {
		return err
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	if r.StatusCode != http.StatusOK {
		return fmt.Errorf("etcd %s: %s: %s", path, r.Status, bytes.TrimSpace(b))
	}
	if resp != nil {
		return json.Unmarshal(b, resp)
	}
	return nil
}

// Revision returns etcd's current revision.
func (e *Etcd) Revision() int64 {
	e.tb.Helper()
	var resp struct {
		Header struct {
			Revision string `json:"revision"`
		} `json:"header"`
	}
	key := base64.StdEncoding.EncodeToString([]byte("\x00"))
	if err := e.post("/v3/kv/range", map[string]any{"key": key, "count_only": true}, &resp); err != nil {
		e.tb.Fatal(err)
	}
	rev, err := strconv.ParseInt(resp.Header.Revision, 10, 64)
	if err != nil {
		e.tb.Fatalf("etcd revision %q: %v", resp.Header.Revision, err)
	}
	return rev
}

// Compact compacts etcd's history at rev (etcd's sense: revisions before rev are gone, and a watch
// from rev still replays); rev 0 is the current revision. It returns the revision compacted at.
func (e *Etcd) Compact(rev int64) int64 {
	e.tb.Helper()
	if rev == 0 {
		rev = e.Revision()
	}
	if err := e.post("/v3/kv/compaction", map[string]any{"revision": strconv.FormatInt(rev, 10), "physical": true}, nil); err != nil {
		e.tb.Fatal(err)
	}
	return rev
}
