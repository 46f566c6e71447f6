package drivers

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
)

// DumpAttempts is how many times RetryDump runs a dump that a concurrent change keeps interrupting.
const DumpAttempts = 10

// RetryDump runs dump until it completes without netlink.ErrDumpInterrupted, which the kernel reports
// when the table changed while it was being dumped, so that the result may lack entries or hold stale
// ones. After DumpAttempts interrupted runs it returns the last result with an error that wraps
// netlink.ErrDumpInterrupted; a caller for which a partial result is useless treats that as a failure,
// never as complete. This is what moby's and the CNI plugins' netlinksafe packages do.
func RetryDump[T any](dump func() (T, error)) (T, error) {
	var (
		res T
		err error
	)
	for i := 0; i < DumpAttempts; i++ {
		res, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return res, err
		}
	}
	return res, fmt.Errorf("%d attempts: %w", DumpAttempts, err)
}

// LinkList is h.LinkList retried while interrupted (see RetryDump).
func LinkList(h *netlink.Handle) ([]netlink.Link, error) {
	return RetryDump(h.LinkList)
}

// AddrList is h.AddrList retried while interrupted (see RetryDump). A nil link lists every link's.
func AddrList(h *netlink.Handle, link netlink.Link, family int) ([]netlink.Addr, error) {
	return RetryDump(func() ([]netlink.Addr, error) { return h.AddrList(link, family) })
}

// RouteListFiltered is h.RouteListFiltered retried while interrupted (see RetryDump).
func RouteListFiltered(h *netlink.Handle, family int, filter *netlink.Route, mask uint64) ([]netlink.Route, error) {
	return RetryDump(func() ([]netlink.Route, error) { return h.RouteListFiltered(family, filter, mask) })
}
