package store

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
)

func BenchmarkGet(b *testing.B) {
	s, _ := OpenBolt(filepath.Join(b.TempDir(), "s.db"))
	ctx := context.Background()
	_ = s.Txn(ctx, nil, []Op{Put("k", []byte("v"))})
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := s.Get(ctx, "k"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkTxn(b *testing.B) {
	for _, sync := range []bool{true, false} {
		b.Run(fmt.Sprintf("sync=%v", sync), func(b *testing.B) {
			var opts []BoltOption
			if !sync {
				opts = append(opts, WithNoSync())
			}
			s, _ := OpenBolt(filepath.Join(b.TempDir(), "s.db"), opts...)
			ctx := context.Background()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := s.Txn(ctx, nil, []Op{Put(fmt.Sprintf("k/%d", i), []byte("v"))}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkWatchPoll is one poll of a watcher: when nothing changed (idle), and reading one new
// revision (changed), for comparison with BenchmarkGet, which opens the database.
func BenchmarkWatchPoll(b *testing.B) {
	s, _ := OpenBolt(filepath.Join(b.TempDir(), "s.db"), WithNoSync())
	ctx := context.Background()
	_ = s.Txn(ctx, nil, []Op{Put("k", []byte("v"))})
	w := &watcher{b: s, prefix: []byte("k")}
	if _, _, err := w.poll(ctx); err != nil {
		b.Fatal(err)
	}
	b.Run("idle", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if _, _, err := w.poll(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("changed", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			_ = s.Txn(ctx, nil, []Op{Put("k", []byte("v"))})
			b.StartTimer()
			if evs, _, err := w.poll(ctx); err != nil || len(evs) != 1 {
				b.Fatal(len(evs), err)
			}
		}
	})
}

// BenchmarkTxnRewrite rewrites 100 records of 300 bytes (about a sandbox's), after 11000 writes, so
// with a full change log of each size.
func BenchmarkTxnRewrite(b *testing.B) {
	for _, keep := range []int{DefaultChangeLog, 10 * DefaultChangeLog} {
		b.Run(fmt.Sprintf("log=%d", keep), func(b *testing.B) {
			s, _ := OpenBolt(filepath.Join(b.TempDir(), "s.db"), WithNoSync(), WithChangeLog(keep))
			ctx := context.Background()
			val := make([]byte, 300)
			for i := 0; i < 11000; i++ {
				_ = s.Txn(ctx, nil, []Op{Put(fmt.Sprintf("k/%d", i%100), val)})
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := s.Txn(ctx, nil, []Op{Put(fmt.Sprintf("k/%d", i%100), val)}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkSandboxCreate is the store traffic of one in-process sandbox create (Get, List and two
// transactions, 300-byte records, a hundred sandboxes), unsynced as the runtime store is.
func BenchmarkSandboxCreate(b *testing.B) {
	s, _ := OpenBolt(filepath.Join(b.TempDir(), "s.db"), WithNoSync())
	ctx := context.Background()
	val := make([]byte, 300)
	for i := 0; i < 2000; i++ {
		_ = s.Txn(ctx, nil, []Op{Put(fmt.Sprintf("sb/%d", i%100), val)})
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		k := fmt.Sprintf("sb/%d", i%100)
		if _, err := s.Get(ctx, k); err != nil {
			b.Fatal(err)
		}
		if _, _, err := s.List(ctx, "sb/"); err != nil {
			b.Fatal(err)
		}
		if err := s.Txn(ctx, nil, []Op{Put("intent/"+k, val), Put(k, val)}); err != nil {
			b.Fatal(err)
		}
		if err := s.Txn(ctx, nil, []Op{Del("intent/" + k), Put(k, val)}); err != nil {
			b.Fatal(err)
		}
	}
}
