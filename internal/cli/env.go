package cli

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/BurntSushi/toml"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/spf13/cobra"

	"github.com/husk-runtime/husk/internal/config"
	"github.com/husk-runtime/husk/internal/qemu"
	"github.com/husk-runtime/husk/internal/version"
)

// environment is what `husk env` prints: the effective configuration and
// the versions of everything a sandbox is made of.
type environment struct {
	Config   *config.Config `toml:"config" json:"config"`
	Versions versions       `toml:"versions" json:"versions"`
}

type versions struct {
	Husk      string `toml:"husk" json:"husk"`
	OCISpec   string `toml:"oci_spec" json:"oci_spec"`
	QEMU      string `toml:"qemu" json:"qemu"`
	Accel     string `toml:"accel" json:"accel"`
	Kernel    string `toml:"kernel" json:"kernel"`
	KernelSHA string `toml:"kernel_sha256" json:"kernel_sha256"`
	Agent     string `toml:"agent" json:"agent"`
	InitrdSHA string `toml:"initrd_sha256" json:"initrd_sha256"`
}

func newEnvCommand(g *globals) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "env [--format toml|json]",
		Short: "print the effective configuration and the versions of husk, QEMU, kernel and agent",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := g.config()
			if err != nil {
				return err
			}
			env := environment{Config: cfg, Versions: versions{Husk: version.Version, OCISpec: specs.Version}}
			if v, err := qemu.Version(cfg.Hypervisor.Path); err == nil {
				env.Versions.QEMU = v
			} else {
				env.Versions.QEMU = "unavailable: " + err.Error()
			}
			if accel, why, err := qemu.ChooseAccel(cfg.Hypervisor.Accel); err == nil {
				env.Versions.Accel = fmt.Sprintf("%s (%s)", accel, why)
			} else {
				env.Versions.Accel = "unavailable: " + err.Error()
			}
			env.Versions.Kernel = orUnavailable(kernelRelease(cfg.Hypervisor.Kernel))
			if agent, api, err := agentRelease(cfg.Hypervisor.Initrd); err == nil {
				env.Versions.Agent = fmt.Sprintf("%s (agent API %d)", agent, api)
			} else {
				env.Versions.Agent = "unavailable: " + err.Error()
			}
			env.Versions.KernelSHA = fileSHA256(cfg.Hypervisor.Kernel)
			env.Versions.InitrdSHA = fileSHA256(cfg.Hypervisor.Initrd)
			switch format {
			case "toml":
				return toml.NewEncoder(os.Stdout).Encode(env)
			case "json":
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(env)
			}
			return fmt.Errorf("invalid format %q: want toml or json", format)
		},
	}
	cmd.Flags().StringVar(&format, "format", "toml", "toml or json")
	return cmd
}

func orUnavailable(v string, err error) string {
	if err != nil {
		return "unavailable: " + err.Error()
	}
	return v
}

// fileSHA256 identifies a guest asset by content; the error text if unreadable.
func fileSHA256(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return "unavailable: " + err.Error()
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "unavailable: " + err.Error()
	}
	return hex.EncodeToString(h.Sum(nil))
}
