package keeper

import (
	"context"
	"testing"
	"time"

	"github.com/netmgr/netmgr/netmgr/pod"
)

type fakeRT struct {
	pod.Runtime // only Start and RecordRestart are called
	starts      int
	rec         pod.Restarted
}

func (f *fakeRT) Start(context.Context, string) error { f.starts++; return nil }
func (f *fakeRT) RecordRestart(_ context.Context, _ string, r pod.Restarted) error {
	f.rec = r
	return nil
}

// TestBackOff: the delays are Base, doubling to Max, and Base again after a run of Reset; the reason
// is CrashLoopBackOff while waiting, Error once restarted; OnFailure leaves an exit 0 alone.
func TestBackOff(t *testing.T) {
	rt := &fakeRT{}
	k, err := New(rt, Options{LockFile: "/unused", Base: 40 * time.Millisecond, Max: 100 * time.Millisecond, Reset: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	c := pod.ContainerStatus{ID: "p_c", State: pod.StateStopped, ExitCode: 1}
	var delays []time.Duration
	for i := range 4 {
		c.ExitedAt = time.Now()
		c.Restarts = i
		if err := k.keep(ctx, pod.RestartOnFailure, c); err != nil {
			t.Fatal(err)
		}
		if rt.starts != i || rt.rec.Reason != ReasonCrashLoopBackOff {
			t.Fatalf("exit %d: restarted at once (%d starts) or reason %q", i, rt.starts, rt.rec.Reason)
		}
		delays = append(delays, k.state["p_c"].delay)
		time.Sleep(k.state["p_c"].delay + 5*time.Millisecond)
		if err := k.keep(ctx, pod.RestartOnFailure, c); err != nil {
			t.Fatal(err)
		}
		if rt.starts != i+1 || rt.rec.Count != i+1 || rt.rec.Reason != ReasonError || rt.rec.ExitCode != 1 {
			t.Fatalf("exit %d: starts %d record %+v", i, rt.starts, rt.rec)
		}
	}
	want := []time.Duration{40 * time.Millisecond, 80 * time.Millisecond, 100 * time.Millisecond, 100 * time.Millisecond}
	for i := range want {
		if delays[i] != want[i] {
			t.Fatalf("delays %v, want %v", delays, want)
		}
	}
	// A run longer than Reset starts the back-off over.
	k.opts.Reset = 10 * time.Millisecond
	time.Sleep(20 * time.Millisecond)
	c.ExitedAt = time.Now()
	_ = k.keep(ctx, pod.RestartOnFailure, c)
	if d := k.state["p_c"].delay; d != 40*time.Millisecond {
		t.Errorf("after a long run: delay %v, want the base", d)
	}
	// OnFailure and exit 0: recorded as Completed, not restarted.
	starts := rt.starts
	if err := k.keep(ctx, pod.RestartOnFailure, pod.ContainerStatus{ID: "p_ok", State: pod.StateStopped, ExitedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if rt.starts != starts || rt.rec.Reason != ReasonCompleted {
		t.Errorf("exit 0 under OnFailure: starts %d->%d, reason %q", starts, rt.starts, rt.rec.Reason)
	}
}
