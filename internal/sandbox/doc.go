// Package sandbox is the per-sandbox daemon: one long-lived process per
// sandbox that starts QEMU as its child, holds the only connection to the
// guest's agent and serves the sandbox's local API (package control) to the
// husk command line. It runs in a mount namespace of its own, so the bind
// mounts it makes for the guest's 9p share vanish with it, however it ends.
package sandbox
