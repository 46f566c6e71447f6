package kube

import (
	"errors"
	"os/exec"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/pod"
)

const good = `
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: default
  labels: {app: web}
  annotations: {note: "kept out of the spec"}
spec:
  restartPolicy: Never
  hostname: www
  containers:
  - name: httpd
    image: rootfs:/srv/rootfs
    command: [httpd, -f]
    args: [-p, "8080"]
    env:
    - {name: A, value: "1"}
    - {name: EMPTY}
    ports:
    - {name: http, containerPort: 8080, hostPort: 18080, protocol: TCP}
    - {containerPort: 53, protocol: UDP, hostIP: 127.0.0.1, hostPort: 5353}
  - name: client
    image: 127.0.0.1:5000/busybox:test
    imagePullPolicy: IfNotPresent
    args: [sh, -c, "true"]
`

// TestParsePodKubectl: what `kubectl run --dry-run=client -o yaml` writes, empty fields and all.
func TestParsePodKubectl(t *testing.T) {
	m := "apiVersion: v1\nkind: Pod\nmetadata:\n  creationTimestamp: null\n  labels: {run: web}\n  name: web\nspec:\n" +
		"  containers:\n  - image: busybox:1\n    name: web\n    resources: {}\n  restartPolicy: Never\nstatus: {}\n"
	s, err := ParsePod([]byte(m))
	if err != nil || s.Name != "web" || s.Containers[0].Image != "busybox:1" {
		t.Fatalf("%+v %v", s, err)
	}
}

func TestParsePodProbes(t *testing.T) {
	m := "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - name: c\n    image: busybox:1\n    ports: [{name: web, containerPort: 8080}]\n" +
		"    readinessProbe: {httpGet: {path: /healthz, port: web}, periodSeconds: 2, failureThreshold: 1}\n" +
		"    livenessProbe: {exec: {command: [cat, /tmp/alive]}, initialDelaySeconds: 3, timeoutSeconds: 2}\n"
	s, err := ParsePod([]byte(m))
	if err != nil {
		t.Fatal(err)
	}
	r, l := s.Containers[0].Readiness, s.Containers[0].Liveness
	if r == nil || r.HTTPPort != 8080 || r.HTTPPath != "/healthz" || r.Period != 2*time.Second || r.FailureThreshold != 1 {
		t.Errorf("readiness %+v", r)
	}
	if l == nil || len(l.Exec) != 2 || l.InitialDelay != 3*time.Second || l.Timeout != 2*time.Second {
		t.Errorf("liveness %+v", l)
	}
}

// TestParsePodSameAsCore: what both parsers accept, they read alike.
func TestParsePodSameAsCore(t *testing.T) {
	s, err := ParsePod([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	core, err := pod.ParseManifest([]byte(strings.NewReplacer("  namespace: default\n", "", "  annotations: {note: \"kept out of the spec\"}\n", "", "  restartPolicy: Never\n", "").Replace(good)))
	if err != nil {
		t.Fatal(err)
	}
	if s.RestartPolicy != pod.RestartNever {
		t.Errorf("restartPolicy %q", s.RestartPolicy)
	}
	s.RestartPolicy = ""
	if !reflect.DeepEqual(s, core) {
		t.Fatalf("kube %+v\ncore %+v", s, core)
	}
	if s.Hostname != "www" || s.Containers[1].ImagePullPolicy != pod.PullIfNotPresent || len(s.Containers[0].Ports) != 2 {
		t.Fatalf("%+v", s)
	}
}

func TestParsePodRefuses(t *testing.T) {
	base := "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - {name: c, image: busybox:1}\n"
	for _, tc := range []struct{ manifest, want string }{
		{strings.Replace(base, "image: busybox:1", "image: busybox:1, imagePulPolicy: Never", 1), `unknown field "spec.containers[0].imagePulPolicy"`},
		{strings.Replace(base, "spec:", "spec:\n  hostnme: x", 1), `unknown field "spec.hostnme"`},
		{strings.Replace(base, "metadata: {name: p}", "metadata: {name: p, lables: {a: b}}", 1), `unknown field "metadata.lables"`},
		{strings.Replace(base, "image: busybox:1", "image: busybox:1, ports: [{containerPort: 80, hostport: 8080}]", 1), `unknown field "spec.containers[0].ports[0].hostport"`},
		{strings.Replace(base, "image: busybox:1", "image: busybox:1, resources: {limits: {cpu: 1}}", 1), "spec.containers[0].resources is not supported"},
		{strings.Replace(base, "spec:", "spec:\n  nodeName: n1", 1), "spec.nodeName is not supported"},
		{strings.Replace(base, "spec:", "spec:\n  hostNetwork: true", 1), "spec.hostNetwork is not supported"},
		{strings.Replace(base, "spec:", "spec:\n  initContainers: [{name: i, image: busybox:1}]", 1), "spec.initContainers is not supported"},
		{strings.Replace(base, "spec:", "spec:\n  volumes: [{name: v, emptyDir: {}}]", 1), "spec.volumes is not supported"},
		{strings.Replace(base, "image: busybox:1", "image: busybox:1, env: [{name: A, valueFrom: {fieldRef: {fieldPath: x}}}]", 1), "spec.containers[0].env[0].valueFrom is not supported"},
		{strings.Replace(base, "image: busybox:1", "image: busybox:1, livenessProbe: {grpc: {port: 9}}", 1), "spec.containers[0].livenessProbe.grpc is not supported"},
		{strings.Replace(base, "image: busybox:1", "image: busybox:1, livenessProbe: {tcpSocket: {port: web}}", 1), `tcpSocket.port "web" names no port`},
		{strings.Replace(base, "metadata: {name: p}", "metadata: {name: p, namespace: kube-system}", 1), `metadata.namespace "kube-system" is not supported`},
		{strings.Replace(base, "spec:", "spec:\n  restartPolicy: Sometimes", 1), `spec.restartPolicy "Sometimes" is not Always, OnFailure or Never`},
		{strings.Replace(base, "image: busybox:1", "image: busybox:1, readinessProbe: {httpGet: {port: 80, scheme: HTTPS}}", 1), "httpGet.scheme HTTPS is not supported"},
		{strings.Replace(base, "image: busybox:1", "image: busybox:1, imagePullPolicy: Sometimes", 1), `imagePullPolicy "Sometimes"`},
		{strings.Replace(base, "image: busybox:1", "image: busybox:1, ports: [{containerPort: x}]", 1), "cannot unmarshal string"},
		{strings.Replace(base, "kind: Pod", "kind: Deployment", 1), `kind is "Deployment", want Pod`},
		{base + "spec: {}\n", "already set"},
		{"", "empty"},
		{"- a\n", "a manifest is a mapping"},
	} {
		_, err := ParsePod([]byte(tc.manifest))
		if !errors.Is(err, netmgr.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("want %q, got %v\n%s", tc.want, err, tc.manifest)
		}
		if err != nil && strings.Contains(err.Error(), "\n") {
			t.Errorf("two lines: %q", err)
		}
	}
}

// TestCoreDoesNotLinkKube: the pod facade, its containerd runtime and netmgr stay free of
// Kubernetes' API types; only this package brings them.
func TestCoreDoesNotLinkKube(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "github.com/netmgr/netmgr/netmgr/pod", "github.com/netmgr/netmgr/netmgr/pod/containerd").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v: %s", err, out)
	}
	for _, p := range strings.Fields(string(out)) {
		if strings.HasPrefix(p, "k8s.io/api/") || strings.HasPrefix(p, "k8s.io/apimachinery/") {
			t.Errorf("netmgr/pod links %s", p)
		}
	}
}

// The DNS fields of a pod (see netmgr/pod's resolv.conf and hosts files) come through the Kubernetes
// types as they do through the core parser.
func TestParsePodDNS(t *testing.T) {
	m := "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  dnsPolicy: None\n" +
		"  dnsConfig: {nameservers: [10.96.0.10], searches: [svc.cluster.local], options: [{name: ndots, value: \"2\"}, {name: edns0}]}\n" +
		"  hostAliases: [{ip: 10.1.2.3, hostnames: [db, db.local]}]\n" +
		"  containers:\n  - {name: c, image: busybox:1}\n"
	s, err := ParsePod([]byte(m))
	if err != nil {
		t.Fatal(err)
	}
	if s.DNSPolicy != "None" || s.DNSConfig == nil || len(s.DNSConfig.Nameservers) != 1 || s.DNSConfig.Nameservers[0].String() != "10.96.0.10" ||
		strings.Join(s.DNSConfig.Options, ",") != "ndots:2,edns0" || len(s.HostAliases) != 1 || s.HostAliases[0].Hostnames[1] != "db.local" {
		t.Fatalf("parsed %+v %+v %+v", s.DNSPolicy, s.DNSConfig, s.HostAliases)
	}
	if _, err := ParsePod([]byte(strings.Replace(m, "10.1.2.3", "db", 1))); err == nil {
		t.Fatal("a host alias that is not an IP was taken")
	}
}
