// Command husk-mkinitrd writes the guest initrd: a newc cpio archive whose
// /init is the statically linked husk-agent.
//
//	husk-mkinitrd -agent PATH -o OUT
//
// The same agent always gives the same archive, byte for byte. OUT is
// replaced atomically, so a VM booting from it never sees half an image.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/husk-runtime/husk/internal/channel"
	"github.com/husk-runtime/husk/internal/initrd"
	"github.com/husk-runtime/husk/internal/version"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "husk-mkinitrd: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	flags := flag.NewFlagSet("husk-mkinitrd", flag.ContinueOnError)
	agentPath := flags.String("agent", "", "path of the statically linked agent `binary`, installed as /init")
	outPath := flags.String("o", "", "`path` of the initrd to write")
	// Parse errors are reported by main on one line; usage only on -h.
	flags.SetOutput(io.Discard)
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			flags.SetOutput(os.Stdout)
			fmt.Fprintln(os.Stdout, "usage: husk-mkinitrd -agent PATH -o OUT")
			flags.PrintDefaults()
			return nil
		}
		return err
	}
	switch {
	case flags.NArg() > 0:
		return fmt.Errorf("unexpected argument %q", flags.Arg(0))
	case *agentPath == "":
		return errors.New("-agent is required")
	case *outPath == "":
		return errors.New("-o is required")
	}
	return mkinitrd(*agentPath, *outPath)
}

func mkinitrd(agentPath, outPath string) error {
	agent, err := os.ReadFile(agentPath)
	if err != nil {
		return fmt.Errorf("reading agent: %w", err)
	}
	if err := initrd.CheckAgent(agent); err != nil {
		return fmt.Errorf("agent %s: %w", agentPath, err)
	}
	return writeFileAtomic(outPath, func(w io.Writer) error {
		release := fmt.Sprintf("husk-agent %s api=%d", version.Version, channel.APIVersion)
		return initrd.Write(w, initrd.Guest(agent, release))
	})
}

// writeFileAtomic writes name through a temporary file in the same directory
// and renames it into place, so name holds either its old contents or the
// complete new ones.
func writeFileAtomic(name string, write func(io.Writer) error) error {
	tmp, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".tmp-*")
	if err != nil {
		return fmt.Errorf("creating initrd: %w", err)
	}
	err = write(tmp)
	if err == nil {
		// CreateTemp makes the file 0600; the image is not secret and the
		// VMM may run as another user.
		err = tmp.Chmod(0o644)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if closeErr := tmp.Close(); err == nil {
		err = closeErr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), name)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}
