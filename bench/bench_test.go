package bench_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/store"
	"github.com/netmgr/netmgr/sandbox"
)

// These Go benchmarks split a sandbox's cost into its parts; bench/run.sh (make bench) is the side by
// side comparison with CNI and podctl. They need root and build their own namespaces:
//
//	go test -run '^$' -bench . -benchtime 200x ./bench/

// BenchmarkNetNS is the floor every side pays: create a pinned namespace with lo up, then remove it.
func BenchmarkNetNS(b *testing.B) {
	testutil.RequireRoot(b)
	dir := b.TempDir()
	for i := 0; b.Loop(); i++ {
		p := filepath.Join(dir, fmt.Sprintf("ns%d", i))
		ns, err := sandbox.Create(p)
		if err != nil {
			b.Fatal(err)
		}
		ns.Close()
		if err := sandbox.Remove(p); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStoreTxn is one bbolt transaction writing two keys, the unit of a Manager's state change.
func BenchmarkStoreTxn(b *testing.B) {
	for _, sync := range []bool{true, false} {
		b.Run(fmt.Sprintf("fsync=%v", sync), func(b *testing.B) {
			var opts []store.BoltOption
			if !sync {
				opts = append(opts, store.WithNoSync())
			}
			st, err := store.OpenBolt(filepath.Join(b.TempDir(), "netmgr.db"), opts...)
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			ctx := context.Background()
			for i := 0; b.Loop(); i++ {
				k := fmt.Sprintf("bench/%d", i)
				if err := st.Txn(ctx, []store.Cmp{store.Absent(k)}, []store.Op{store.Put(k, []byte("x")), store.Put(k+"/ip", []byte("y"))}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkSandbox times CreateSandbox (one bridge attachment) and DeleteSandbox separately: b.N
// sandboxes are created, then deleted, with the Manager's default stores in a directory on tmpfs
// (/dev/shm), as /run is on a standard host.
func BenchmarkSandbox(b *testing.B) {
	for _, op := range []string{"create", "delete"} {
		b.Run("op="+op, func(b *testing.B) { benchSandbox(b, op) })
	}
}

func benchSandbox(b *testing.B, op string) {
	testutil.RequireRoot(b)
	host := testutil.NewNS(b, "host")
	dir, err := os.MkdirTemp("/dev/shm", "netmgr-bench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	ctx := context.Background()
	m, err := netmgr.New(ctx, netmgr.WithStateDir(filepath.Join(dir, "state")), netmgr.WithRunDir(filepath.Join(dir, "run")), netmgr.WithHostNetNS(host.Path()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close() })
	if _, err := m.CreateNetwork(ctx, netmgr.NetworkSpec{Name: "bench", Driver: "bridge", Subnets: []netip.Prefix{netip.MustParsePrefix("10.201.0.0/16")}}); err != nil {
		b.Fatal(err)
	}
	// Cleanups run last-in first-out: sandboxes and network go before the Manager closes.
	var live []string
	b.Cleanup(func() {
		for _, name := range live {
			_ = m.DeleteSandbox(ctx, name)
		}
		_ = m.DeleteNetwork(ctx, "bench")
	})
	// Sandboxes are made in rounds of at most 1000 so that the bridge never reaches its port limit.
	const round = 1000
	b.StopTimer()
	for start := 0; start < b.N; start += round {
		live = live[:0]
		for i := start; i < min(b.N, start+round); i++ {
			live = append(live, fmt.Sprintf("sb%05d", i))
		}
		if op == "create" {
			b.StartTimer()
		}
		for _, name := range live {
			if _, err := m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: name, Networks: []netmgr.AttachSpec{{Network: "bench"}}}); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		if op == "delete" {
			b.StartTimer()
		}
		for _, name := range live {
			if err := m.DeleteSandbox(ctx, name); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		live = live[:0]
	}
}
