// Command empty is the baseline of bench/startup: a Go program that does nothing, built by the same
// toolchain as podctl, so that the start-up cost every Go process pays is measured beside podctl's.
package main

func main() {}
