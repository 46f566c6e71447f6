package containerd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	remoteserrors "github.com/containerd/containerd/v2/core/remotes/errors"
	"github.com/containerd/errdefs"
	clog "github.com/containerd/log"
	"github.com/distribution/reference"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sirupsen/logrus"

	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/pod"
)

var _ pod.ImagePuller = (*Runtime)(nil)

// DefaultRegistryTimeout bounds connecting to a registry and waiting for each of its answers.
const DefaultRegistryTimeout = 30 * time.Second

// PullProgress is one event of a pull: a blob (layer, config, manifest) being fetched, or done.
type PullProgress struct {
	Image     string // the normalised reference
	Digest    string
	MediaType string
	Layer     bool  // the blob is a filesystem layer
	Bytes     int64 // fetched so far
	Total     int64 // the blob's size
	Done      bool  // fetched whole
}

// WithInsecureRegistries names the registries (HOST or HOST:PORT, as in image references) that are
// reached over plain HTTP. Every other registry is reached over HTTPS only.
func WithInsecureRegistries(hosts ...string) Option {
	return func(r *Runtime) { r.insecure = append(r.insecure, hosts...) }
}

// WithRegistryTimeout bounds connecting to a registry and waiting for each of its answers, so that an
// unreachable registry fails a pull in bounded time. Default DefaultRegistryTimeout.
func WithRegistryTimeout(d time.Duration) Option { return func(r *Runtime) { r.regTimeout = d } }

// WithRegistryDialer makes the connections to registries with dial instead of a plain net.Dialer:
// for example to reach a registry from another network namespace. The registry timeout still bounds
// each dial.
func WithRegistryDialer(dial func(ctx context.Context, network, addr string) (net.Conn, error)) Option {
	return func(r *Runtime) { r.regDial = dial }
}

// WithPullProgress has pulls report their progress to f: an event when a blob starts, at most every
// half second while it is fetched, and when it is done. f is called from several goroutines, one at
// a time.
func WithPullProgress(f func(PullProgress)) Option { return func(r *Runtime) { r.progress = f } }

func (r *Runtime) plainHTTP(host string) (bool, error) {
	for _, h := range r.insecure {
		if strings.EqualFold(h, host) {
			return true, nil
		}
	}
	return false, nil
}

func (r *Runtime) resolver() remotes.Resolver {
	timeout := r.regTimeout
	if timeout <= 0 {
		timeout = DefaultRegistryTimeout
	}
	dial := (&net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}).DialContext
	if r.regDial != nil {
		dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			return r.regDial(ctx, network, addr)
		}
	}
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dial,
		TLSClientConfig:       &tls.Config{MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:   timeout,
		ResponseHeaderTimeout: timeout,
		MaxIdleConns:          10,
		IdleConnTimeout:       30 * time.Second,
		ExpectContinueTimeout: 5 * time.Second,
	}
	hosts := docker.ConfigureDefaultRegistries(
		docker.WithPlainHTTP(r.plainHTTP),
		docker.WithClient(&http.Client{Transport: tr}),
	)
	res := docker.NewResolver(docker.ResolverOptions{Hosts: hosts})
	if r.progress == nil {
		return res
	}
	return &progressResolver{Resolver: res, report: r.progress}
}

// EnsureImage implements pod.ImagePuller.
func (r *Runtime) EnsureImage(ctx context.Context, ref string, policy pod.PullPolicy) error {
	_, err := r.ensureImage(r.ctx(ctx), ref, policy)
	return err
}

func (r *Runtime) ensureImage(ctx context.Context, ref string, policy pod.PullPolicy) (client.Image, error) {
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return nil, fmt.Errorf("%w: image %q: %v (a local root filesystem must be an absolute path or rootfs:/path)", netmgr.ErrInvalid, ref, err)
	}
	name := named.String()
	policy = pod.EffectivePullPolicy(ref, policy)
	if policy != pod.PullAlways {
		img, err := r.c.GetImage(ctx, name)
		if err == nil {
			return img, nil
		}
		if !errdefs.IsNotFound(err) {
			return nil, containerdErr(err)
		}
		if policy == pod.PullNever {
			return nil, fmt.Errorf("image %s: %w and imagePullPolicy is Never", name, pod.ErrImageNotPresent)
		}
	}
	return r.pull(ctx, name)
}

func (r *Runtime) pull(ctx context.Context, name string) (client.Image, error) {
	t0 := time.Now()
	popts := []client.RemoteOpt{client.WithPullUnpack, client.WithResolver(r.resolver())}
	if r.snapshotter != "" {
		popts = append(popts, client.WithPullSnapshotter(r.snapshotter))
	}
	// containerd's client logs every failed request; the error returned says it once.
	quiet := logrus.New()
	quiet.SetOutput(io.Discard)
	img, err := r.c.Pull(clog.WithLogger(ctx, logrus.NewEntry(quiet)), name, popts...)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("pull image %s: %w", name, ctx.Err())
		}
		return nil, pullErr(name, err)
	}
	r.log.Info("image pulled", "image", name, "took", time.Since(t0))
	return img, nil
}

// pullErr turns what a failed pull returns into one line that says why, wrapping netmgr's and pod's
// sentinels.
func pullErr(name string, err error) error {
	host := registryHost(name)
	var us remoteserrors.ErrUnexpectedStatus
	var ne net.Error
	var oe *net.OpError
	switch {
	case errdefs.IsNotFound(err):
		return fmt.Errorf("pull image %s: %w: no such image in registry %s", name, netmgr.ErrNotFound, host)
	case errors.As(err, &us) && (us.StatusCode == http.StatusUnauthorized || us.StatusCode == http.StatusForbidden):
		return fmt.Errorf("pull image %s: %w: registry %s answered %s", name, pod.ErrPullRefused, host, us.Status)
	case errors.As(err, &us):
		return fmt.Errorf("pull image %s: registry %s answered %s", name, host, us.Status)
	case strings.Contains(err.Error(), "server gave HTTP response to HTTPS client"):
		return fmt.Errorf("pull image %s: %w: %s speaks plain HTTP; allow it with --insecure-registry %s", name, pod.ErrRegistryUnreachable, host, host)
	case errors.As(err, &oe):
		return fmt.Errorf("pull image %s: %w: %s: %v", name, pod.ErrRegistryUnreachable, host, oe.Err)
	case (errors.As(err, &ne) && ne.Timeout()) || strings.Contains(err.Error(), "timeout awaiting response headers"):
		return fmt.Errorf("pull image %s: %w: %s did not answer in time", name, pod.ErrRegistryUnreachable, host)
	}
	return fmt.Errorf("pull image %s: %w", name, err)
}

func registryHost(name string) string {
	n, err := reference.ParseNormalizedNamed(name)
	if err != nil {
		return name
	}
	return reference.Domain(n)
}

// progressResolver reports the bytes its fetchers read.
type progressResolver struct {
	remotes.Resolver
	report func(PullProgress)
	mu     sync.Mutex
}

func (p *progressResolver) Fetcher(ctx context.Context, ref string) (remotes.Fetcher, error) {
	f, err := p.Resolver.Fetcher(ctx, ref)
	if err != nil {
		return nil, err
	}
	return remotes.FetcherFunc(func(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
		rc, err := f.Fetch(ctx, desc)
		if err != nil {
			return nil, err
		}
		cr := &countingReader{rc: rc, p: p, ev: PullProgress{
			Image: ref, Digest: desc.Digest.String(), MediaType: desc.MediaType,
			Layer: images.IsLayerType(desc.MediaType), Total: desc.Size,
		}}
		cr.emit()
		return cr, nil
	}), nil
}

func (p *progressResolver) emit(ev PullProgress) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.report(ev)
}

type countingReader struct {
	rc   io.ReadCloser
	p    *progressResolver
	ev   PullProgress
	last time.Time
}

func (c *countingReader) emit() {
	c.last = time.Now()
	c.p.emit(c.ev)
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.rc.Read(b)
	c.ev.Bytes += int64(n)
	switch {
	case !c.ev.Done && (errors.Is(err, io.EOF) || (c.ev.Total > 0 && c.ev.Bytes >= c.ev.Total)):
		c.ev.Done = true
		c.emit()
	case !c.ev.Done && time.Since(c.last) >= 500*time.Millisecond:
		c.emit()
	}
	return n, err
}

func (c *countingReader) Close() error { return c.rc.Close() }
