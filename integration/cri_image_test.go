package integration

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// No registry is reachable from the tests, so the images CRI runs are made here, as OCI image layout
// tarballs that containerd imports: one uncompressed layer, a config, a manifest and an index that
// names the image.

// imageEntry is one file, directory or symlink of an image layer.
type imageEntry struct {
	name string // path in the image, without a leading slash
	mode int64
	data []byte // a regular file's content
	link string // a symlink's target
	dir  bool
}

// ociImage describes one single-layer linux image for the test's architecture.
type ociImage struct {
	ref        string // the full name containerd and CRI know it by, e.g. localhost/netmgr-test/pause:cri
	entrypoint []string
	cmd        []string
	env        []string
	entries    []imageEntry
}

// layoutTar returns the image as an OCI image layout in a tar stream (what `ctr image import` and
// client.Import read).
func (img ociImage) layoutTar() ([]byte, error) {
	blobs := map[digest.Digest][]byte{}
	add := func(mediaType string, b []byte) ocispec.Descriptor {
		d := digest.FromBytes(b)
		blobs[d] = b
		return ocispec.Descriptor{MediaType: mediaType, Digest: d, Size: int64(len(b))}
	}

	layer, err := img.layer()
	if err != nil {
		return nil, err
	}
	layerDesc := add(ocispec.MediaTypeImageLayer, layer) // uncompressed: the digest is the diff ID
	platform := ocispec.Platform{Architecture: runtime.GOARCH, OS: "linux"}
	config, err := json.Marshal(ocispec.Image{
		Created:  ptr(time.Unix(0, 0).UTC()),
		Platform: platform,
		Config:   ocispec.ImageConfig{Entrypoint: img.entrypoint, Cmd: img.cmd, Env: img.env, WorkingDir: "/"},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{layerDesc.Digest}},
	})
	if err != nil {
		return nil, err
	}
	configDesc := add(ocispec.MediaTypeImageConfig, config)
	manifest, err := json.Marshal(ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    configDesc,
		Layers:    []ocispec.Descriptor{layerDesc},
	})
	if err != nil {
		return nil, err
	}
	manifestDesc := add(ocispec.MediaTypeImageManifest, manifest)
	manifestDesc.Platform = &platform
	tag := img.ref[strings.LastIndexByte(img.ref, ':')+1:]
	manifestDesc.Annotations = map[string]string{
		"io.containerd.image.name": img.ref, // the name containerd's importer gives the image
		ocispec.AnnotationRefName:  tag,
	}
	index, err := json.Marshal(ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{manifestDesc},
	})
	if err != nil {
		return nil, err
	}
	layout, err := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	if err != nil {
		return nil, err
	}

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	write := func(name string, b []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}); err != nil {
			return err
		}
		_, err := tw.Write(b)
		return err
	}
	if err := write(ocispec.ImageLayoutFile, layout); err != nil {
		return nil, err
	}
	if err := write(ocispec.ImageIndexFile, index); err != nil {
		return nil, err
	}
	for d, b := range blobs {
		if err := write("blobs/"+d.Algorithm().String()+"/"+d.Encoded(), b); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// layer is the image's one layer: an uncompressed tar of its entries, owned by root.
func (img ociImage) layer() ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range img.entries {
		h := &tar.Header{Name: e.name, Mode: e.mode, ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
		switch {
		case e.dir:
			h.Typeflag, h.Name = tar.TypeDir, e.name+"/"
		case e.link != "":
			h.Typeflag, h.Linkname = tar.TypeSymlink, e.link
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(e.data); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func ptr[T any](v T) *T { return &v }

// baseEntries are the directories every test image has: the mount points runc and CRI use.
func baseEntries() []imageEntry {
	var out []imageEntry
	for _, d := range []string{"bin", "dev", "etc", "proc", "sys", "tmp", "run", "var"} {
		mode := int64(0o755)
		if d == "tmp" {
			mode = 0o1777
		}
		out = append(out, imageEntry{name: d, mode: mode, dir: true})
	}
	return out
}

// isStatic tells whether the ELF file at path needs no dynamic loader (it has to run in an image
// that holds nothing else).
func isStatic(path string) (bool, error) {
	f, err := elf.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false, nil
		}
	}
	return true, nil
}

// pauseBinary returns a static build of examples/pause: ./bin/pause (from `make build`) when it is
// static, otherwise a fresh CGO_ENABLED=0 build in a temporary directory.
func pauseBinary(t *testing.T) string {
	t.Helper()
	p := filepath.Join(RepoRoot(), "bin", "pause")
	if ok, err := isStatic(p); err == nil && ok {
		return p
	}
	p = filepath.Join(t.TempDir(), "pause")
	cmd := exec.Command("go", "build", "-o", p, "github.com/netmgr/netmgr/examples/pause")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build pause: %v\n%s", err, out)
	}
	return p
}

// pauseImage is the CRI sandbox image: netmgr's pause process as /pause.
func pauseImage(t *testing.T, ref string) ociImage {
	t.Helper()
	data, err := os.ReadFile(pauseBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	return ociImage{
		ref:        ref,
		entrypoint: []string{"/pause"},
		entries:    append(baseEntries(), imageEntry{name: "pause", mode: 0o755, data: data}),
	}
}

// busyboxImage is Debian's static busybox with a symlink per applet (sh, sleep, ping, ip, nc, wget,
// httpd...), /etc/passwd and /etc/group, and /www/index.html for httpd to serve.
func busyboxImage(t *testing.T, ref, index string) (ociImage, error) {
	t.Helper()
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return ociImage{}, errors.New("busybox not installed (apt-get install busybox-static)")
	}
	if ok, err := isStatic(bb); err != nil || !ok {
		return ociImage{}, fmt.Errorf("%s is not a static binary (apt-get install busybox-static)", bb)
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		return ociImage{}, err
	}
	out, err := exec.Command(bb, "--list").Output()
	if err != nil {
		return ociImage{}, fmt.Errorf("busybox --list: %w", err)
	}
	entries := append(baseEntries(),
		imageEntry{name: "bin/busybox", mode: 0o755, data: data},
		imageEntry{name: "etc/passwd", mode: 0o644, data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")},
		imageEntry{name: "etc/group", mode: 0o644, data: []byte("root:x:0:\nnogroup:x:65534:\n")},
		imageEntry{name: "www", mode: 0o755, dir: true},
		imageEntry{name: "www/index.html", mode: 0o644, data: []byte(index)},
	)
	for _, applet := range strings.Fields(string(out)) {
		if applet != "busybox" && !strings.Contains(applet, "/") {
			entries = append(entries, imageEntry{name: "bin/" + applet, mode: 0o777, link: "busybox"})
		}
	}
	return ociImage{ref: ref, cmd: []string{"sh"}, env: []string{"PATH=/bin"}, entries: entries}, nil
}
