// Package config reads husk's configuration file (TOML). Every key has a
// built-in default, so no file is needed; an unknown key or a bad value is an
// error that names the key.
package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/BurntSushi/toml"
)

// DefaultPath is read when neither --config nor HUSK_CONFIG names a file.
const DefaultPath = "/etc/husk/configuration.toml"

// EnvPath names the environment variable that overrides DefaultPath.
const EnvPath = "HUSK_CONFIG"

// Config is the effective configuration.
type Config struct {
	Hypervisor Hypervisor `toml:"hypervisor" json:"hypervisor"`
	SharedFS   SharedFS   `toml:"shared_fs" json:"shared_fs"`
	Agent      Agent      `toml:"agent" json:"agent"`
	Network    Network    `toml:"network" json:"network"`
	Runtime    Runtime    `toml:"runtime" json:"runtime"`
	Pool       Pool       `toml:"pool" json:"pool"`

	// Source is the file the configuration came from, "" for built-in defaults.
	Source string `toml:"-" json:"source"`
}

// Hypervisor configures QEMU and the guest it boots.
type Hypervisor struct {
	Path         string `toml:"path" json:"path"`
	Kernel       string `toml:"kernel" json:"kernel"`
	Initrd       string `toml:"initrd" json:"initrd"`
	KernelParams string `toml:"kernel_params" json:"kernel_params"`
	VCPUs        int    `toml:"vcpus" json:"vcpus"`
	MemoryMiB    int    `toml:"memory_mib" json:"memory_mib"`
	Accel        string `toml:"accel" json:"accel"`
	TCGTBSizeMiB int    `toml:"tcg_tb_size_mib" json:"tcg_tb_size_mib"`
	// Template restores sandboxes from a guest booted once and saved, in
	// TemplateDir, instead of booting each.
	Template    bool   `toml:"template" json:"template"`
	TemplateDir string `toml:"template_dir" json:"template_dir"`
}

// SharedFS configures the 9p share that carries rootfs and volumes.
type SharedFS struct {
	MSize int `toml:"msize" json:"msize"`
}

// Agent configures the host's dealings with husk-agent.
type Agent struct {
	BootTimeout Duration `toml:"boot_timeout" json:"boot_timeout"`
}

// Network says how a sandbox joins the network namespace its container's
// caller made.
type Network struct {
	// Mode is "tc" (a tap per interface, joined with tc redirects),
	// "macvtap" (a passthru macvtap device on each interface) or "none"
	// (the container gets loopback only, whatever the namespace).
	Mode string `toml:"mode" json:"mode"`
}

// Network modes.
const (
	NetworkTC      = "tc"
	NetworkMacvtap = "macvtap"
	NetworkNone    = "none"
)

// Runtime holds general settings.
type Runtime struct {
	Debug        bool `toml:"debug" json:"debug"`
	DebugConsole bool `toml:"debug_console" json:"debug_console"`
	// ConcurrentStarts is how many guests may start at once on the host
	// (boot or restore, and create their first container); others queue.
	// 0: one per host core.
	ConcurrentStarts int `toml:"concurrent_starts" json:"concurrent_starts"`
}

// Pool configures the warm pool: booted, empty sandboxes kept ready for
// the runc-compatible front door (husk create/run, Docker, Podman).
type Pool struct {
	// Size is how many sandboxes the pool keeps booted; 0 turns it off.
	Size int `toml:"size" json:"size"`
	// TCGTBSizeMiB sizes the TCG translation cache of pooled sandboxes
	// (0: QEMU's default) where it is larger than the hypervisor's. A
	// pooled guest's restore, warm-up, and the container it is then given
	// translate more than 32 MiB of code: at 32 the cache is flushed during
	// the real create, which then translates again.
	TCGTBSizeMiB int `toml:"tcg_tb_size_mib" json:"tcg_tb_size_mib"`
}

// ForPool returns the configuration a pooled sandbox boots with: c, with
// the larger of the pool's and the hypervisor's TCG cache sizes (0, QEMU's
// default, being the largest). A pool is for latency: it never gets a
// smaller cache than other sandboxes.
func (c *Config) ForPool() *Config {
	pooled := *c
	if hyp, pool := c.Hypervisor.TCGTBSizeMiB, c.Pool.TCGTBSizeMiB; hyp != 0 && (pool == 0 || pool > hyp) {
		pooled.Hypervisor.TCGTBSizeMiB = pool
	}
	return &pooled
}

// Duration is a time.Duration written as "30s" in TOML.
type Duration struct{ time.Duration }

func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// assetDirs are searched, in order, for the guest kernel and initrd when the
// configuration does not name them: beside the husk binary (a build tree),
// then the installed locations.
func assetDirs() []string {
	var dirs []string
	if exe, err := os.Executable(); err == nil {
		dirs = append(dirs, filepath.Dir(exe))
	}
	return append(dirs, "/usr/local/share/husk", "/usr/share/husk")
}

// KernelName and InitrdName are the guest assets' file names.
const (
	KernelName = "vmlinux"
	InitrdName = "husk-initrd.img"
)

// Default returns the built-in configuration.
func Default() *Config {
	return &Config{
		Hypervisor: Hypervisor{
			Path:         "/usr/bin/qemu-system-x86_64",
			Kernel:       findAsset(KernelName),
			Initrd:       findAsset(InitrdName),
			VCPUs:        1,
			MemoryMiB:    256,
			Accel:        "auto",
			TCGTBSizeMiB: 32,
			Template:     true,
			TemplateDir:  "/run/husk-templates",
		},
		SharedFS: SharedFS{MSize: 512 << 10},
		Network:  Network{Mode: NetworkTC},
		Agent:    Agent{BootTimeout: Duration{30 * time.Second}},
		Pool:     Pool{TCGTBSizeMiB: 48},
	}
}

func findAsset(name string) string {
	dirs := assetDirs()
	for _, dir := range dirs {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	// Not found anywhere: name the installed location, so the error says
	// where husk expected it.
	return filepath.Join("/usr/local/share/husk", name)
}

// Path returns the configuration file to read: flag, then environment, then
// the default; explicit says whether the user named it (then it must exist).
func Path(flag string) (path string, explicit bool) {
	if flag != "" {
		return flag, true
	}
	if env := os.Getenv(EnvPath); env != "" {
		return env, true
	}
	return DefaultPath, false
}

// Load reads the configuration from path over the defaults. A missing file is
// an error only when explicit.
func Load(path string, explicit bool) (*Config, error) {
	cfg := Default()
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && !explicit {
		return cfg, cfg.Validate()
	}
	if err != nil {
		return nil, fmt.Errorf("reading configuration: %w", err)
	}
	md, err := toml.Decode(string(data), cfg)
	if err != nil {
		return nil, fmt.Errorf("configuration %s: %w", path, err)
	}
	if undecoded := md.Undecoded(); len(undecoded) > 0 {
		return nil, fmt.Errorf("configuration %s: unknown key %q", path, undecoded[0].String())
	}
	cfg.Source = path
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("configuration %s: %w", path, err)
	}
	return cfg, nil
}

// Validate checks every value; errors name the key.
func (c *Config) Validate() error {
	h := c.Hypervisor
	switch {
	case h.Path == "":
		return errors.New("hypervisor.path must not be empty")
	case h.VCPUs < 1 || h.VCPUs > 64:
		return fmt.Errorf("hypervisor.vcpus = %d: want 1 to 64", h.VCPUs)
	case h.MemoryMiB < 64 || h.MemoryMiB > 1<<20:
		return fmt.Errorf("hypervisor.memory_mib = %d: want at least 64", h.MemoryMiB)
	case h.Accel != "auto" && h.Accel != "kvm" && h.Accel != "tcg":
		return fmt.Errorf("hypervisor.accel = %q: want auto, kvm or tcg", h.Accel)
	case h.TCGTBSizeMiB < 0 || h.TCGTBSizeMiB > maxTBSizeMiB:
		return fmt.Errorf("hypervisor.tcg_tb_size_mib = %d: want 0 (QEMU's default) to %d", h.TCGTBSizeMiB, maxTBSizeMiB)
	case h.Template && !filepath.IsAbs(h.TemplateDir):
		return fmt.Errorf("hypervisor.template_dir = %q: want an absolute path", h.TemplateDir)
	case c.SharedFS.MSize < 4096 || c.SharedFS.MSize > 16<<20:
		return fmt.Errorf("shared_fs.msize = %d: want 4096 to 16777216", c.SharedFS.MSize)
	case c.Agent.BootTimeout.Duration <= 0:
		return fmt.Errorf("agent.boot_timeout = %s: must be positive", c.Agent.BootTimeout)
	case c.Pool.Size < 0 || c.Pool.Size > maxPoolSize:
		return fmt.Errorf("pool.size = %d: want 0 (off) to %d", c.Pool.Size, maxPoolSize)
	case c.Pool.TCGTBSizeMiB < 0 || c.Pool.TCGTBSizeMiB > maxTBSizeMiB:
		return fmt.Errorf("pool.tcg_tb_size_mib = %d: want 0 (QEMU's default) to %d", c.Pool.TCGTBSizeMiB, maxTBSizeMiB)
	case c.Runtime.ConcurrentStarts < 0 || c.Runtime.ConcurrentStarts > maxConcurrentStarts:
		return fmt.Errorf("runtime.concurrent_starts = %d: want 0 (one per host core) to %d", c.Runtime.ConcurrentStarts, maxConcurrentStarts)
	case c.Network.Mode != NetworkTC && c.Network.Mode != NetworkMacvtap && c.Network.Mode != NetworkNone:
		return fmt.Errorf("network.mode = %q: want tc, macvtap or none", c.Network.Mode)
	}
	return nil
}

// maxPoolSize bounds the warm pool: each pooled sandbox holds a booted VM.
const maxPoolSize = 64

// maxConcurrentStarts bounds runtime.concurrent_starts.
const maxConcurrentStarts = 1024

// maxTBSizeMiB bounds a TCG translation cache's size.
const maxTBSizeMiB = 2048

// CheckAssets reports a missing QEMU binary, kernel or initrd.
func (c *Config) CheckAssets() error {
	for _, a := range []struct{ key, path string }{
		{"hypervisor.path", c.Hypervisor.Path},
		{"hypervisor.kernel", c.Hypervisor.Kernel},
		{"hypervisor.initrd", c.Hypervisor.Initrd},
	} {
		if _, err := os.Stat(a.path); err != nil {
			return fmt.Errorf("%s: %w", a.key, err)
		}
	}
	return nil
}
