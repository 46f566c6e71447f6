// Package integration holds end-to-end tests that drive the real binaries (podctl) against the real
// kernel, each inside network namespaces the test creates.
package integration
