package main

import (
	"context"
	"errors"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/netmgr/netmgr/internal/testutil"
)

func buildPause(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "pause")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("build pause: %v\n%s", err, out)
	}
	return bin
}

func TestBadArgument(t *testing.T) {
	bin := buildPause(t)
	out, err := exec.Command(bin, "extra").CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("pause extra: err %v, want exit status 1 (output %q)", err, out)
	}
}

// TestHostnameAndSignals starts pause in a new UTS namespace, waits until its hostname is set (by then it
// handles signals), and checks that SIGTERM and SIGINT make it exit 0.
func TestHostnameAndSignals(t *testing.T) {
	testutil.RequireRoot(t)
	bin := buildPause(t)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			cmd := exec.Command(bin, "-hostname", "pause-test")
			cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWUTS, Setsid: true}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			t.Cleanup(func() {
				_ = cmd.Process.Kill()
				<-done
			})
			pid := strconv.Itoa(cmd.Process.Pid)
			var got string
			for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
				out, err := exec.Command("nsenter", "--uts=/proc/"+pid+"/ns/uts", "hostname").Output()
				if got = strings.TrimSpace(string(out)); err == nil && got == "pause-test" {
					break
				}
			}
			if got != "pause-test" {
				t.Fatalf("hostname in pause's UTS namespace = %q, want pause-test", got)
			}
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			select {
			case err := <-done:
				done <- err // for the cleanup
				if err != nil {
					t.Fatalf("pause after %v: %v, want exit status 0", sig, err)
				}
			case <-ctx.Done():
				t.Fatalf("pause did not exit after %v", sig)
			}
		})
	}
}
