// Command containerd-shim-husk-v2 is husk's containerd shim: containerd
// runs it for the runtime io.containerd.husk.v2, and it runs each container
// (each Kubernetes pod) in its own micro-VM.
package main

import (
	"context"

	"github.com/containerd/containerd/runtime/v2/shim"
	"golang.org/x/sys/unix"

	huskshim "github.com/husk-runtime/husk/internal/shim"
)

func main() {
	// The serving shim gets its socket as descriptor 3, which nothing marks
	// close-on-exec: QEMU would inherit it and keep the socket answering
	// after the shim died.
	unix.CloseOnExec(3)
	huskshim.Register()
	// The shim reaps only its own children (QEMU), through exec.Cmd, so
	// neither the package's reaper nor a subreaper is wanted.
	shim.RunManager(context.Background(), huskshim.Manager{}, func(c *shim.Config) {
		c.NoReaper = true
		c.NoSubreaper = true
	})
}
