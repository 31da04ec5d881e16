// Command containerd-shim-husk-v2 is husk's containerd shim: containerd
// runs it for the runtime io.containerd.husk.v2, and it runs each container
// (each Kubernetes pod) in its own micro-VM.
package main

import (
	"context"

	"github.com/containerd/containerd/runtime/v2/shim"

	huskshim "github.com/husk-runtime/husk/internal/shim"
)

func main() {
	huskshim.Register()
	// The shim reaps only its own children (QEMU), through exec.Cmd, so
	// neither the package's reaper nor a subreaper is wanted.
	shim.RunManager(context.Background(), huskshim.Manager{}, func(c *shim.Config) {
		c.NoReaper = true
		c.NoSubreaper = true
	})
}
