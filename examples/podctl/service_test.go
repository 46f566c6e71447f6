package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/sandbox"
)

// serviceJSON is what the CLI contract promises `service inspect -o json` prints.
type serviceJSON struct {
	Name      string            `json:"name"`
	Type      string            `json:"type"`
	ClusterIP string            `json:"cluster_ip"`
	Selector  map[string]string `json:"selector"`
	Ports     []struct {
		Port       int    `json:"port"`
		TargetPort int    `json:"target_port"`
		Protocol   string `json:"protocol"`
		NodePort   int    `json:"node_port"`
	} `json:"ports"`
	Endpoints []struct {
		IP      string `json:"ip"`
		Node    string `json:"node"`
		Sandbox string `json:"sandbox"`
	} `json:"endpoints"`
}

func (c *cli) service(name string) serviceJSON {
	c.t.Helper()
	var v serviceJSON
	out := c.ok("service", "inspect", name, "-o", "json")
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		c.t.Fatalf("service inspect %s: %v\n%s", name, err, out)
	}
	return v
}

// answer serves TCP port 8080 in the sandbox's namespace with id.
func answer(t *testing.T, netns, id string) {
	t.Helper()
	ns := testutil.Open(t, netns)
	var ln net.Listener
	if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp", ":8080"); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintln(c, id)
			c.Close()
		}
	}()
}

func ask(ns *sandbox.NetNS, addr string) (string, error) {
	var c net.Conn
	if err := ns.Do(func() (err error) { c, err = net.DialTimeout("tcp", addr, time.Second); return err }); err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// podctl service create/ls/inspect/rm on one host (the bolt state file), bad input refused in one
// line with nothing changed, and `podctl agent` (podctl-pod) programming the service.
func TestPodctlService(t *testing.T) {
	testutil.RequireRoot(t)
	bin, _ := buildBinaries(t)
	out, err := exec.Command("go", "build", "-tags", "podctl_pod", "-o", filepath.Join(filepath.Dir(bin), "podctl-pod"), ".").CombinedOutput()
	if err != nil {
		t.Fatalf("build podctl-pod: %v\n%s", err, out)
	}
	host := testutil.NewNS(t, "host")
	c := newCLI(t, bin, host)
	t.Cleanup(func() {
		c.runIn("", "sandbox", "rm", "web1", "web2", "client")
		c.runIn("", "network", "rm", "pods")
	})
	c.ok("network", "create", "pods", "--subnet", "10.77.0.0/24")

	out1 := c.ok("service", "create", "web", "--selector", "app=web", "--port", "80:8080", "--port", "53/udp", "--type", "NodePort")
	if !strings.HasPrefix(out1, "web 10.") {
		t.Fatalf("service create printed %q", out1)
	}
	s := c.service("web")
	if s.Type != "NodePort" || s.Selector["app"] != "web" || len(s.Ports) != 2 || s.Ports[0].TargetPort != 8080 ||
		s.Ports[1].Protocol != "udp" || s.Ports[0].NodePort < 30000 || len(s.Endpoints) != 0 {
		t.Fatalf("service inspect: %+v", s)
	}

	before := c.ok("service", "ls", "-o", "json")
	for _, bad := range []struct {
		want string
		args []string
	}{
		{"not a host address of the service CIDR", []string{"service", "create", "a", "--selector", "app=a", "--port", "80", "--cluster-ip", "192.168.1.1"}},
		{"is taken by service \"web\"", []string{"service", "create", "a", "--selector", "app=a", "--port", "80", "--cluster-ip", s.ClusterIP}},
		{"outside the node port range 30000-32767", []string{"service", "create", "a", "--selector", "app=a", "--port", "80", "--node-port", "80"}},
		{fmt.Sprintf("node port %d/tcp is taken", s.Ports[0].NodePort), []string{"service", "create", "a", "--selector", "app=a", "--port", "80", "--node-port", fmt.Sprint(s.Ports[0].NodePort)}},
		{"must be a number from 1 to 65535", []string{"service", "create", "a", "--selector", "app=a", "--port", "0"}},
		{"must be a number from 1 to 65535", []string{"service", "create", "a", "--selector", "app=a", "--port", "65536"}},
		{"selector is empty", []string{"service", "create", "a", "--port", "80"}},
		{"is not K=V", []string{"service", "create", "a", "--selector", "app", "--port", "80"}},
		{"a service named \"web\" exists", []string{"service", "create", "web", "--selector", "app=web", "--port", "80"}},
		{"no service named \"nope\"", []string{"service", "inspect", "nope"}},
		{"no service named \"nope\"", []string{"service", "rm", "nope"}},
	} {
		c.fails(bad.want, bad.args...)
	}
	if after := c.ok("service", "ls", "-o", "json"); after != before {
		t.Fatalf("bad input changed the services:\n%s\nwant\n%s", after, before)
	}

	// The agent on one host (bolt): endpoints come from labelled sandboxes.
	agentCmd := exec.Command("nsenter", append(append([]string{"--net=" + c.host, bin}, c.globals...), "agent")...)
	agentCmd.Stderr = os.Stderr
	if err := agentCmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = agentCmd.Process.Signal(syscall.SIGTERM)
		_ = agentCmd.Wait()
	})
	for _, n := range []string{"web1", "web2"} {
		c.ok("sandbox", "create", n, "--network", "pods", "--label", "app=web")
		answer(t, c.inspect(n).NetNS, n)
	}
	c.ok("sandbox", "create", "client", "--network", "pods")
	client := testutil.Open(t, c.inspect("client").NetNS)
	seen := map[string]bool{}
	deadline := time.Now().Add(20 * time.Second)
	for len(seen) < 2 {
		id, err := ask(client, s.ClusterIP+":80")
		if err == nil {
			seen[id] = true
		}
		if time.Now().After(deadline) {
			t.Fatalf("through the cluster IP after 20 s: %v (last error %v)", seen, err)
		}
	}
	deadline = time.Now().Add(20 * time.Second)
	for len(c.service("web").Endpoints) != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("service inspect: endpoints %+v, want web1 and web2", c.service("web").Endpoints)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if ls := c.ok("service", "ls"); !strings.Contains(ls, "web") || !strings.Contains(ls, "app=web") {
		t.Fatalf("service ls:\n%s", ls)
	}
	c.ok("service", "rm", "web")
	if ls := c.ok("service", "ls", "-o", "json"); strings.TrimSpace(ls) != "[]" {
		t.Fatalf("after rm: %s", ls)
	}
}
