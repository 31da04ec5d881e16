// Package version holds the version stamped into husk's binaries at build time.
package version

// Version is set by the Makefile with -ldflags; "dev" for plain go builds.
var Version = "dev"
