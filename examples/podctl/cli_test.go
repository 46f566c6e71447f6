package main

import (
	"bytes"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/netmgr/netmgr/netmgr"
)

// TestUsageErrors runs podctl in process on input it must refuse before touching any state: each is
// exit status 1 and one line on stderr.
func TestUsageErrors(t *testing.T) {
	dirs := []string{"--state-dir", t.TempDir(), "--run-dir", t.TempDir()}
	tests := []struct {
		args []string
		want string
	}{
		{[]string{}, "missing command"},
		{[]string{"bogus"}, `unknown command "bogus" for "podctl"`},
		{[]string{"netwrk", "ls"}, "did you mean network?"},
		{[]string{"network"}, "network: missing command"},
		{[]string{"network", "bogus"}, `unknown command "bogus" for "podctl network"`},
		{[]string{"network", "create"}, "network create: want NAME"},
		{[]string{"network", "create", "n", "--bogus"}, "network create: unknown flag: --bogus"},
		{[]string{"network", "create", "n", "--subnet", "10.0.0.0/33"}, `invalid subnet "10.0.0.0/33": prefix length out of range`},
		{[]string{"network", "create", "n", "--subnet", "nonsense"}, `invalid subnet "nonsense"`},
		{[]string{"network", "create", "n", "--gateway", "10.0.0"}, `invalid gateway "10.0.0"`},
		{[]string{"network", "create", "n", "--opt", "novalue"}, `invalid --opt: "novalue" is not KEY=VALUE`},
		{[]string{"network", "create", "n", "--mtu", "-1"}, "invalid --mtu -1"},
		{[]string{"network", "rm"}, "network rm: want at least one NAME"},
		{[]string{"sandbox", "attach", "s"}, `required flag(s) "network" not set`},
		{[]string{"sandbox", "attach", "s", "--network", "n,ip=nope"}, `invalid --network "n,ip=nope"`},
		{[]string{"sandbox", "detach", "s"}, `required flag(s) "network" not set`},
		{[]string{"sandbox", "create", "s", "--network", "n,foo=bar"}, `unknown key "foo"`},
		{[]string{"sandbox", "create", "s", "--network", "n,ip=10.0.0"}, `invalid --network "n,ip=10.0.0": ip "10.0.0"`},
		{[]string{"sandbox", "create", "s", "--network", "n,mac=zz"}, "is not a MAC address"},
		{[]string{"sandbox", "create", "s", "--label", "x"}, "invalid --label"},
		{[]string{"sandbox", "exec", "s"}, "sandbox exec: want NAME -- CMD"},
		{[]string{"sandbox", "exec", "s", "--"}, "sandbox exec: want NAME -- CMD"},
		{[]string{"--store", "zk://localhost:2181", "network", "ls"}, `store URL "zk://localhost:2181": unknown scheme`},
		// podctl hands a cluster store to podctl-pod, which is not next to the test binary.
		{[]string{"--store", "etcd://localhost:2379", "network", "ls"}, "commands on a cluster store are served by"},
		{[]string{"--store", "bolt://", "network", "ls"}, "no file path"},
		{[]string{"-o", "yaml", "version"}, `invalid output format "yaml"`},
		{[]string{"version", "extra"}, `version: unexpected argument "extra"`},
	}
	for _, tt := range tests {
		if !leanBuild && strings.HasPrefix(tt.want, "commands on a cluster store") {
			continue // podctl-pod would dial it
		}
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(append(append([]string{}, dirs...), tt.args...), &out, &errb)
			if code != 1 {
				t.Errorf("exit status %d, want 1", code)
			}
			msg := errb.String()
			if strings.Count(msg, "\n") != 1 || !strings.HasPrefix(msg, "podctl: ") {
				t.Errorf("stderr = %q, want one line starting with \"podctl: \"", msg)
			}
			if !strings.Contains(msg, tt.want) {
				t.Errorf("stderr = %q, want it to contain %q", msg, tt.want)
			}
		})
	}
}

func TestHelpAndVersion(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"version"}, &out, &errb); code != 0 || !strings.HasPrefix(out.String(), "podctl dev ") {
		t.Errorf("version: status %d, stdout %q, stderr %q", code, out.String(), errb.String())
	}
	out.Reset()
	if code := run([]string{"network", "create", "--help"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "--subnet") {
		t.Errorf("network create --help: status %d, stdout %q", code, out.String())
	}
	if errb.Len() != 0 {
		t.Errorf("stderr = %q, want nothing", errb.String())
	}
}

func TestParseAttach(t *testing.T) {
	tests := []struct {
		in      string
		want    netmgr.AttachSpec
		wantErr string
	}{
		{in: "n1", want: netmgr.AttachSpec{Network: "n1"}},
		{
			in: "n1,ip=10.0.0.5,ip=fd00::5,mac=02:42:AC:11:00:02,ifname=net1",
			want: netmgr.AttachSpec{Network: "n1", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("fd00::5")},
				MAC: "02:42:ac:11:00:02", IfName: "net1"},
		},
		{in: "", wantErr: "no network name"},
		{in: ",ip=10.0.0.1", wantErr: "no network name"},
		{in: "n1,ip", wantErr: "not KEY=VALUE"},
		{in: "n1,ifname=a,ifname=b", wantErr: "ifname given twice"},
		{in: "n1,mac=02:42:ac:11:00:02,mac=02:42:ac:11:00:03", wantErr: "mac given twice"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseAttach(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseAttach(%q) error = %v, want %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("parseAttach(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

// TestSandboxJSON checks that the contract's keys are present even when the library would omit them.
func TestSandboxJSON(t *testing.T) {
	s := &netmgr.Sandbox{Name: "a", NetNS: "/run/netmgr/netns/a", Attachments: []netmgr.Attachment{
		{Network: "n1", Interface: "eth0", IPv4: netip.MustParsePrefix("10.0.0.2/24"), MAC: "02:00:00:00:00:01"},
	}}
	var b bytes.Buffer
	if err := writeJSON(&b, toJSON(s)); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{`"name": "a"`, `"netns": "/run/netmgr/netns/a"`, `"network": "n1"`, `"interface": "eth0"`,
		`"ipv4": "10.0.0.2/24"`, `"ipv6": ""`, `"mac": "02:00:00:00:00:01"`} {
		if !strings.Contains(b.String(), k) {
			t.Errorf("JSON lacks %s:\n%s", k, b.String())
		}
	}
	if strings.Count(b.String(), `"ipv4"`) != 1 {
		t.Errorf("ipv4 printed more than once:\n%s", b.String())
	}
}

// unusableDirs are --state-dir and --run-dir under a regular file: a Manager cannot open there, so an
// in-process podctl that fails to refuse its input stops before it touches this host's network.
func unusableDirs(t *testing.T) []string {
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return []string{"--state-dir", filepath.Join(f, "state"), "--run-dir", filepath.Join(f, "run")}
}

// TestRepeatedFlags: a second --gateway of one family or a second --opt KEY used to win silently.
func TestRepeatedFlags(t *testing.T) {
	dirs := unusableDirs(t)
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--gateway", "10.8.0.5", "--gateway", "10.8.0.6"}, "--gateway given twice for IPv4: 10.8.0.5 and 10.8.0.6"},
		{[]string{"--gateway", "fd00::1", "--gateway", "10.8.0.1", "--gateway", "fd00::2"}, "--gateway given twice for IPv6: fd00::1 and fd00::2"},
		{[]string{"--opt", "hairpin=true", "--opt", "hairpin=false"}, "--opt hairpin given twice"},
		{[]string{"--opt", "masquerade=true", "--opt", "hairpin=false", "--opt", "masquerade=true"}, "--opt masquerade given twice"},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			args := append(append(append([]string{}, dirs...), "network", "create", "n", "--subnet", "10.8.0.0/24", "--subnet", "fd00::/64"), tt.args...)
			var out, errb bytes.Buffer
			if code := run(args, &out, &errb); code != 1 || errb.String() != "podctl: "+tt.want+"\n" {
				t.Errorf("status %d, stderr %q; want 1 and %q", code, errb.String(), tt.want)
			}
		})
	}
	// One gateway of each family is dual stack, not a repetition.
	f := networkFlags{subnets: []string{"10.8.0.0/24", "fd00::/64"}, gateways: []string{"10.8.0.5", "fd00::5"},
		opts: []string{"hairpin=false", "masquerade=false"}}
	s, err := f.spec("n")
	if err != nil || len(s.Gateways) != 2 || len(s.Options) != 2 {
		t.Fatalf("dual-stack gateways and two options: %+v, %v", s, err)
	}
}

// TestRelativeStorePath: a relative bolt:// path is made absolute, as --state-dir and --run-dir are;
// a damaged file is reported by its absolute path, in one line, exit 1.
func TestRelativeStorePath(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	if err := os.WriteFile("st.db", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	code := run(append(unusableDirs(t), "--store", "bolt://st.db", "network", "ls"), &out, &errb)
	want := "podctl: state file " + filepath.Join(dir, "st.db") + " is corrupt (the file is empty)"
	if code != 1 || strings.Count(errb.String(), "\n") != 1 || !strings.HasPrefix(errb.String(), want) || out.Len() != 0 {
		t.Errorf("status %d, stdout %q, stderr %q; want 1 and one line starting %q", code, out.String(), errb.String(), want)
	}
}

// TestCommandTree: a run builds only the top-level command it names, found past the global flags and
// their values; anything else builds them all (help, completion, suggestions for a typo).
func TestCommandTree(t *testing.T) {
	all := "agent gc network node pod sandbox service version"
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"version"}, "version"},
		{[]string{"--state-dir", "version", "network", "ls"}, "network"},
		{[]string{"-o", "json", "sandbox", "ls"}, "sandbox"},
		{[]string{"--output=json", "gc"}, "gc"},
		{[]string{"-ojson", "--debug", "network", "ls"}, "network"},
		{[]string{"--node", "pod", "--run-dir=/x", "sandbox", "rm", "a"}, "sandbox"},
		{[]string{"netwrk", "ls"}, all},
		{[]string{"--debug"}, all},
		{[]string{"help", "network"}, all},
		{[]string{"--", "network"}, all},
		{nil, all},
	} {
		var names []string
		for _, c := range newRootCmd(&globals{stdout: io.Discard, stderr: io.Discard}, tt.args).Commands() {
			names = append(names, c.Name())
		}
		if got := strings.Join(names, " "); got != tt.want {
			t.Errorf("commands built for %q = %q, want %q", tt.args, got, tt.want)
		}
	}
}
