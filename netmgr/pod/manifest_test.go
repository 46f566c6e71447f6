package pod

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/netmgr/netmgr/netmgr"
)

const goodManifest = `
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  restartPolicy: Always   # ignored
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
    image: /srv/rootfs
    args: [sh, -c, "true"]
`

func TestParseManifest(t *testing.T) {
	s, err := ParseManifest([]byte(goodManifest))
	if err != nil {
		t.Fatal(err)
	}
	want := &Spec{
		Name:   "web",
		Labels: map[string]string{"app": "web"},
		Containers: []ContainerSpec{
			{
				Name: "httpd", Image: "rootfs:/srv/rootfs", Command: []string{"httpd", "-f"}, Args: []string{"-p", "8080"},
				Env: []string{"A=1", "EMPTY="},
				Ports: []Port{
					{Name: "http", ContainerPort: 8080, HostPort: 18080, Protocol: "TCP"},
					{ContainerPort: 53, HostPort: 5353, Protocol: "UDP", HostIP: netip.MustParseAddr("127.0.0.1")},
				},
			},
			{Name: "client", Image: "/srv/rootfs", Args: []string{"sh", "-c", "true"}},
		},
	}
	if !reflect.DeepEqual(s, want) {
		t.Fatalf("got  %+v\nwant %+v", s, want)
	}
	pub := s.publish()
	if len(pub) != 2 || pub[0].HostPort != 18080 || pub[0].ContainerPort != 8080 || pub[0].Protocol != "tcp" ||
		pub[1].Protocol != "udp" || pub[1].HostIP != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("publish = %+v", pub)
	}
}

func TestParseManifestErrors(t *testing.T) {
	base := func(containers string) string {
		return "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n" + containers
	}
	for _, tc := range []struct {
		name, in, want string
	}{
		{"empty", "", "empty"},
		{"not yaml", "kind: [", "manifest"},
		{"wrong kind", "apiVersion: v1\nkind: Deployment\nmetadata: {name: p}\n", `kind is "Deployment"`},
		{"wrong version", "apiVersion: v2\nkind: Pod\nmetadata: {name: p}\n", `apiVersion is "v2"`},
		{"no name", "apiVersion: v1\nkind: Pod\nspec: {containers: [{name: a, image: /r, command: [x]}]}\n", "no metadata.name"},
		{"bad name", "apiVersion: v1\nkind: Pod\nmetadata: {name: Web_1}\nspec: {containers: [{name: a, image: /r, command: [x]}]}\n", "pod name"},
		{"no containers", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {}\n", "no containers"},
		{"host network", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {hostNetwork: true}\n", "hostNetwork"},
		{"init containers", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {initContainers: [{name: i}]}\n", "initContainers"},
		{"no image", base("  - {name: a, command: [x]}\n"), "no image"},
		{"no command for rootfs", base("  - {name: a, image: /r}\n"), "no default command"},
		{"relative rootfs", base("  - {name: a, image: 'rootfs:r', command: [x]}\n"), "not an absolute path"},
		{"duplicate container", base("  - {name: a, image: /r, command: [x]}\n  - {name: a, image: /r, command: [x]}\n"), "given twice"},
		{"bad container name", base("  - {name: A, image: /r, command: [x]}\n"), "name \"A\""},
		{"value from", base("  - {name: a, image: /r, command: [x], env: [{name: X, valueFrom: {fieldRef: {fieldPath: x}}}]}\n"), "valueFrom"},
		{"port zero", base("  - {name: a, image: /r, command: [x], ports: [{containerPort: 0}]}\n"), "containerPort 0"},
		{"port too big", base("  - {name: a, image: /r, command: [x], ports: [{containerPort: 70000}]}\n"), "containerPort 70000"},
		{"sctp", base("  - {name: a, image: /r, command: [x], ports: [{containerPort: 80, protocol: SCTP}]}\n"), "SCTP"},
		{"bad host ip", base("  - {name: a, image: /r, command: [x], ports: [{containerPort: 80, hostPort: 80, hostIP: x}]}\n"), "hostIP"},
		{"same host port", base("  - {name: a, image: /r, command: [x], ports: [{containerPort: 80, hostPort: 80}]}\n  - {name: b, image: /r, command: [x], ports: [{containerPort: 81, hostPort: 80}]}\n"), "hostPort 80"},
		{"reserved label", "apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {netmgr.io/pod: x}}\nspec: {containers: [{name: a, image: /r, command: [x]}]}\n", "reserved"},
		{"id too long", "apiVersion: v1\nkind: Pod\nmetadata: {name: " + strings.Repeat("p", 60) + "}\nspec: {containers: [{name: " + strings.Repeat("c", 20) + ", image: /r, command: [x]}]}\n", "too long"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseManifest([]byte(tc.in))
			if err == nil {
				t.Fatalf("no error, want one containing %q", tc.want)
			}
			if !errors.Is(err, netmgr.ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

func TestLocalRootFS(t *testing.T) {
	for in, want := range map[string]string{"/srv/r": "/srv/r", "rootfs:/srv/r": "/srv/r", "busybox": "", "docker.io/library/busybox:1": ""} {
		got, ok := LocalRootFS(in)
		if got != want || ok != (want != "") {
			t.Errorf("LocalRootFS(%q) = %q, %v", in, got, ok)
		}
	}
}

func TestParseManifestDNS(t *testing.T) {
	s, err := ParseManifest([]byte(`{apiVersion: v1, kind: Pod, metadata: {name: p}, spec: {dnsPolicy: None,
  dnsConfig: {nameservers: [192.0.2.1, "2001:db8::1"], searches: [a.test], options: [{name: ndots, value: "1"}, {name: rotate}]},
  hostAliases: [{ip: 192.0.2.9, hostnames: [db]}], containers: [{name: c, image: /x, command: [sh]}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	want := &DNSConfig{Nameservers: []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")}, Searches: []string{"a.test"}, Options: []string{"ndots:1", "rotate"}}
	if s.DNSPolicy != DNSNone || !reflect.DeepEqual(s.DNSConfig, want) || !reflect.DeepEqual(s.HostAliases, []HostAlias{{IP: netip.MustParseAddr("192.0.2.9"), Hostnames: []string{"db"}}}) {
		t.Fatalf("got %q %+v %+v", s.DNSPolicy, s.DNSConfig, s.HostAliases)
	}
	for _, bad := range []string{
		`spec: {dnsPolicy: None, containers: [{name: c, image: /x, command: [sh]}]}`,
		`spec: {dnsPolicy: Weird, containers: [{name: c, image: /x, command: [sh]}]}`,
		`spec: {dnsConfig: {nameservers: [nope]}, containers: [{name: c, image: /x, command: [sh]}]}`,
		`spec: {dnsConfig: {searches: ["a b"]}, containers: [{name: c, image: /x, command: [sh]}]}`,
		`spec: {hostAliases: [{ip: x, hostnames: [a]}], containers: [{name: c, image: /x, command: [sh]}]}`,
		`spec: {hostAliases: [{ip: 192.0.2.1}], containers: [{name: c, image: /x, command: [sh]}]}`,
	} {
		if _, err := ParseManifest([]byte("{apiVersion: v1, kind: Pod, metadata: {name: p}, " + bad + "}")); !errors.Is(err, netmgr.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", bad, err)
		}
	}
}
