// husk is the OCI runtime command line. See package cli.
package main

import (
	"os"

	"github.com/husk-runtime/husk/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:]))
}
