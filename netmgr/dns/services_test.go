package dns

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/netmgr/netmgr/netmgr/service"
	"github.com/netmgr/netmgr/netmgr/store"
)

// The agent's DNS answers service names from the services recorded in its store: FollowServices
// sees a created service with its cluster IP, and its removal, and says so through Changed.
func TestFollowServices(t *testing.T) {
	b, err := store.OpenBolt(filepath.Join(t.TempDir(), "s.db"), store.WithNoSync(), store.WithWatchInterval(10*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	src := FollowServices(ctx, b, nil)
	reg := service.New(b)
	svc, err := reg.Create(ctx, service.Spec{Name: "api", Selector: map[string]string{"app": "api"}, Ports: []service.Port{{Port: 80, TargetPort: 8080, Protocol: "tcp"}}})
	if err != nil {
		t.Fatal(err)
	}
	wait := func(want int) []Service {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			got, _ := src.Services(ctx)
			if len(got) == want {
				return got
			}
			select {
			case <-src.Changed():
			case <-time.After(50 * time.Millisecond):
			case <-deadline:
				t.Fatalf("services %v, want %d", got, want)
			}
		}
	}
	got := wait(1)
	if got[0].Name != "api" || len(got[0].IPs) != 1 || got[0].IPs[0] != svc.ClusterIP {
		t.Fatalf("followed %+v, want api at %s", got, svc.ClusterIP)
	}
	if err := reg.Delete(ctx, "api"); err != nil {
		t.Fatal(err)
	}
	wait(0)
}
