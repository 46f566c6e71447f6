package portmap

import (
	"errors"
	"testing"
)

// FuzzParsePublish: Parse (the --publish syntax, netmgr.ParsePublish) never panics, refuses only with
// ErrInvalid, and what it accepts is well formed and reads back the same from its own String form.
// The seeds are TestParse's inputs; crashers found by fuzzing go to testdata/fuzz/FuzzParsePublish.
func FuzzParsePublish(f *testing.F) {
	for _, s := range []string{
		"8080:80", "8080:80/udp", "8080:80/TCP", "192.0.2.1:53:5353/udp", "0.0.0.0:1:65535",
		"[2001:db8::1]:443:8443", "[::]:443:8443/udp", "8000-8002:80-82", "9-9:7-7/udp",
		"", "80", "8080:80/sctp", "8080:80/", "0:80", "8080:0", "65536:80", "-1:80", "+80:80", "080:80",
		"8000-8010:80-85", "8010-8000:90-80", "8000-:80-", "8000-8001:80", "example.com:80:80",
		"2001:db8::1:80:80", "[192.0.2.1]:80:80", "[2001:db8::1]80:80", "[fe80::1%eth0]:80:80",
		"1.2.3.4:5:6:7", "[2001:db8::1]:1:2:3", "[::ffff:192.0.2.1]:80:80", "1-65535:1-65535/udp",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := Parse(s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse(%q) error %v does not wrap ErrInvalid", s, err)
			}
			if got != nil {
				t.Fatalf("Parse(%q) returned %v with its error", s, got)
			}
			return
		}
		if len(got) == 0 {
			t.Fatalf("Parse(%q) accepted it with no mapping", s)
		}
		for i, m := range got {
			if m.HostPort == 0 || m.ContainerPort == 0 || (m.Protocol != ProtoTCP && m.Protocol != ProtoUDP) {
				t.Fatalf("Parse(%q)[%d] = %+v: a port is 0 or the protocol is not tcp or udp", s, i, m)
			}
			if i > 0 && (m.HostPort != got[i-1].HostPort+1 || m.ContainerPort != got[i-1].ContainerPort+1 ||
				m.HostIP != got[0].HostIP || m.Protocol != got[0].Protocol) {
				t.Fatalf("Parse(%q): mapping %d (%+v) does not continue the range of %+v", s, i, m, got[i-1])
			}
			back, err := Parse(m.String())
			if err != nil || len(back) != 1 || back[0] != m {
				t.Fatalf("Parse(%q)[%d] = %+v prints as %q, which parses to %v, %v", s, i, m, m.String(), back, err)
			}
		}
		if got[0].HostIP.Zone() != "" {
			t.Fatalf("Parse(%q) kept a zone in host address %s", s, got[0].HostIP)
		}
	})
}
