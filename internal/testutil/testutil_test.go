package testutil

import (
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestMissingCaps: MissingCaps agrees with the CapEff line of /proc/self/status, whatever the
// process holds (run it as root, as root without capabilities and as nobody).
func TestMissingCaps(t *testing.T) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skip(err)
	}
	var eff uint64
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			if eff, err = strconv.ParseUint(strings.TrimSpace(v), 16, 64); err != nil {
				t.Fatal(err)
			}
		}
	}
	var want []string
	for _, c := range []struct {
		name string
		bit  uint
	}{{"CAP_NET_ADMIN", unix.CAP_NET_ADMIN}, {"CAP_SYS_ADMIN", unix.CAP_SYS_ADMIN}} {
		if eff&(1<<c.bit) == 0 {
			want = append(want, c.name)
		}
	}
	if got := MissingCaps(); !slices.Equal(got, want) {
		t.Errorf("MissingCaps() = %q, want %q (CapEff %016x)", got, want, eff)
	}
}
