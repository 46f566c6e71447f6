package dns

import (
	"context"
	"log/slog"
	"net/netip"
	"sync"

	"github.com/netmgr/netmgr/netmgr/service"
	"github.com/netmgr/netmgr/netmgr/store"
)

// StoreServices is a ServiceSource (and Notifier) over the services recorded in a store (netmgr/
// service): it follows them (service.Watch: it survives compaction and store errors) and answers from
// what it saw last, so that a query never waits for the store, and a change is served at once.
type StoreServices struct {
	mu      sync.Mutex
	current []Service
	changed chan struct{}
}

// FollowServices starts following the services in st until ctx ends.
func FollowServices(ctx context.Context, st store.Store, log *slog.Logger) *StoreServices {
	s := &StoreServices{changed: make(chan struct{}, 1)}
	go func() {
		err := service.Watch(ctx, st, func(svcs []*service.Service) error {
			out := make([]Service, 0, len(svcs))
			for _, sv := range svcs {
				if !sv.ClusterIP.IsValid() {
					continue
				}
				out = append(out, Service{Name: sv.Name, IPs: []netip.Addr{sv.ClusterIP}})
			}
			s.mu.Lock()
			s.current = out
			s.mu.Unlock()
			select {
			case s.changed <- struct{}{}:
			default:
			}
			return nil
		})
		if err != nil && ctx.Err() == nil && log != nil {
			log.Warn("dns: following services ended", "error", err)
		}
	}()
	return s
}

// Services implements ServiceSource.
func (s *StoreServices) Services(context.Context) ([]Service, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current, nil
}

// Changed implements Notifier.
func (s *StoreServices) Changed() <-chan struct{} { return s.changed }
