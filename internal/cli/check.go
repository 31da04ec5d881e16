package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/husk-runtime/husk/internal/channel"
	"github.com/husk-runtime/husk/internal/qemu"
	"github.com/husk-runtime/husk/internal/version"
	"golang.org/x/sys/unix"
)

// cgroupV2 reports whether the host mounts the unified cgroup hierarchy.
func cgroupV2() bool {
	var st unix.Statfs_t
	return unix.Statfs("/sys/fs/cgroup", &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC
}

// ksmRunFile is where the host kernel says whether KSM merges pages.
const ksmRunFile = "/sys/kernel/mm/ksm/run"

// ksmState says, from the KSM run file at path, whether the host kernel
// merges pages and what that means for sandboxes. QEMU marks every guest's
// RAM mergeable; whether the kernel merges it is the host's policy, which
// husk reports but never changes: merging saves memory and exposes a side
// channel (README, docs/security.md), and off is the kernel's default.
func ksmState(path string) string {
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "none in the host kernel: sandboxes share no guest pages beyond their template's"
	case err != nil:
		return "unknown: " + err.Error()
	case strings.TrimSpace(string(data)) == "1":
		return "on: identical pages that guests wrote are shared between sandboxes"
	default:
		return "off: guests' own pages are not shared (`echo 1 > " + path + "` shares identical ones: " +
			"less memory per sandbox, some CPU for ksmd, and a side channel; see the README)"
	}
}

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
			// warn is for what husk runs without but a user may want.
			warn := func(what, detail string) { fmt.Printf("warn %-14s %s\n", what, detail) }
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
				if accel == qemu.AccelTCG && cfg.Hypervisor.Accel != string(qemu.AccelTCG) {
					warn("hardware virt", "none usable here: guests run under TCG emulation, which boots and runs them several times slower than KVM")
				}
			}
			if release, err := kernelRelease(cfg.Hypervisor.Kernel); err != nil {
				report(false, "kernel", err.Error())
			} else {
				report(true, "kernel", fmt.Sprintf("%s (Linux %s)", cfg.Hypervisor.Kernel, release))
			}
			// The guest's agent must speak this husk's agent API.
			if agent, api, err := agentRelease(cfg.Hypervisor.Initrd); err != nil {
				report(false, "initrd", err.Error())
			} else if api != channel.APIVersion {
				report(false, "initrd", fmt.Sprintf("%s holds the agent of husk %s (agent API %d), this husk speaks agent API %d: rebuild it (make guest)",
					cfg.Hypervisor.Initrd, agent, api, channel.APIVersion))
			} else {
				report(true, "initrd", fmt.Sprintf("%s (agent of husk %s, agent API %d)", cfg.Hypervisor.Initrd, agent, api))
				if agent != version.Version {
					warn("initrd", fmt.Sprintf("built by husk %s, this is husk %s", agent, version.Version))
				}
			}
			if _, err := os.Stat("/usr/bin/unshare"); err != nil {
				report(false, "unshare", "util-linux's unshare is needed to start sandbox daemons: "+err.Error())
			}
			if fi, err := os.Stat("/dev/net/tun"); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
				warn("tun", "/dev/net/tun is missing: containers get no network beyond loopback (modprobe tun)")
			} else {
				report(true, "tun", "/dev/net/tun")
			}
			if cgroupV2() {
				report(true, "cgroups", "v2 (unified) on the host; containers' cgroups live in the guest")
			} else {
				report(true, "cgroups", "v1 on the host; containers' cgroups live in the guest (v2)")
			}
			// Either way is a host's choice husk runs with (see ksmState).
			report(true, "ksm", ksmState(ksmRunFile))
			if failed > 0 {
				return fmt.Errorf("%d check(s) failed", failed)
			}
			return nil
		},
	}
}
