package all_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/netmgr/netmgr/drivers"
	_ "github.com/netmgr/netmgr/drivers/all"
)

// TestAllDrivers: every driver package of this module (a directory under drivers/ whose code calls
// drivers.Register) is imported here, so that podctl and netmgr-cni offer it; a new driver that is
// not added to all.go fails this test.
func TestAllDrivers(t *testing.T) {
	dirs, err := os.ReadDir("..")
	if err != nil {
		t.Fatal(err)
	}
	registered := drivers.Names()
	var found int
	for _, d := range dirs {
		if !d.IsDir() || d.Name() == "all" {
			continue
		}
		files, _ := filepath.Glob(filepath.Join("..", d.Name(), "*.go"))
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(b), "drivers.Register(") {
				found++
				if !slices.Contains(registered, d.Name()) {
					t.Errorf("drivers/%s registers a driver, but drivers/all does not import it (registered: %v)", d.Name(), registered)
				}
			}
		}
	}
	if found < 3 {
		t.Errorf("found %d driver packages under drivers/, want at least bridge, cni and macvlan", found)
	}
}
