package integration

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/netmgr/netmgr/sandbox"
)

// RegistryBinary is Debian's docker-registry (the CNCF distribution registry).
const RegistryBinary = "/usr/bin/docker-registry"

// Registry is a private image registry for tests, the benchmark and the demo: Debian's
// docker-registry serving plain HTTP on 127.0.0.1 inside a network namespace of the caller's (never
// the root namespace), with its storage under a temporary directory.
type Registry struct {
	// Host is HOST:PORT as image references name it (127.0.0.1:PORT).
	Host   string
	Dir    string
	ns     *sandbox.NetNS
	cmd    *exec.Cmd
	exited chan struct{}
}

// RegistryOptions changes how StartRegistry starts the registry.
type RegistryOptions struct {
	// RefuseAll makes the registry answer every request 401 Unauthorized (its "silly" auth, which
	// wants an Authorization header nobody here sends): a registry that refuses the pull.
	RefuseAll bool
}

// StartRegistry starts a registry on 127.0.0.1 in ns and waits until it answers. Stop it with Stop.
func StartRegistry(ctx context.Context, ns *sandbox.NetNS, opts RegistryOptions) (*Registry, error) {
	if _, err := os.Stat(RegistryBinary); err != nil {
		return nil, errors.New("docker-registry not installed (apt-get install docker-registry; .ci/deps does)")
	}
	if ns == nil {
		return nil, errors.New("StartRegistry: a network namespace is required (never the root namespace)")
	}
	var port int
	if err := ns.Do(func() error {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		port = l.Addr().(*net.TCPAddr).Port
		return l.Close()
	}); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "netmgr-registry-")
	if err != nil {
		return nil, err
	}
	r := &Registry{Host: fmt.Sprintf("127.0.0.1:%d", port), Dir: dir, ns: ns, exited: make(chan struct{})}
	auth := ""
	if opts.RefuseAll {
		auth = "auth:\n  silly:\n    realm: netmgr-test\n    service: netmgr-test\n"
	}
	cfg := fmt.Sprintf("version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\nhttp:\n  addr: %s\n%s",
		filepath.Join(dir, "data"), r.Host, auth)
	if err := os.WriteFile(filepath.Join(dir, "config.yml"), []byte(cfg), 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "registry.log"))
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	defer logf.Close()
	// nsenter execs the registry in place: the process Stop signals is the registry.
	r.cmd = exec.Command("nsenter", "--net="+ns.Path(), RegistryBinary, "serve", filepath.Join(dir, "config.yml"))
	r.cmd.Stdout, r.cmd.Stderr = logf, logf
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := r.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start registry: %w", err)
	}
	go func() { _ = r.cmd.Wait(); close(r.exited) }()
	hc := &http.Client{Transport: r.Transport(), Timeout: 2 * time.Second}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := hc.Get("http://" + r.Host + "/v2/")
		if err == nil {
			resp.Body.Close()
			return r, nil
		}
		select {
		case <-r.exited:
			return nil, errors.Join(fmt.Errorf("registry exited at start: %s", lastLines(r.Log(), 5)), r.Stop())
		case <-ctx.Done():
			return nil, errors.Join(ctx.Err(), r.Stop())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, errors.Join(fmt.Errorf("registry did not answer within 20s: %v", err), r.Stop())
		}
	}
}

// Transport is an HTTP transport whose connections are made inside the registry's namespace.
func (r *Registry) Transport() http.RoundTripper {
	return &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := r.ns.Do(func() (err error) {
				var d net.Dialer
				c, err = d.DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
		DisableKeepAlives: true,
	}
}

// Log returns what the registry printed so far (its access log too).
func (r *Registry) Log() string {
	b, _ := os.ReadFile(filepath.Join(r.Dir, "registry.log"))
	return string(b)
}

// Stop stops the registry and removes its directory. It is safe to call twice.
func (r *Registry) Stop() error {
	if r.cmd == nil {
		return nil
	}
	if r.cmd.Process != nil {
		_ = r.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-r.exited:
		case <-time.After(10 * time.Second):
			_ = r.cmd.Process.Kill()
			<-r.exited
		}
	}
	return os.RemoveAll(r.Dir)
}

// BusyboxImage is a single-layer linux image of the static busybox (the root filesystem
// BusyboxRootFS builds) whose command is cmd.
func BusyboxImage(cmd ...string) (v1.Image, error) {
	dir, err := os.MkdirTemp("", "netmgr-image-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	if err := BusyboxRootFS(dir); err != nil {
		return nil, err
	}
	layerTar, err := tarDir(dir)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Config.Cmd = cmd
	cf.Config.Env = []string{"PATH=/bin"}
	cf.Config.WorkingDir = "/"
	return mutate.ConfigFile(img, cf)
}

// Push pushes img to the registry as REPO:TAG and returns the full reference.
func (r *Registry) Push(ctx context.Context, repoTag string, img v1.Image) (string, error) {
	ref, err := name.ParseReference(r.Host+"/"+repoTag, name.Insecure)
	if err != nil {
		return "", err
	}
	if err := remote.Write(ref, img, remote.WithContext(ctx), remote.WithTransport(r.Transport())); err != nil {
		return "", fmt.Errorf("push %s: %w", ref, err)
	}
	return ref.String(), nil
}

// tarDir returns dir as an uncompressed tar stream of an image layer.
func tarDir(dir string) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		h, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		h.Name = rel
		if fi.IsDir() {
			h.Name += "/"
		}
		h.Uid, h.Gid, h.Uname, h.Gname = 0, 0, "", ""
		h.ModTime = time.Unix(0, 0)
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = io.Copy(tw, f)
			return err
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// RegistryAt is a registry already serving on host (127.0.0.1:PORT) in ns, started by someone else
// (make demo): Push and Transport work on it, Stop only forgets it.
func RegistryAt(ns *sandbox.NetNS, host string) *Registry {
	return &Registry{Host: host, ns: ns}
}
