package netmgr

import (
	"math/rand/v2"
	"regexp"
	"testing"
)

// TestValidNameIsTheRegexp: validName accepts exactly what the regexp it replaced accepted.
func TestValidNameIsTheRegexp(t *testing.T) {
	re := regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)
	cases := []string{"", "a", "A", "0", "_", ".", "-", "a_", "a.b-c", "a b", "a\n", "\na", "é", "aé", "a/b", "..", "a..", "Z9_-."}
	const alphabet = "aZ09_.-/ \n\x00\xc3\xa9"
	r := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		b := make([]byte, r.IntN(6))
		for i := range b {
			b[i] = alphabet[r.IntN(len(alphabet))]
		}
		cases = append(cases, string(b))
	}
	for _, s := range cases {
		if got, want := validName(s), re.MatchString(s); got != want {
			t.Errorf("validName(%q) = %v, the regexp says %v", s, got, want)
		}
	}
}
