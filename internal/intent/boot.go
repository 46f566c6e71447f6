package intent

import (
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

var (
	bootOnce  sync.Once
	bootID    string
	bootStart time.Time
)

// CurrentBoot returns this boot's ID and when it started (zero values where /proc does not tell).
func CurrentBoot() (string, time.Time) {
	bootOnce.Do(func() {
		if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
			bootID = strings.TrimSpace(string(b))
		}
		if b, err := os.ReadFile("/proc/stat"); err == nil {
			for _, line := range strings.Split(string(b), "\n") {
				if v, ok := strings.CutPrefix(line, "btime "); ok {
					if s, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
						bootStart = time.Unix(s, 0)
					}
				}
			}
		}
	})
	return bootID, bootStart
}
