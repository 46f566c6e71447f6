package integration

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/agent"
	"github.com/netmgr/netmgr/netmgr/service"
	"github.com/netmgr/netmgr/netmgr/service/proxy"
)

// TestNRIService: a netmgr service selecting CRI pods by label reaches them. Two CRI pods labelled
// app=web (one with an extra network from netmgr-nri's annotation) run an HTTP server answering with
// their name; the service controller (netmgr/service/proxy, run by the agent in this process on the
// test host's Manager and state) programs a service selecting app=web; a third pod reaches its cluster
// IP and both pods answer; a pod started while netmgr-nri is down joins at its restart (Synchronize),
// a pod removed leaves. netmgr-nri puts the pods' labels on netmgr-cni's records of them, so each
// pod is exactly one endpoint, at its primary (CNI) address, never at its extra network's.
func TestNRIService(t *testing.T) {
	const network, extra = "nrisvc", "svcextra"
	c := newCRIHost(t, network, "10.249.0.0/24", withNRI(nil))
	c.must(t, "network", "create", extra, "--driver", "bridge", "--subnet", "10.248.0.0/24")
	plug := c.startNRIPlugin()

	web := map[string]string{"app": "web"}
	web1 := runLabelledPod(t, c, "web1", web, map[string]string{nriAnnotation: extra})
	web2 := runLabelledPod(t, c, "web2", web, nil)
	client := runLabelledPod(t, c, "client", map[string]string{"app": "client"}, nil)
	webs := map[string]*criPod{"web1": web1, "web2": web2}
	for name, p := range webs {
		if _, err := c.exec(p, "sh", "-c", "echo "+name+" > /www/id && httpd -p 8080 -h /www"); err != nil {
			t.Fatal(err)
		}
	}

	// The records: the pod's labels on netmgr-cni's record (the primary address), not on netmgr-nri's.
	recs := c.nriSandboxes()
	for name, p := range webs {
		var primary []string
		for _, s := range c.cniSandboxes() {
			if s.Labels["cni.netmgr.io/container-id"] == p.id && !strings.HasPrefix(s.Name, "nri-") {
				primary = append(primary, s.Name)
				if s.Labels["app"] != "web" || s.Labels["nri.netmgr.io/pod"] != "default/"+name || s.Labels["cni.netmgr.io/network"] != network {
					t.Errorf("pod %s: netmgr-cni's record %s has labels %v, want app=web, nri.netmgr.io/pod=default/%s beside netmgr-cni's", name, s.Name, s.Labels, name)
				}
			}
		}
		r, ok := recs[p.id]
		if len(primary) != 1 || !ok || r.Labels["app"] != "" || r.Labels["nri.netmgr.io/primary"] != primary[0] {
			t.Errorf("pod %s: netmgr-cni records %v, netmgr-nri record %+v: want one netmgr-cni record, named by nri.netmgr.io/primary, and no pod label on netmgr-nri's", name, primary, r)
		}
	}

	ctx := context.Background()
	m, err := netmgr.New(ctx, netmgr.WithStateDir(c.stateDir), netmgr.WithRunDir(c.runDir),
		netmgr.WithHostNetNS(c.ns.Path()), netmgr.WithLogger(testutil.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	reg := service.New(m.NetworkStore())
	svc, err := reg.Create(ctx, service.Spec{Name: "web", Selector: web, Ports: []service.Port{{Port: 80, TargetPort: 8080}}})
	if err != nil {
		m.Close()
		t.Fatal(err)
	}
	a, err := agent.New(agent.Config{Manager: m, Controllers: []agent.Controller{proxy.New(proxy.Options{Resync: 500 * time.Millisecond})},
		Logger: testutil.Logger(t)})
	if err != nil {
		m.Close()
		t.Fatal(err)
	}
	actx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(actx) }()
	t.Cleanup(func() { // before the pods go (cleanups run last first)
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
		if err := reg.Delete(context.Background(), svc.Name); err != nil {
			t.Errorf("delete service: %v", err)
		}
		m.Close()
	})

	// The endpoints: exactly one per web pod, at its primary address.
	want := map[string]string{}
	for _, p := range webs {
		want[p.ip] = network
	}
	var got map[string]string
	for deadline := time.Now().Add(20 * time.Second); ; {
		eps, err := reg.Endpoints(ctx)
		if err != nil {
			t.Fatal(err)
		}
		got = map[string]string{}
		n := 0
		for _, e := range eps {
			if e.Labels["app"] != "web" {
				continue
			}
			n++
			for _, ad := range e.Addrs {
				got[ad.IP.String()] = ad.Network
			}
		}
		if n == len(webs) && maps.Equal(got, want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("endpoints of app=web: %d with addresses %v, want %d with %v (each pod once, at its primary address)", n, got, len(webs), want)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// The client pod reaches the cluster IP, and both pods answer.
	cns := testutil.Open(t, recs[client.id].NetNS)
	addr := netip.AddrPortFrom(svc.ClusterIP, 80).String()
	get := func(timeout time.Duration) (string, error) {
		var conn net.Conn
		if err := cns.Do(func() (err error) { conn, err = net.DialTimeout("tcp", addr, timeout); return err }); err != nil {
			return "", err
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(timeout + time.Second))
		fmt.Fprintf(conn, "GET /id HTTP/1.0\r\nHost: web\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return strings.TrimSpace(string(b)), err
	}
	for deadline := time.Now().Add(20 * time.Second); ; {
		_, err := get(time.Second)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("client pod: cluster IP %s never answered: %v", addr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	answered := map[string]int{}
	for i := 0; i < 40; i++ {
		id, err := get(2 * time.Second)
		if err != nil {
			t.Fatalf("connection %d to %s: %v", i, addr, err)
		}
		answered[id]++
	}
	ids := slices.Sorted(maps.Keys(answered))
	if !slices.Equal(ids, []string{"web1", "web2"}) {
		t.Errorf("40 connections to the cluster IP were answered by %v, want web1 and web2", answered)
	}
	t.Logf("40 connections to %s: %v", addr, answered)

	// A pod started while the plugin is down gets its labels at the plugin's Synchronize, and then
	// answers too; a pod removed leaves the rotation.
	plug.kill()
	web3 := runLabelledPod(t, c, "web3", web, nil)
	if _, err := c.exec(web3, "sh", "-c", "echo web3 > /www/id && httpd -p 8080 -h /www"); err != nil {
		t.Fatal(err)
	}
	if l := primaryRecordLabels(c, web3.id); l == nil || l["app"] != "" {
		t.Fatalf("pod web3, started while the plugin was down: netmgr-cni's record has labels %v, want none of the pod's: the test proves nothing", l)
	}
	plug.start()
	if l := primaryRecordLabels(c, web3.id); l["app"] != "web" {
		t.Errorf("pod web3 after the plugin's restart: netmgr-cni's record has labels %v, want app=web", l)
	}
	if err := c.removePod(web1); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); ; {
		answered = map[string]int{}
		for i := 0; i < 30; i++ {
			if id, err := get(2 * time.Second); err == nil {
				answered[id]++
			}
		}
		if maps.Equal(answered, map[string]int{"web2": answered["web2"], "web3": answered["web3"]}) && answered["web2"] > 0 && answered["web3"] > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after web3 started (plugin down, then restarted) and web1 was removed: 30 connections answered by %v, want web2 and web3 only", answered)
		}
	}
	t.Logf("after web3 came and web1 went: %v", answered)
}

// primaryRecordLabels returns the labels of netmgr-cni's record of the pod (nil: none), which
// netmgr-nri gives the pod's labels.
func primaryRecordLabels(c *criHost, podID string) map[string]string {
	c.t.Helper()
	for _, s := range c.cniSandboxes() {
		if s.Labels["cni.netmgr.io/container-id"] == podID && !strings.HasPrefix(s.Name, "nri-") {
			return s.Labels
		}
	}
	return nil
}

// runLabelledPod is runPodAnnotated with the pod's labels given.
func runLabelledPod(t *testing.T, c *criHost, name string, labels, annotations map[string]string) *criPod {
	t.Helper()
	ctx, cancel := c.ctx()
	defer cancel()
	p := &criPod{name: name, config: c.sandboxConfig(name)}
	p.config.Labels = labels
	p.config.Annotations = annotations
	run, err := c.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: p.config})
	if err != nil {
		t.Fatalf("RunPodSandbox %s: %v", name, err)
	}
	p.id = run.PodSandboxId
	c.ids = append(c.ids, p.id)
	st, err := c.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: p.id})
	if err != nil {
		t.Fatalf("PodSandboxStatus %s: %v", name, err)
	}
	p.ip = st.GetStatus().GetNetwork().GetIp()
	cr, err := c.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: p.id,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "busybox"},
			Image:    &runtimeapi.ImageSpec{Image: c.busyboxRef},
			Command:  []string{"sleep", "3600"},
			LogPath:  "busybox.log",
			Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
				NamespaceOptions: p.config.Linux.SecurityContext.NamespaceOptions,
			}},
		},
		SandboxConfig: p.config,
	})
	if err != nil {
		t.Fatalf("CreateContainer in %s: %v", name, err)
	}
	p.container = cr.ContainerId
	c.ids = append(c.ids, p.container)
	if _, err := c.rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: p.container}); err != nil {
		t.Fatalf("StartContainer in %s: %v", name, err)
	}
	return p
}
