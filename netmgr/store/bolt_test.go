package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

func open(t *testing.T) *Bolt {
	t.Helper()
	b, err := OpenBolt(filepath.Join(t.TempDir(), "s.db"), WithWatchInterval(10*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func TestTxnCompareAndSwap(t *testing.T) {
	ctx := context.Background()
	b := open(t)
	if err := b.Txn(ctx, []Cmp{Absent("a")}, []Op{Put("a", []byte("1"))}); err != nil {
		t.Fatal(err)
	}
	kv, err := b.Get(ctx, "a")
	if err != nil || string(kv.Value) != "1" || kv.Rev == 0 {
		t.Fatalf("get: %+v %v", kv, err)
	}
	if err := b.Txn(ctx, []Cmp{Absent("a")}, []Op{Put("a", []byte("2"))}); !errors.Is(err, ErrConflict) {
		t.Fatalf("second create: %v, want ErrConflict", err)
	}
	if err := b.Txn(ctx, []Cmp{{Key: "a", Rev: kv.Rev}}, []Op{Put("a", []byte("2")), Put("b", nil)}); err != nil {
		t.Fatal(err)
	}
	if err := b.Txn(ctx, []Cmp{{Key: "a", Rev: kv.Rev}}, []Op{Del("a")}); !errors.Is(err, ErrConflict) {
		t.Fatalf("stale delete: %v", err)
	}
	kvs, rev, err := b.List(ctx, "")
	if err != nil || len(kvs) != 2 || rev != kvs[0].Rev {
		t.Fatalf("list: %+v rev %d %v", kvs, rev, err)
	}
	if _, err := b.Get(ctx, "zz"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing: %v", err)
	}
	if err := b.Txn(ctx, nil, []Op{Del("a"), Del("never")}); err != nil {
		t.Fatal(err)
	}
	if kvs, _, _ := b.List(ctx, "a"); len(kvs) != 0 {
		t.Fatalf("a still there: %v", kvs)
	}
}

func TestConcurrentCounters(t *testing.T) {
	// Many goroutines increment one counter through CAS; no increment is lost.
	ctx := context.Background()
	b := open(t)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 25; i++ {
				for {
					kv, err := b.Get(ctx, "n")
					n := 0
					if err == nil {
						n, _ = strconv.Atoi(string(kv.Value))
					}
					if err := b.Txn(ctx, []Cmp{{Key: "n", Rev: kv.Rev}}, []Op{Put("n", []byte(strconv.Itoa(n+1)))}); err == nil {
						break
					} else if !errors.Is(err, ErrConflict) {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	kv, _ := b.Get(ctx, "n")
	if string(kv.Value) != "200" {
		t.Fatalf("counter %s, want 200", kv.Value)
	}
}

// TestHelperProcess is run as a child by TestSeparateProcesses.
func TestHelperProcess(t *testing.T) {
	path := os.Getenv("STORE_TEST_PATH")
	if path == "" {
		t.Skip("helper")
	}
	b, err := OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	id := os.Getenv("STORE_TEST_ID")
	ctx := context.Background()
	for i := 0; i < 20; i++ {
		// Claim the lowest free slot, as IPAM does.
		for slot := 0; ; slot++ {
			k := fmt.Sprintf("slot/%04d", slot)
			if err := b.Txn(ctx, []Cmp{Absent(k)}, []Op{Put(k, []byte(id))}); err == nil {
				break
			}
		}
	}
}

func TestSeparateProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	path := filepath.Join(t.TempDir(), "s.db")
	if _, err := OpenBolt(path); err != nil {
		t.Fatal(err)
	}
	var cmds []*exec.Cmd
	for i := 0; i < 6; i++ {
		c := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
		c.Env = append(os.Environ(), "STORE_TEST_PATH="+path, "STORE_TEST_ID="+strconv.Itoa(i))
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, c)
	}
	for _, c := range cmds {
		if err := c.Wait(); err != nil {
			t.Fatal(err)
		}
	}
	b, _ := OpenBolt(path)
	kvs, _, err := b.List(context.Background(), "slot/")
	if err != nil {
		t.Fatal(err)
	}
	if len(kvs) != 120 {
		t.Fatalf("%d slots claimed, want 120 (6 processes x 20, each slot once)", len(kvs))
	}
	if kvs[119].Key != "slot/0119" {
		t.Fatalf("slots not dense: last %s", kvs[119].Key)
	}
}

func TestWatch(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b := open(t)
	_, rev, _ := b.List(ctx, "")
	ch, err := b.Watch(ctx, "w/", rev)
	if err != nil {
		t.Fatal(err)
	}
	_ = b.Txn(ctx, nil, []Op{Put("w/1", []byte("x")), Put("other", nil)})
	_ = b.Txn(ctx, nil, []Op{Del("w/1")})
	var got []string
	timeout := time.After(3 * time.Second)
	for len(got) < 1 || got[len(got)-1] != "delete w/1" {
		select {
		case e := <-ch:
			typ := "put"
			if e.Type == EventDelete {
				typ = "delete"
			}
			got = append(got, typ+" "+e.KV.Key)
		case <-timeout:
			t.Fatalf("events so far %v", got)
		}
	}
	for _, g := range got {
		if g == "put other" {
			t.Fatalf("event outside prefix: %v", got)
		}
	}
}
