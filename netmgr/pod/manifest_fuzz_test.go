package pod

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/netmgr/netmgr/netmgr"
)

// FuzzParseManifest: ParseManifest never panics, refuses only with netmgr.ErrInvalid, and what it
// accepts is a Spec that validates and that reads back the same when written out again as a Pod
// manifest. The seeds are the manifests of TestParseManifest and TestParseManifestErrors; crashers
// found by fuzzing go to testdata/fuzz/FuzzParseManifest.
func FuzzParseManifest(f *testing.F) {
	base := "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n"
	for _, s := range []string{
		goodManifest,
		"", "kind: [", "apiVersion: v1\nkind: Deployment\nmetadata: {name: p}\n",
		"apiVersion: v1\nkind: Pod\nspec: {containers: [{name: a, image: /r, command: [x]}]}\n",
		"apiVersion: v1\nkind: Pod\nmetadata: {name: Web_1}\nspec: {containers: [{name: a, image: /r, command: [x]}]}\n",
		"apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {hostNetwork: true}\n",
		"apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {initContainers: [{name: i}]}\n",
		base + "  - {name: a, command: [x]}\n",
		base + "  - {name: a, image: 'rootfs:r', command: [x]}\n",
		base + "  - {name: a, image: /r, command: [x]}\n  - {name: a, image: /r, command: [x]}\n",
		base + "  - {name: a, image: /r, command: [x], env: [{name: X, valueFrom: {fieldRef: {fieldPath: x}}}]}\n",
		base + "  - {name: a, image: /r, command: [x], env: [{name: X, value: 'a=b'}, {name: Y}]}\n",
		base + "  - {name: a, image: /r, command: [x], env: [{name: 'A=B'}]}\n", // TestParseManifestEnvName
		base + "  - {name: a, image: /r, command: [x], ports: [{containerPort: 70000}]}\n",
		base + "  - {name: a, image: /r, command: [x], ports: [{containerPort: 80, protocol: SCTP}]}\n",
		base + "  - {name: a, image: /r, command: [x], ports: [{containerPort: 80, hostPort: 80, hostIP: '::1'}]}\n",
		base + "  - {name: a, image: /r, command: [x], ports: [{containerPort: 80, hostPort: 80}]}\n  - {name: b, image: /r, command: [x], ports: [{containerPort: 81, hostPort: 80}]}\n",
		"apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {netmgr.io/pod: x}}\nspec: {containers: [{name: a, image: /r, command: [x]}]}\n",
		`{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "j"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := ParseManifest(data)
		if err != nil {
			if !errors.Is(err, netmgr.ErrInvalid) {
				t.Fatalf("error %v does not wrap netmgr.ErrInvalid", err)
			}
			return
		}
		if err := s.Validate(); err != nil {
			t.Fatalf("accepted a spec that does not validate: %v\n%+v", err, s)
		}
		out := manifestOf(s)
		back, err := ParseManifest(out)
		if err != nil {
			t.Fatalf("spec %+v written out as\n%s\ndoes not parse: %v", s, out, err)
		}
		if !reflect.DeepEqual(back, s) {
			t.Fatalf("spec does not read back the same from\n%s\ngot  %+v\nwant %+v", out, back, s)
		}
	})
}

// manifestOf writes s as the Pod manifest (JSON) that ParseManifest reads it from.
func manifestOf(s *Spec) []byte {
	type obj = map[string]any
	containers := make([]obj, 0, len(s.Containers))
	for _, c := range s.Containers {
		var env []obj
		if c.Env != nil {
			env = []obj{}
		}
		for _, e := range c.Env {
			k, v, _ := strings.Cut(e, "=")
			env = append(env, obj{"name": k, "value": v})
		}
		var ports []obj
		if c.Ports != nil {
			ports = []obj{}
		}
		for _, p := range c.Ports {
			po := obj{"name": p.Name, "containerPort": p.ContainerPort, "hostPort": p.HostPort, "protocol": p.Protocol}
			if p.HostIP.IsValid() {
				po["hostIP"] = p.HostIP.String()
			}
			ports = append(ports, po)
		}
		co := obj{"name": c.Name, "image": c.Image, "command": c.Command, "args": c.Args}
		if env != nil {
			co["env"] = env
		}
		if ports != nil {
			co["ports"] = ports
		}
		containers = append(containers, co)
	}
	b, err := json.Marshal(obj{
		"apiVersion": "v1", "kind": "Pod",
		"metadata": obj{"name": s.Name, "labels": s.Labels},
		"spec":     obj{"hostname": s.Hostname, "containers": containers},
	})
	if err != nil {
		panic(err)
	}
	return b
}

// TestParseManifestEnvName: an env name holding '=' is refused; it used to become NAME=VALUE with
// another split (name "A=B", value "" gave A with value "B="), so the container saw another
// variable than the manifest named. An entry without a name is reported by its own position.
func TestParseManifestEnvName(t *testing.T) {
	base := "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - {name: a, image: /r, command: [x], env: "
	for _, tc := range []struct{ env, want string }{
		{"[{name: 'A=B'}]", `env "A=B": a name cannot hold '='`},
		{"[{name: A, value: '1'}, {value: '2'}]", "env entry #2 has no name"},
	} {
		_, err := ParseManifest([]byte(base + tc.env + "}\n"))
		if !errors.Is(err, netmgr.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("env %s: %v, want ErrInvalid saying %q", tc.env, err, tc.want)
		}
	}
}
