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
