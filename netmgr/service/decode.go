package service

import "net/netip"

// decodeEndpointFast decodes an endpoint record as this package writes it (encoding/json of
// Endpoint: known keys, strings without escapes or non-ASCII bytes, no whitespace needed) without
// reflection: the first list of a large cluster decodes 100,000 of them. ok is false for anything
// else (then encoding/json decides, with its exact semantics and errors).
func decodeEndpointFast(b []byte) (e *Endpoint, ok bool) {
	d := fastDec{b: b}
	e = &Endpoint{}
	ok = d.object(func(key string) bool {
		switch key {
		case "sandbox":
			e.Sandbox, ok = d.str()
			return ok
		case "node":
			e.Node, ok = d.str()
			return ok
		case "labels":
			if d.null() {
				return true
			}
			if e.Labels == nil {
				e.Labels = map[string]string{}
			}
			return d.object(func(k string) bool {
				v, ok := d.str()
				e.Labels[k] = v
				return ok
			})
		case "addrs":
			if d.null() {
				e.Addrs = nil
				return true
			}
			if e.Addrs == nil {
				e.Addrs = make([]EndpointAddr, 0, 1) // [] is an empty slice, not nil, as in encoding/json
			}
			e.Addrs = e.Addrs[:0]
			return d.array(func() bool {
				var a EndpointAddr
				ok := d.object(func(k string) bool {
					switch k {
					case "network":
						a.Network, ok = d.str()
						return ok
					case "ip":
						s, ok := d.str()
						if !ok {
							return false
						}
						if s == "" {
							a.IP = netip.Addr{}
							return true
						}
						ip, err := netip.ParseAddr(s)
						a.IP = ip
						return err == nil
					case "global":
						a.Global, ok = d.boolean()
						return ok
					}
					return false
				})
				e.Addrs = append(e.Addrs, a)
				return ok
			})
		}
		return false
	})
	d.ws()
	return e, ok && d.i == len(d.b)
}

// fastDec reads the plain JSON that encoding/json writes; every method reports false for anything
// it does not know.
type fastDec struct {
	b []byte
	i int
}

func (d *fastDec) ws() {
	for d.i < len(d.b) && (d.b[d.i] == ' ' || d.b[d.i] == '\t' || d.b[d.i] == '\n' || d.b[d.i] == '\r') {
		d.i++
	}
}

// lit consumes s (after whitespace) if it comes next.
func (d *fastDec) lit(s string) bool {
	d.ws()
	if len(d.b)-d.i < len(s) || string(d.b[d.i:d.i+len(s)]) != s {
		return false
	}
	d.i += len(s)
	return true
}

func (d *fastDec) null() bool { return d.lit("null") }

func (d *fastDec) boolean() (bool, bool) {
	if d.lit("true") {
		return true, true
	}
	return false, d.lit("false")
}

// str reads a string of printable ASCII without escapes.
func (d *fastDec) str() (string, bool) {
	if !d.lit(`"`) {
		return "", false
	}
	start := d.i
	for d.i < len(d.b) {
		c := d.b[d.i]
		switch {
		case c == '"':
			s := string(d.b[start:d.i])
			d.i++
			return s, true
		case c == '\\' || c < 0x20 || c >= 0x80:
			return "", false
		}
		d.i++
	}
	return "", false
}

// object reads {"key": value, ...}, field reading each value.
func (d *fastDec) object(field func(key string) bool) bool {
	if !d.lit("{") {
		return false
	}
	if d.lit("}") {
		return true
	}
	for {
		k, ok := d.str()
		if !ok || !d.lit(":") || !field(k) {
			return false
		}
		if d.lit("}") {
			return true
		}
		if !d.lit(",") {
			return false
		}
	}
}

// array reads [value, ...], elem reading each value.
func (d *fastDec) array(elem func() bool) bool {
	if !d.lit("[") {
		return false
	}
	if d.lit("]") {
		return true
	}
	for {
		if !elem() {
			return false
		}
		if d.lit("]") {
			return true
		}
		if !d.lit(",") {
			return false
		}
	}
}
