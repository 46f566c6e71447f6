// Package kube reads Pod manifests through Kubernetes' own types (k8s.io/api core/v1, decoded
// strictly with sigs.k8s.io/yaml): a misspelt field is an error naming it, as kubectl's is, and every
// field that a pod here does not honour yet is refused by name rather than dropped. It is a package
// of its own so that only programs that read manifests (podctl's pod commands) link Kubernetes'
// types; package pod does not import it.
package kube

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/pod"
)

// supported is the tree of manifest fields a pod honours: a key maps to its children (nil: a leaf,
// anything below it allowed). "[]" stands for every element of a list.
var supported = tree{
	"apiVersion": nil,
	"kind":       nil,
	"metadata": tree{
		"name":        nil,
		"namespace":   nil, // only "default", checked below
		"labels":      nil,
		"annotations": nil, // informational by definition
	},
	"spec": tree{
		"hostname":      nil,
		"restartPolicy": nil,
		"dnsPolicy":     nil,
		"dnsConfig": tree{
			"nameservers": nil, "searches": nil,
			"options": tree{"[]": tree{"name": nil, "value": nil}},
		},
		"hostAliases": tree{"[]": tree{"ip": nil, "hostnames": nil}},
		"containers": tree{"[]": tree{
			"name":            nil,
			"image":           nil,
			"imagePullPolicy": nil,
			"command":         nil,
			"args":            nil,
			"env":             tree{"[]": tree{"name": nil, "value": nil}},
			"ports": tree{"[]": tree{
				"name": nil, "containerPort": nil, "hostPort": nil, "hostIP": nil, "protocol": nil,
			}},
			"readinessProbe": probeFields,
			"livenessProbe":  probeFields,
		}},
	},
}

type tree map[string]any

var probeFields = tree{
	"exec":                nil,
	"tcpSocket":           tree{"port": nil, "host": nil},
	"httpGet":             tree{"path": nil, "port": nil, "host": nil, "scheme": nil},
	"initialDelaySeconds": nil,
	"periodSeconds":       nil,
	"timeoutSeconds":      nil,
	"failureThreshold":    nil,
	"successThreshold":    nil,
}

// probe converts a Kubernetes probe; named ports are the container's.
func probe(kp *corev1.Probe, mc corev1.Container, where string) (*pod.Probe, error) {
	if kp == nil {
		return nil, nil
	}
	bad := func(format string, a ...any) error {
		return fmt.Errorf("manifest: %w: %s: %s", netmgr.ErrInvalid, where, fmt.Sprintf(format, a...))
	}
	port := func(v intstr.IntOrString, field string) (uint16, error) {
		if v.Type == intstr.String {
			for _, p := range mc.Ports {
				if p.Name == v.StrVal {
					return uint16(p.ContainerPort), nil
				}
			}
			return 0, bad("%s %q names no port of the container", field, v.StrVal)
		}
		if v.IntVal < 1 || v.IntVal > 65535 {
			return 0, bad("%s %d is not 1-65535", field, v.IntVal)
		}
		return uint16(v.IntVal), nil
	}
	secs := func(n int32) time.Duration { return time.Duration(n) * time.Second }
	p := &pod.Probe{
		InitialDelay: secs(kp.InitialDelaySeconds), Period: secs(kp.PeriodSeconds), Timeout: secs(kp.TimeoutSeconds),
		FailureThreshold: int(kp.FailureThreshold), SuccessThreshold: int(kp.SuccessThreshold),
	}
	var err error
	switch {
	case kp.Exec != nil:
		if len(kp.Exec.Command) == 0 {
			return nil, bad("exec.command is empty")
		}
		p.Exec = kp.Exec.Command
	case kp.TCPSocket != nil:
		p.Host = kp.TCPSocket.Host
		if p.TCPPort, err = port(kp.TCPSocket.Port, "tcpSocket.port"); err != nil {
			return nil, err
		}
	case kp.HTTPGet != nil:
		if kp.HTTPGet.Scheme != "" && kp.HTTPGet.Scheme != corev1.URISchemeHTTP {
			return nil, bad("httpGet.scheme %s is not supported (HTTP only)", kp.HTTPGet.Scheme)
		}
		p.Host, p.HTTPPath = kp.HTTPGet.Host, kp.HTTPGet.Path
		if p.HTTPPath == "" {
			p.HTTPPath = "/"
		}
		if p.HTTPPort, err = port(kp.HTTPGet.Port, "httpGet.port"); err != nil {
			return nil, err
		}
	default:
		return nil, bad("want one of exec, tcpSocket and httpGet")
	}
	if kp.SuccessThreshold > 1 && strings.HasSuffix(where, "livenessProbe") {
		return nil, bad("successThreshold must be 1 for a liveness probe")
	}
	return p, nil
}

// ParsePod reads a Kubernetes v1 Pod manifest (YAML or JSON) and returns the validated pod.Spec it
// describes. Errors wrap netmgr.ErrInvalid and name the field at fault.
func ParsePod(data []byte) (*pod.Spec, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("manifest: %w: %s", netmgr.ErrInvalid, fmt.Sprintf(format, a...))
	}
	if strings.TrimSpace(string(data)) == "" {
		return nil, bad("empty")
	}
	// The fields as written, for the paths of unknown and unsupported ones.
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, bad("%s", cleanDecodeErr(err))
	}
	var raw map[string]any
	if err := json.Unmarshal(js, &raw); err != nil {
		return nil, bad("a manifest is a mapping: %s", cleanDecodeErr(err))
	}
	if f := unknown(raw, reflect.TypeFor[corev1.Pod](), ""); f != "" {
		return nil, bad("unknown field %q", f)
	}
	var p corev1.Pod
	if err := yaml.UnmarshalStrict(data, &p); err != nil {
		return nil, bad("%s", cleanDecodeErr(err))
	}
	if p.Kind != "Pod" {
		return nil, bad("kind is %q, want Pod", p.Kind)
	}
	if p.APIVersion != "v1" {
		return nil, bad("apiVersion is %q, want v1", p.APIVersion)
	}
	if f := unsupported(raw, supported, ""); f != "" {
		return nil, bad("%s is not supported", f)
	}
	if p.Name == "" {
		return nil, bad("no metadata.name")
	}
	if p.Namespace != "" && p.Namespace != "default" {
		return nil, bad("metadata.namespace %q is not supported (pods here have no namespaces; leave it out or say default)", p.Namespace)
	}
	switch p.Spec.RestartPolicy {
	case "", corev1.RestartPolicyNever, corev1.RestartPolicyAlways, corev1.RestartPolicyOnFailure:
	default:
		return nil, bad("spec.restartPolicy %q is not Always, OnFailure or Never", p.Spec.RestartPolicy)
	}
	s := &pod.Spec{Name: p.Name, Labels: p.Labels, Hostname: p.Spec.Hostname, RestartPolicy: pod.RestartPolicy(p.Spec.RestartPolicy),
		DNSPolicy: string(p.Spec.DNSPolicy)}
	if dc := p.Spec.DNSConfig; dc != nil {
		s.DNSConfig = &pod.DNSConfig{Searches: dc.Searches}
		for j, ns := range dc.Nameservers {
			a, err := netip.ParseAddr(ns)
			if err != nil {
				return nil, bad("spec.dnsConfig.nameservers[%d] %q is not an IP address", j, ns)
			}
			s.DNSConfig.Nameservers = append(s.DNSConfig.Nameservers, a)
		}
		for _, o := range dc.Options {
			if o.Value != nil {
				s.DNSConfig.Options = append(s.DNSConfig.Options, o.Name+":"+*o.Value)
			} else {
				s.DNSConfig.Options = append(s.DNSConfig.Options, o.Name)
			}
		}
	}
	for j, ha := range p.Spec.HostAliases {
		a, err := netip.ParseAddr(ha.IP)
		if err != nil {
			return nil, bad("spec.hostAliases[%d].ip %q is not an IP address", j, ha.IP)
		}
		s.HostAliases = append(s.HostAliases, pod.HostAlias{IP: a, Hostnames: ha.Hostnames})
	}
	for i, mc := range p.Spec.Containers {
		where := fmt.Sprintf("spec.containers[%d]", i)
		c := pod.ContainerSpec{
			Name: mc.Name, Image: mc.Image, Command: mc.Command, Args: mc.Args,
			ImagePullPolicy: pod.PullPolicy(mc.ImagePullPolicy),
		}
		var err error
		if c.Readiness, err = probe(mc.ReadinessProbe, mc, where+".readinessProbe"); err != nil {
			return nil, err
		}
		if c.Liveness, err = probe(mc.LivenessProbe, mc, where+".livenessProbe"); err != nil {
			return nil, err
		}
		for j, e := range mc.Env {
			if e.Name == "" {
				return nil, bad("%s.env[%d] has no name", where, j)
			}
			if strings.Contains(e.Name, "=") {
				// NAME=VALUE would split elsewhere, and the container see another variable.
				return nil, bad("%s.env[%d]: name %q cannot hold '='", where, j, e.Name)
			}
			c.Env = append(c.Env, e.Name+"="+e.Value)
		}
		for j, mp := range mc.Ports {
			pw := fmt.Sprintf("%s.ports[%d]", where, j)
			if mp.ContainerPort < 1 || mp.ContainerPort > 65535 {
				return nil, bad("%s.containerPort %d is not 1-65535", pw, mp.ContainerPort)
			}
			if mp.HostPort < 0 || mp.HostPort > 65535 {
				return nil, bad("%s.hostPort %d is not 0-65535", pw, mp.HostPort)
			}
			port := pod.Port{Name: mp.Name, ContainerPort: uint16(mp.ContainerPort), HostPort: uint16(mp.HostPort), Protocol: string(mp.Protocol)}
			if mp.HostIP != "" {
				ip, err := netip.ParseAddr(mp.HostIP)
				if err != nil {
					return nil, bad("%s.hostIP %q is not an IP address", pw, mp.HostIP)
				}
				port.HostIP = ip
			}
			c.Ports = append(c.Ports, port)
		}
		s.Containers = append(s.Containers, c)
	}
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	return s, nil
}

// unsupported returns the path of the first field in v (sorted, depth first) that allowed does not
// hold, or "".
func unsupported(v any, allowed tree, path string) string {
	switch v := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			sub, ok := allowed[k]
			p := k
			if path != "" {
				p = path + "." + k
			}
			if !ok {
				if empty(v[k]) {
					continue // written but empty (kubectl's `resources: {}`, `status: {}`): means nothing
				}
				return p
			}
			if t, ok := sub.(tree); ok {
				if f := unsupported(v[k], t, p); f != "" {
					return f
				}
			}
		}
	case []any:
		elem, _ := allowed["[]"].(tree)
		for i, e := range v {
			if f := unsupported(e, elem, path+"["+strconv.Itoa(i)+"]"); f != "" {
				return f
			}
		}
	}
	return ""
}

var unmarshaler = reflect.TypeFor[json.Unmarshaler]()

// unknown returns the path of the first field in v (sorted, depth first) that type t has no field
// for, or "": what kubectl calls an unknown field.
func unknown(v any, t reflect.Type, path string) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if reflect.PointerTo(t).Implements(unmarshaler) {
		return "" // decodes itself (Quantity, IntOrString, Time): the strict decode judges it
	}
	switch v := v.(type) {
	case map[string]any:
		var fields map[string]reflect.Type
		switch t.Kind() {
		case reflect.Struct:
			fields = jsonFields(t)
		case reflect.Map:
		default:
			return ""
		}
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			p := k
			if path != "" {
				p = path + "." + k
			}
			ft := t
			if fields != nil {
				var ok bool
				if ft, ok = fields[k]; !ok {
					return p
				}
			} else {
				ft = t.Elem()
			}
			if f := unknown(v[k], ft, p); f != "" {
				return f
			}
		}
	case []any:
		if t.Kind() != reflect.Slice {
			return ""
		}
		for i, e := range v {
			if f := unknown(e, t.Elem(), path+"["+strconv.Itoa(i)+"]"); f != "" {
				return f
			}
		}
	}
	return ""
}

// jsonFields returns a struct's fields by their JSON names, with inlined structs' fields.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" && (strings.Contains(opts, "inline") || f.Anonymous) {
			for k, v := range jsonFields(f.Type) {
				out[k] = v
			}
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = f.Type
	}
	return out
}

func empty(v any) bool {
	switch v := v.(type) {
	case nil:
		return true
	case map[string]any:
		return len(v) == 0
	case []any:
		return len(v) == 0
	}
	return false
}

// cleanDecodeErr shortens the decoders' wording: `error unmarshaling JSON: while decoding JSON: json:
// unknown field "imagePulPolicy"` becomes `unknown field "spec.containers[0].imagePulPolicy"` where
// the decoder names the path, else `unknown field "imagePulPolicy"`.
func cleanDecodeErr(err error) string {
	s := err.Error()
	for _, p := range []string{"error converting YAML to JSON: ", "error unmarshaling JSON: ", "while decoding JSON: ", "json: "} {
		s = strings.ReplaceAll(s, p, "")
	}
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "unmarshal errors:\n", "")), " ")
}
