package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// NetworksAnnotation is the Network Plumbing Working Group's (Multus') annotation naming a pod's extra
// networks.
const NetworksAnnotation = "k8s.v1.cni.cncf.io/networks"

// extraNetwork is one entry of the annotation: a netmgr network and how the pod is attached to it.
type extraNetwork struct {
	Network string
	IfName  string
	IPs     []netip.Addr
	MAC     string
}

// jsonEntry is an entry of the annotation's JSON form. Namespace is accepted as Multus writes it
// (netmgr networks have no namespace; it must be empty or the pod's).
type jsonEntry struct {
	Name      string   `json:"name"`
	Namespace string   `json:"namespace"`
	Interface string   `json:"interface"`
	IPs       []string `json:"ips"`
	MAC       string   `json:"mac"`
}

// parseNetworks parses the annotation's value: a comma list of network names (each optionally
// NAME@IFNAME), or a JSON list of objects with name, interface, ips and mac. Interfaces default to
// net1, net2, ... by position. podNamespace is the pod's namespace, which a namespace in an entry
// must equal. Every error names the entry and says what to write instead.
func parseNetworks(value, podNamespace string) ([]extraNetwork, error) {
	value = strings.TrimSpace(value)
	if value == "" {
		return nil, nil
	}
	var out []extraNetwork
	if strings.HasPrefix(value, "[") || strings.HasPrefix(value, "{") {
		if strings.HasPrefix(value, "{") {
			return nil, errors.New(`want a JSON list of objects ([{"name": "NET", ...}]), not a single object`)
		}
		dec := json.NewDecoder(bytes.NewReader([]byte(value)))
		dec.DisallowUnknownFields()
		var entries []jsonEntry
		if err := dec.Decode(&entries); err != nil {
			return nil, fmt.Errorf(`not a JSON list of {"name", "interface", "ips", "mac"} objects: %v`, err)
		}
		if dec.More() {
			return nil, errors.New("text after the JSON list")
		}
		if len(entries) == 0 {
			return nil, errors.New("an empty JSON list: leave the annotation out for no extra networks")
		}
		for i, e := range entries {
			where := fmt.Sprintf("entry %d", i+1)
			if e.Namespace != "" && e.Namespace != podNamespace {
				return nil, fmt.Errorf("%s: namespace %q: netmgr networks are not namespaced; leave namespace out", where, e.Namespace)
			}
			en := extraNetwork{Network: e.Name, IfName: e.Interface}
			for j, s := range e.IPs {
				ip, err := parseIP(s)
				if err != nil {
					return nil, fmt.Errorf("%s: ips[%d] %q: want an address such as 10.1.0.5 or 10.1.0.5/24", where, j, s)
				}
				en.IPs = append(en.IPs, ip)
			}
			if e.MAC != "" {
				hw, err := net.ParseMAC(e.MAC)
				if err != nil || len(hw) != 6 {
					return nil, fmt.Errorf("%s: mac %q: want six colon-separated hex bytes such as 02:42:ac:11:00:02", where, e.MAC)
				}
				en.MAC = hw.String()
			}
			out = append(out, en)
		}
	} else {
		for i, item := range strings.Split(value, ",") {
			item = strings.TrimSpace(item)
			en := extraNetwork{Network: item}
			if n, ifname, ok := strings.Cut(item, "@"); ok {
				en.Network, en.IfName = n, ifname
			}
			if ns, n, ok := strings.Cut(en.Network, "/"); ok {
				if ns != podNamespace {
					return nil, fmt.Errorf("entry %d %q: namespace %q: netmgr networks are not namespaced; write the network's name alone", i+1, item, ns)
				}
				en.Network = n
			}
			out = append(out, en)
		}
	}
	seenNet, seenIf := map[string]int{}, map[string]int{}
	for i := range out {
		e := &out[i]
		where := fmt.Sprintf("entry %d", i+1)
		if e.Network == "" {
			return nil, fmt.Errorf("%s: no network name (write a comma list of names, or JSON with \"name\")", where)
		}
		if !validName(e.Network) {
			return nil, fmt.Errorf("%s: network name %q must be 1-63 characters of letters, digits, '_', '.', '-', starting with a letter or digit", where, e.Network)
		}
		if j, dup := seenNet[e.Network]; dup {
			return nil, fmt.Errorf("%s: network %q is already entry %d; a pod joins a network once", where, e.Network, j+1)
		}
		seenNet[e.Network] = i
		if e.IfName == "" {
			e.IfName = "net" + strconv.Itoa(i+1)
		}
		if err := checkIfName(e.IfName); err != nil {
			return nil, fmt.Errorf("%s: interface %q: %v", where, e.IfName, err)
		}
		if j, dup := seenIf[e.IfName]; dup {
			return nil, fmt.Errorf("%s: interface %q is already entry %d's", where, e.IfName, j+1)
		}
		seenIf[e.IfName] = i
	}
	return out, nil
}

func parseIP(s string) (netip.Addr, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Addr(), nil
	}
	return netip.ParseAddr(s)
}

// checkIfName refuses what the kernel would (IFNAMSIZ, '/', ':', whitespace) and the names the primary
// network uses.
func checkIfName(n string) error {
	switch {
	case len(n) > 15:
		return errors.New("longer than the kernel's 15 characters")
	case n == "." || n == "..":
		return errors.New("not an interface name")
	case strings.ContainsAny(n, "/: \t\n"):
		return errors.New("contains '/', ':' or white space")
	case n == "lo" || n == "eth0":
		return errors.New("taken by the pod's loopback or primary network; name another (net1, ...)")
	}
	return nil
}

// validName is netmgr's rule for network names (checked again by the Manager).
func validName(name string) bool {
	if len(name) == 0 || len(name) > 63 {
		return false
	}
	for i, c := range []byte(name) {
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '_' && c != '.' && c != '-') {
			return false
		}
	}
	return true
}
