package testutil

import (
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
)

// Logger logs to the test's log (shown for a failing test, or with -v) at debug level when
// NETMGR_TEST_DEBUG is set, else at info level.
func Logger(tb testing.TB) *slog.Logger {
	level := slog.LevelInfo
	if os.Getenv("NETMGR_TEST_DEBUG") != "" {
		level = slog.LevelDebug
	}
	w := &tbWriter{tb: tb}
	// Cleanups run last-in first-out: this one runs after those registered later (which stop what
	// logs), and a line logged after it is dropped instead of panicking the test binary.
	tb.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

type tbWriter struct {
	tb   testing.TB
	mu   sync.Mutex
	done bool
}

func (w *tbWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.tb.Log(string(trimNL(p)))
	}
	return len(p), nil
}

func trimNL(p []byte) []byte {
	if n := len(p); n > 0 && p[n-1] == '\n' {
		return p[:n-1]
	}
	return p
}

var _ io.Writer = (*tbWriter)(nil)
