package service

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"testing"
)

// The fast endpoint decoder gives what encoding/json gives, or declines (and DecodeEndpoint then
// uses encoding/json): records as written, random ones, and odd ones.
func TestDecodeEndpointFast(t *testing.T) {
	check := func(name string, b []byte, wantFast bool) {
		t.Helper()
		var want Endpoint
		werr := json.Unmarshal(b, &want)
		got, ok := decodeEndpointFast(b)
		if ok != wantFast {
			t.Errorf("%s: fast path taken %v, want %v: %s", name, ok, wantFast, b)
		}
		if ok && (werr != nil || !reflect.DeepEqual(*got, want)) {
			t.Errorf("%s: fast %+v, encoding/json %+v (%v): %s", name, *got, want, werr, b)
		}
		d, err := DecodeEndpoint(b)
		if (err != nil) != (werr != nil) || err == nil && !reflect.DeepEqual(*d, want) {
			t.Errorf("%s: DecodeEndpoint %+v (%v), encoding/json %+v (%v)", name, d, err, want, werr)
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	word := func() string {
		const chars = "abcXYZ019-_./:@"
		b := make([]byte, r.IntN(12))
		for i := range b {
			b[i] = chars[r.IntN(len(chars))]
		}
		return string(b)
	}
	for i := 0; i < 2000; i++ {
		e := Endpoint{Sandbox: word(), Node: word()}
		if r.IntN(4) > 0 {
			e.Labels = map[string]string{}
			for j := r.IntN(4); j > 0; j-- {
				e.Labels[word()] = word()
			}
		}
		for j := r.IntN(3); j > 0; j-- {
			a := EndpointAddr{Network: word(), Global: r.IntN(2) == 0}
			switch r.IntN(3) {
			case 0:
				a.IP = netip.AddrFrom4([4]byte{10, byte(r.IntN(256)), byte(r.IntN(256)), byte(r.IntN(256))})
			case 1:
				a.IP = netip.MustParseAddr(fmt.Sprintf("fd00:%x::%x", r.IntN(65536), r.IntN(65536)))
			}
			e.Addrs = append(e.Addrs, a)
		}
		b, _ := json.Marshal(e)
		check(fmt.Sprintf("random %d", i), b, true)
	}
	for _, c := range []struct {
		b    string
		fast bool
	}{
		{`{}`, true},
		{`{"sandbox":"a","labels":null,"addrs":null}`, true},
		{` { "sandbox" : "a" , "labels" : { } , "addrs" : [ ] } `, true},
		{`{"sandbox":"a","sandbox":"b"}`, true},
		{`{"addrs":[{"ip":"10.0.0.1","global":false}]}`, true},
		{`{"sandbox":"a\u003cb"}`, false},          // escapes: encoding/json
		{`{"sandbox":"é"}`, false},                 // non-ASCII
		{`{"Sandbox":"a"}`, false},                 // keys match case-insensitively in encoding/json
		{`{"sandbox":"a","extra":1}`, false},       // unknown keys are skipped there
		{`{"addrs":[{"ip":"10.0.0.999"}]}`, false}, // an error there
		{`{"sandbox":"a"} x`, false},
		{`{"sandbox":"a"`, false},
		{`{"labels":{"a":1}}`, false},
		{`[]`, false},
		{``, false},
	} {
		check(c.b, []byte(c.b), c.fast)
	}
}
