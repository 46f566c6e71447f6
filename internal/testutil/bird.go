package testutil

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/netmgr/netmgr/sandbox"
)

// The BIRD 2 binaries (Debian's bird2 package; .ci/deps installs it).
const (
	BirdPath  = "/usr/sbin/bird"
	BirdcPath = "/usr/sbin/birdc"
)

// BirdStartTimeout bounds how long StartBird waits for a new daemon to answer on its socket. A
// healthy one answers in milliseconds; the bound is long for a loaded machine.
const BirdStartTimeout = 15 * time.Second

// RequireBird skips the test unless BIRD 2 (bird and birdc) is installed.
func RequireBird(tb testing.TB) {
	tb.Helper()
	for _, p := range []string{BirdPath, BirdcPath} {
		if _, err := os.Stat(p); err != nil {
			tb.Skipf("BGP test: needs BIRD 2 (%s missing: apt-get install bird2, or run .ci/deps)", p)
		}
	}
}

// Bird is a BIRD daemon running in a test namespace, controlled over its own socket. Every file of it
// is in Dir (the socket in a short temporary directory when Dir's path is too long for one).
//
// StartBird prepends to every configuration:
//
//	log "<Dir>/bird.log" all;
//	timeformat route iso long;
//
// so Log has the daemon's messages (and the config's own line numbers, in BIRD's error messages,
// are 4 more than in config), and Routes can read a route's time ("2006-01-02 15:04:05", local
// time) to the second. A configuration must not set timeformat route itself. The protocol time format
// stays BIRD's default (one word: "15:04:05.000", or the date for older times), which Protocols relies on.
type Bird struct {
	NS      *sandbox.NetNS
	Dir     string
	Conf    string // the configuration file
	Socket  string // the control socket, for birdc -s
	LogFile string

	tb     testing.TB
	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{} // closed when cmd has exited
	config string        // the configuration as the caller gave it
}

// StartBird writes config (after the preamble above) into a new directory of the test, runs bird in
// ns (nsenter --net), and returns once it answers on its socket; it fails the test with bird's own
// messages if it exits or does not answer within BirdStartTimeout. The daemon is killed at cleanup.
func StartBird(tb testing.TB, ns *sandbox.NetNS, config string) *Bird {
	tb.Helper()
	b, err := startBird(tb, ns, config)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// startBird is StartBird returning the error, for tests of a failing start.
func startBird(tb testing.TB, ns *sandbox.NetNS, config string) (*Bird, error) {
	tb.Helper()
	RequireBird(tb)
	dir := tb.TempDir()
	b := &Bird{NS: ns, Dir: dir, Conf: filepath.Join(dir, "bird.conf"), Socket: filepath.Join(dir, "bird.ctl"),
		LogFile: filepath.Join(dir, "bird.log"), tb: tb, config: config}
	if len(b.Socket) > 100 { // sun_path holds 108 bytes with the NUL
		sdir, err := os.MkdirTemp("", "bird")
		if err != nil {
			return nil, err
		}
		tb.Cleanup(func() { os.RemoveAll(sdir) })
		b.Socket = filepath.Join(sdir, "bird.ctl")
	}
	tb.Cleanup(b.Stop)
	if err := os.WriteFile(b.Conf, []byte(b.render(config)), 0o644); err != nil {
		return nil, err
	}
	if err := b.start(); err != nil {
		return nil, err
	}
	return b, nil
}

func (b *Bird) render(config string) string {
	return fmt.Sprintf("# written by testutil.StartBird\nlog %q all;\ntimeformat route iso long;\n\n%s\n", b.LogFile, config)
}

// start runs the daemon on b's files and waits until it answers.
func (b *Bird) start() error {
	out, err := os.OpenFile(filepath.Join(b.Dir, "bird.out"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer out.Close()
	// nsenter execs bird (no --fork), so the child is bird itself.
	cmd := exec.Command("nsenter", "--net="+b.NS.Path(), BirdPath, "-f", "-c", b.Conf, "-s", b.Socket,
		"-P", filepath.Join(b.Dir, "bird.pid"))
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // no daemon outlives a killed test binary
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start bird: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	b.mu.Lock()
	b.cmd, b.done = cmd, done
	b.mu.Unlock()
	deadline := time.Now().Add(BirdStartTimeout)
	for {
		select {
		case <-done:
			return fmt.Errorf("bird exited at start (%v):\n%s", cmd.ProcessState, b.Log())
		default:
		}
		if s, err := b.Cmd("show", "status"); err == nil && strings.Contains(s, "Daemon is up and running") {
			return nil
		}
		if time.Now().After(deadline) {
			b.Stop()
			return fmt.Errorf("bird did not answer on %s within %v:\n%s", b.Socket, BirdStartTimeout, b.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Running reports whether the daemon process is alive.
func (b *Bird) Running() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done == nil {
		return false
	}
	select {
	case <-b.done:
		return false
	default:
		return true
	}
}

// Kill ends the daemon with SIGKILL, as a crash would (no BGP notification: peers see the TCP
// connection close, and with graceful restart keep its routes for the restart time), and waits.
func (b *Bird) Kill() { b.signal(syscall.SIGKILL, 0) }

// Stop ends the daemon with SIGTERM (SIGKILL after 5 s) and waits. It is safe to call again.
func (b *Bird) Stop() { b.signal(syscall.SIGTERM, 5*time.Second) }

func (b *Bird) signal(sig syscall.Signal, grace time.Duration) {
	b.mu.Lock()
	cmd, done := b.cmd, b.done
	b.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	if grace > 0 {
		select {
		case <-done:
			return
		case <-time.After(grace):
			_ = cmd.Process.Kill()
		}
	}
	<-done
}

// Restart starts the daemon again on the same files (after Kill or Stop) and waits until it answers.
func (b *Bird) Restart() error {
	b.Stop()
	return b.start()
}

// Cmd runs birdc -s SOCKET args... and returns its output without the "BIRD x.y ready." banner. An
// error reply of BIRD (a syntax error, an unknown protocol) makes birdc 2.0.12 exit 1, so it comes
// back as an error carrying BIRD's message; an empty answer (no routes) is no error.
func (b *Bird) Cmd(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, BirdcPath, append([]string{"-s", b.Socket}, args...)...).CombinedOutput()
	s := string(out)
	if first, rest, ok := strings.Cut(s, "\n"); ok && strings.HasPrefix(first, "BIRD ") && strings.HasSuffix(first, " ready.") {
		s = rest
	}
	if err != nil {
		return s, fmt.Errorf("birdc %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(s))
	}
	return s, nil
}

// Configure replaces the configuration (config gets the preamble again) and has the daemon reload it
// (birdc configure). When BIRD refuses it, the error carries BIRD's message and the previous file is
// put back, so that the daemon and its file agree.
func (b *Bird) Configure(config string) error {
	b.mu.Lock()
	old := b.config
	b.mu.Unlock()
	if err := os.WriteFile(b.Conf, []byte(b.render(config)), 0o644); err != nil {
		return err
	}
	out, err := b.Cmd("configure")
	if err == nil && !strings.Contains(out, "Reconfigur") {
		err = fmt.Errorf("birdc configure: %s", strings.TrimSpace(out))
	}
	if err != nil {
		_ = os.WriteFile(b.Conf, []byte(b.render(old)), 0o644)
		return err
	}
	b.mu.Lock()
	b.config = config
	b.mu.Unlock()
	return nil
}

// Log returns the tail of the daemon's log file and of its stdout/stderr (where a configuration error
// at start is reported), for failure messages.
func (b *Bird) Log() string {
	var sb strings.Builder
	for _, f := range []string{"bird.out", "bird.log"} {
		data, err := os.ReadFile(filepath.Join(b.Dir, f))
		if err != nil || len(data) == 0 {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > 40 {
			lines = lines[len(lines)-40:]
		}
		fmt.Fprintf(&sb, "--- %s:\n%s\n", f, strings.Join(lines, "\n"))
	}
	if sb.Len() == 0 {
		return "(bird wrote nothing)"
	}
	return sb.String()
}

// BirdRoute is one route of `birdc show route all`.
type BirdRoute struct {
	Table    string // master4, master6...
	Prefix   netip.Prefix
	Type     string       // unicast, unreachable, blackhole, prohibit
	Protocol string       // the protocol that made it (a BGP protocol's name for a learnt route)
	Since    time.Time    // when it last changed (local time, to the second)
	From     netip.Addr   // the BGP neighbour, when BIRD shows it (only if it is not the next hop)
	Primary  bool         // the best route of its prefix ('*'), the one exported to the kernel
	NextHops []netip.Addr // the "via" addresses (several for multipath); none for unreachable or device routes
	Dev      string       // the interface of the (first) next hop
	ASPath   string       // BGP.as_path as BIRD prints it ("65001", "65001 65010"); "" when none or not BGP
}

// Routes returns every route of the daemon's tables (`show route all`).
func (b *Bird) Routes() ([]BirdRoute, error) {
	out, err := b.Cmd("show", "route", "all")
	if err != nil {
		return nil, err
	}
	return parseBirdRoutes(out)
}

// parseBirdRoutes reads BIRD 2.0's `show route all` as birdc prints it:
//
//	Table master4:
//	10.99.0.0/24         unicast [n1 2026-12-01 20:25:05] * (100) [AS65001i]
//		via 172.31.1.2 on br1
//		Type: BGP univ
//		BGP.as_path: 65001
//	                     unicast [n2 2026-12-01 20:25:07] (100) [AS65002i]
//		via 172.31.1.3 on br1
//
// A route line starts with its prefix, or with blanks for the further routes of the same prefix; its
// details follow, indented by a tab. The bracket holds the protocol, the time and, when it differs
// from the next hop, "from NEIGHBOUR".
func parseBirdRoutes(out string) ([]BirdRoute, error) {
	var routes []BirdRoute
	var table string
	var prefix netip.Prefix
	var cur *BirdRoute
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		switch {
		case trimmed == "":
			continue
		case strings.HasPrefix(line, "Table ") && strings.HasSuffix(line, ":"):
			table = strings.TrimSuffix(strings.TrimPrefix(line, "Table "), ":")
			cur = nil
			continue
		case strings.HasPrefix(line, "\t"):
			if cur == nil {
				continue // details of a route not parsed (another net type)
			}
			f := strings.Fields(trimmed)
			switch {
			case f[0] == "via" && len(f) >= 2:
				a, err := netip.ParseAddr(f[1])
				if err != nil {
					return nil, fmt.Errorf("bird route %v: next hop %q: %w", cur.Prefix, f[1], err)
				}
				cur.NextHops = append(cur.NextHops, a)
				if len(f) >= 4 && f[2] == "on" && cur.Dev == "" {
					cur.Dev = f[3]
				}
			case f[0] == "dev" && len(f) >= 2 && cur.Dev == "":
				cur.Dev = f[1]
			case f[0] == "BGP.as_path:":
				cur.ASPath = strings.TrimSpace(strings.TrimPrefix(trimmed, "BGP.as_path:"))
			}
			continue
		}
		// A route line.
		rest := line
		if !strings.HasPrefix(line, " ") {
			p, r, _ := strings.Cut(line, " ")
			np, err := netip.ParsePrefix(p)
			if err != nil {
				cur = nil // not an IP route (flowspec, VPN...): skip it and its details
				prefix = netip.Prefix{}
				continue
			}
			prefix, rest = np, r
		} else if !prefix.IsValid() {
			continue
		}
		r, err := parseBirdRouteLine(strings.TrimSpace(rest))
		if err != nil {
			return nil, fmt.Errorf("bird route %v: %w in %q", prefix, err, line)
		}
		r.Table, r.Prefix = table, prefix
		routes = append(routes, r)
		cur = &routes[len(routes)-1]
	}
	return routes, sc.Err()
}

// parseBirdRouteLine reads `unicast [n1 2026-12-01 20:25:05 from 172.31.1.2] * (100) [AS65001i]`.
func parseBirdRouteLine(s string) (BirdRoute, error) {
	var r BirdRoute
	typ, rest, ok := strings.Cut(s, " [")
	if !ok {
		return r, errors.New("no [protocol time]")
	}
	r.Type = typ
	inside, after, ok := strings.Cut(rest, "]")
	if !ok {
		return r, errors.New("unclosed [protocol time]")
	}
	f := strings.Fields(inside)
	if len(f) == 0 {
		return r, errors.New("empty [protocol time]")
	}
	r.Protocol = f[0]
	f = f[1:]
	for i, w := range f {
		if w == "from" && i+1 < len(f) {
			a, err := netip.ParseAddr(f[i+1])
			if err != nil {
				return r, fmt.Errorf("from %q: %w", f[i+1], err)
			}
			r.From = a
			f = f[:i]
			break
		}
	}
	if t, err := time.ParseInLocation("2006-01-02 15:04:05", strings.Join(f, " "), time.Local); err == nil {
		r.Since = t
	}
	r.Primary = strings.HasPrefix(strings.TrimSpace(after), "*")
	return r, nil
}

// Protocols returns each protocol's state (`show protocols`): for a BGP protocol its BGP state
// (Idle, Connect, Active, OpenSent, OpenConfirm, Established, or Down when the protocol is down),
// for the others BIRD's state column (up, down, start, flush).
func (b *Bird) Protocols() (map[string]string, error) {
	out, err := b.Cmd("show", "protocols")
	if err != nil {
		return nil, err
	}
	return parseBirdProtocols(out)
}

var bgpStates = map[string]bool{"Idle": true, "Connect": true, "Active": true, "OpenSent": true,
	"OpenConfirm": true, "Established": true, "Close": true, "Down": true}

// parseBirdProtocols reads `show protocols`:
//
//	Name       Proto      Table      State  Since         Info
//	device1    Device     ---        up     20:25:00.243
//	n1         BGP        ---        start  20:25:12.994  Active        Socket: Connection closed
func parseBirdProtocols(out string) (map[string]string, error) {
	m := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(out))
	header := false
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if f[0] == "Name" && len(f) > 1 && f[1] == "Proto" {
			header = true
			continue
		}
		if !header || len(f) < 4 {
			continue
		}
		state := f[3]
		if f[1] == "BGP" {
			state = ""
			// The Info column follows Since (f[4]); its first word is the BGP state.
			if len(f) > 5 && bgpStates[f[5]] {
				state = f[5]
			} else if f[3] == "down" {
				state = "Down"
			}
			if state == "" {
				return nil, fmt.Errorf("bird protocol %s: no BGP state in %q", f[0], sc.Text())
			}
		}
		m[f[0]] = state
	}
	if !header {
		return nil, fmt.Errorf("bird show protocols: no table in %q", out)
	}
	return m, sc.Err()
}

// NeighborRestarting reports whether BGP protocol proto is keeping a neighbour's routes through a
// graceful restart: `show protocols all` then says "Neighbor graceful restart active" (and the routes
// themselves look as before: `show route` marks no stale route in BIRD 2.0.12).
func (b *Bird) NeighborRestarting(proto string) (bool, error) {
	out, err := b.Cmd("show", "protocols", "all", proto)
	if err != nil {
		return false, err
	}
	return strings.Contains(out, "Neighbor graceful restart active"), nil
}
