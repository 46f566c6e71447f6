package testutil

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Iperf3 runs one TCP stream for secs seconds from the network namespace at path client to an
// iperf3 server it starts in the namespace at path server, bound to ip, and returns the Gbit/s
// received. The client is retried until the server listens. Used by bench/overlay and the BGP
// benchmark; needs Debian's iperf3.
func Iperf3(ctx context.Context, server, ip, client string, secs int) (float64, error) {
	srv := exec.CommandContext(ctx, "nsenter", "--net="+server, "iperf3", "-s", "-1", "-B", ip, "-p", "5201")
	srv.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := srv.Start(); err != nil {
		return 0, err
	}
	defer func() {
		_ = srv.Process.Kill()
		_ = srv.Wait()
	}()
	var out []byte
	var err error
	for try := 0; try < 50; try++ {
		cctx, cancel := context.WithTimeout(ctx, time.Duration(secs+30)*time.Second)
		out, err = exec.CommandContext(cctx, "nsenter", "--net="+client, "iperf3", "-c", ip, "-p", "5201",
			"--connect-timeout", "3000", "-t", strconv.Itoa(secs), "-O", "1", "-J").Output()
		cancel()
		// iperf3 -J reports "unable to connect" in its JSON, with exit status 0 in some versions.
		if err == nil && strings.Contains(string(out), `"error"`) {
			err = errors.New("iperf3 reported an error")
		}
		if err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond) // the server is not listening yet
	}
	if err != nil {
		return 0, fmt.Errorf("iperf3 %s -> %s: %w: %s", client, ip, err, out)
	}
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return 0, fmt.Errorf("iperf3 output: %w", err)
	}
	if res.End.SumReceived.BitsPerSecond <= 0 {
		return 0, fmt.Errorf("iperf3 %s -> %s: no throughput in its report: %s", client, ip, out)
	}
	return res.End.SumReceived.BitsPerSecond / 1e9, nil
}
