package pod_test

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/pod"
)

// recRuntime records what the pod facade asks of a runtime; it runs nothing.
type recRuntime struct {
	mu   sync.Mutex
	cfgs []pod.ContainerConfig
}

func (r *recRuntime) Create(_ context.Context, c pod.ContainerConfig) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cfgs = append(r.cfgs, c)
	return nil
}
func (r *recRuntime) Start(context.Context, string) error                       { return nil }
func (r *recRuntime) Stop(context.Context, string, time.Duration) error         { return nil }
func (r *recRuntime) Delete(context.Context, string) error                      { return nil }
func (r *recRuntime) Exec(context.Context, string, pod.ExecConfig) (int, error) { return 0, nil }
func (r *recRuntime) Logs(context.Context, string, io.Writer, bool) error       { return nil }
func (r *recRuntime) Status(_ context.Context, id string) (pod.ContainerStatus, error) {
	return pod.ContainerStatus{ID: id, State: pod.StateRunning}, nil
}
func (r *recRuntime) List(_ context.Context, p string) ([]pod.ContainerStatus, error) {
	return nil, nil
}

// A pod's containers get a resolv.conf naming the network's DNS server with the cluster search path
// and ndots:5 (or the pod's own with dnsPolicy None), and a hosts file with localhost, the pod's
// hostname and addresses, and its hostAliases; the hostname is a DNS alias of the pod.
func TestPodDNSFiles(t *testing.T) {
	testutil.RequireNetAdmin(t)
	host := testutil.NewNS(t, "host")
	ctx := context.Background()
	nm, err := netmgr.New(ctx, netmgr.WithStateDir(t.TempDir()), netmgr.WithRunDir(t.TempDir()), netmgr.WithHostNetNS(host.Path()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nm.Close() })
	n, err := nm.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "pods", Driver: "bridge", Subnets: []netip.Prefix{netip.MustParsePrefix("10.89.70.0/24")}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nm.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "quiet", Driver: "bridge", Subnets: []netip.Prefix{netip.MustParsePrefix("10.89.71.0/24")}, Options: map[string]string{"dns": "false"}}); err != nil {
		t.Fatal(err)
	}
	hostRC := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(hostRC, []byte("nameserver 192.0.2.53\nsearch corp.test\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	rootfs := t.TempDir()
	rt := &recRuntime{}
	pm := pod.New(nm, rt, pod.WithPause(false), pod.WithDNSDomain("k.test"), pod.WithHostResolvConf(hostRC))
	run := func(manifest string, nets ...string) (*pod.Pod, pod.ContainerConfig) {
		t.Helper()
		spec, err := pod.ParseManifest([]byte(strings.ReplaceAll(manifest, "/srv/x", rootfs)))
		if err != nil {
			t.Fatal(err)
		}
		for _, nn := range nets {
			spec.Networks = append(spec.Networks, netmgr.AttachSpec{Network: nn})
		}
		p, err := pm.Run(ctx, *spec)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = pm.Remove(ctx, p.Name) })
		return p, rt.cfgs[len(rt.cfgs)-1]
	}
	read := func(p string) string {
		t.Helper()
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	p, cfg := run(`{apiVersion: v1, kind: Pod, metadata: {name: web}, spec: {hostname: www,
  hostAliases: [{ip: 192.0.2.9, hostnames: [db.local, db]}],
  dnsConfig: {searches: [extra.test], options: [{name: ndots, value: "2"}, {name: edns0}]},
  containers: [{name: c, image: /srv/x, command: [sh]}]}}`, "pods")
	rc := read(cfg.ResolvConf)
	for _, want := range []string{"nameserver " + n.Gateways[0].String() + "\n", "search svc.k.test k.test extra.test\n", "options ndots:2 edns0\n"} {
		if !strings.Contains(rc, want) {
			t.Errorf("resolv.conf lacks %q:\n%s", want, rc)
		}
	}
	hosts := read(cfg.Hosts)
	ip := p.Sandbox.Attachments[0].IPv4.Addr().String()
	for _, want := range []string{"127.0.0.1\tlocalhost\n", ip + "\twww web\n", "192.0.2.9\tdb.local db\n"} {
		if !strings.Contains(hosts, want) {
			t.Errorf("hosts lacks %q:\n%s", want, hosts)
		}
	}
	if sb, _ := nm.Sandbox(ctx, "web"); sb == nil || len(sb.Aliases) != 1 || sb.Aliases[0] != "www" {
		t.Errorf("the hostname is not a DNS alias of the pod: %+v", sb)
	}
	// dnsPolicy None: only the pod's own settings.
	_, cfg = run(`{apiVersion: v1, kind: Pod, metadata: {name: own}, spec: {dnsPolicy: None,
  dnsConfig: {nameservers: [198.51.100.1], searches: [a.test]}, containers: [{name: c, image: /srv/x, command: [sh]}]}}`, "pods")
	if rc := read(cfg.ResolvConf); strings.Contains(rc, n.Gateways[0].String()) || !strings.Contains(rc, "nameserver 198.51.100.1\n") || strings.Contains(rc, "ndots") {
		t.Errorf("dnsPolicy None resolv.conf:\n%s", rc)
	}
	// A pod on a network with DNS off gets the host's resolvers.
	_, cfg = run(`{apiVersion: v1, kind: Pod, metadata: {name: q}, spec: {containers: [{name: c, image: /srv/x, command: [sh]}]}}`, "quiet")
	if rc := read(cfg.ResolvConf); !strings.Contains(rc, "nameserver 192.0.2.53\n") || !strings.Contains(rc, "search corp.test\n") {
		t.Errorf("pod on a network without DNS:\n%s", rc)
	}
	// Remove takes the files away.
	dir := filepath.Dir(cfg.ResolvConf)
	if err := pm.Remove(ctx, "q"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pod files left after remove: %v", err)
	}
}
