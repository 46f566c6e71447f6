package drivers

import (
	"errors"
	"testing"

	"github.com/vishvananda/netlink"
)

func TestRetryDump(t *testing.T) {
	calls := 0
	got, err := RetryDump(func() (int, error) {
		calls++
		if calls < 3 {
			return -calls, netlink.ErrDumpInterrupted
		}
		return 42, nil
	})
	if err != nil || got != 42 || calls != 3 {
		t.Fatalf("got %d, %v after %d calls; want 42, nil after 3", got, err, calls)
	}

	calls = 0
	_, err = RetryDump(func() (int, error) { calls++; return 0, netlink.ErrDumpInterrupted })
	if !errors.Is(err, netlink.ErrDumpInterrupted) || calls != DumpAttempts {
		t.Fatalf("always interrupted: %v after %d calls; want ErrDumpInterrupted after %d", err, calls, DumpAttempts)
	}

	other := errors.New("boom")
	calls = 0
	if _, err = RetryDump(func() (int, error) { calls++; return 0, other }); !errors.Is(err, other) || calls != 1 {
		t.Fatalf("other error: %v after %d calls; want it at once", err, calls)
	}
}
