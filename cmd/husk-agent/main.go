// husk-agent is PID 1 of every husk guest. See package agent.
package main

import (
	"log"
	"os"

	"github.com/opencontainers/runc/libcontainer"
	_ "github.com/opencontainers/runc/libcontainer/nsenter"

	"github.com/husk-runtime/husk/internal/agent"
)

func init() {
	// libcontainer re-executes this binary as "init" inside every new
	// container to set it up; nsenter's C constructor has run by now.
	if len(os.Args) > 1 && os.Args[1] == "init" {
		libcontainer.Init()
	}
	// The pool's warm-up container runs this binary too; it has done its
	// part by getting here.
	if len(os.Args) > 1 && os.Args[1] == agent.WarmUpArg {
		os.Exit(0)
	}
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("husk-agent: ")
	// Run anywhere else (by hand, in the guest's debug console), the agent
	// would remount the guest's root and power the guest off on its way out.
	if os.Getpid() != 1 {
		log.Fatal("runs only as the guest's init (PID 1)")
	}
	err := agent.Run()
	log.Printf("fatal: %v", err)
	agent.PowerOff()
}
