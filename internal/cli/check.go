package cli

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/husk-runtime/husk/internal/qemu"
)

func newCheckCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "check",
		Short: "tell whether this host can run husk, and why not",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := g.config()
			if err != nil {
				return err
			}
			failed := 0
			report := func(ok bool, what, detail string) {
				mark := "ok  "
				if !ok {
					mark = "FAIL"
					failed++
				}
				fmt.Printf("%s %-14s %s\n", mark, what, detail)
			}
			source := cfg.Source
			if source == "" {
				source = "built-in defaults"
			}
			report(true, "configuration", source)
			if v, err := qemu.Version(cfg.Hypervisor.Path); err != nil {
				report(false, "qemu", err.Error())
			} else {
				report(true, "qemu", fmt.Sprintf("%s (version %s)", cfg.Hypervisor.Path, v))
			}
			if accel, why, err := qemu.ChooseAccel(cfg.Hypervisor.Accel); err != nil {
				report(false, "accelerator", err.Error())
			} else {
				report(true, "accelerator", fmt.Sprintf("%s: %s", accel, why))
			}
			for _, asset := range []struct{ what, path string }{
				{"kernel", cfg.Hypervisor.Kernel}, {"initrd", cfg.Hypervisor.Initrd},
			} {
				if fi, err := os.Stat(asset.path); err != nil {
					report(false, asset.what, err.Error())
				} else {
					report(true, asset.what, fmt.Sprintf("%s (%d bytes)", asset.path, fi.Size()))
				}
			}
			if _, err := os.Stat("/usr/bin/unshare"); err != nil {
				report(false, "unshare", "util-linux's unshare is needed to start sandbox daemons: "+err.Error())
			}
			if failed > 0 {
				return fmt.Errorf("%d check(s) failed", failed)
			}
			return nil
		},
	}
}
