package config

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
)

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "configuration.toml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadOverridesDefaults(t *testing.T) {
	p := writeConfig(t, `
[hypervisor]
vcpus = 2
memory_mib = 512
accel = "tcg"
[agent]
boot_timeout = "45s"
`)
	cfg, err := Load(p, true)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Hypervisor.VCPUs != 2 || cfg.Hypervisor.MemoryMiB != 512 || cfg.Hypervisor.Accel != "tcg" {
		t.Fatalf("hypervisor = %+v", cfg.Hypervisor)
	}
	if cfg.Agent.BootTimeout.Duration != 45*time.Second {
		t.Fatalf("boot_timeout = %v", cfg.Agent.BootTimeout)
	}
	if cfg.SharedFS.MSize != Default().SharedFS.MSize {
		t.Fatalf("msize default lost: %d", cfg.SharedFS.MSize)
	}
	if cfg.Source != p {
		t.Fatalf("source = %q", cfg.Source)
	}
}

func TestLoadErrorsNameTheKey(t *testing.T) {
	for body, want := range map[string]string{
		"[hypervisor]\nvcpuz = 2\n":            "hypervisor.vcpuz",
		"[hypervisor]\nvcpus = 0\n":            "hypervisor.vcpus",
		"[hypervisor]\naccel = \"xen\"\n":      "hypervisor.accel",
		"[hypervisor]\nmemory_mib = 1\n":       "hypervisor.memory_mib",
		"[shared_fs]\nmsize = 10\n":            "shared_fs.msize",
		"[agent]\nboot_timeout = \"soon\"\n":   "boot_timeout",
		"[agent]\nboot_timeout = \"-1s\"\n":    "agent.boot_timeout",
		"[hypervisor]\ntcg_tb_size_mib = -1\n": "hypervisor.tcg_tb_size_mib",
		"[network]\nmode = \"bridge\"\n":       "network.mode",
		"[pool]\ntcg_tb_size_mib = 4096\n":     "pool.tcg_tb_size_mib",
		"[runtime]\nconcurrent_starts = -1\n":  "runtime.concurrent_starts",
		"not toml at all [":                    "configuration",
	} {
		_, err := Load(writeConfig(t, body), true)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err = %v, want mention of %q", body, err, want)
		}
	}
}

// A pooled sandbox's configuration is the configured one with the larger
// of the pool's and the hypervisor's TCG cache sizes; the configuration
// itself is left as it was.
func TestForPool(t *testing.T) {
	cfg, err := Load(writeConfig(t, "[hypervisor]\nvcpus = 2\ntcg_tb_size_mib = 24\n[pool]\nsize = 3\ntcg_tb_size_mib = 40\n"), true)
	if err != nil {
		t.Fatal(err)
	}
	pooled := cfg.ForPool()
	if pooled.Hypervisor.TCGTBSizeMiB != 40 || pooled.Hypervisor.VCPUs != 2 || pooled.Pool.Size != 3 {
		t.Errorf("pooled hypervisor %+v, pool %+v: want the pool's 40 MiB cache and the rest as configured", pooled.Hypervisor, pooled.Pool)
	}
	if cfg.Hypervisor.TCGTBSizeMiB != 24 {
		t.Errorf("ForPool changed the configuration's own cache size to %d", cfg.Hypervisor.TCGTBSizeMiB)
	}
	// The pool never gets a smaller cache than other sandboxes; 0 is
	// QEMU's default, larger than any.
	for _, c := range []struct{ hyp, pool, want int }{{64, 48, 64}, {0, 48, 0}, {32, 0, 0}, {32, 48, 48}} {
		cfg.Hypervisor.TCGTBSizeMiB, cfg.Pool.TCGTBSizeMiB = c.hyp, c.pool
		if got := cfg.ForPool().Hypervisor.TCGTBSizeMiB; got != c.want {
			t.Errorf("hypervisor %d, pool %d: the pooled sandbox's cache is %d, want %d", c.hyp, c.pool, got, c.want)
		}
	}
}

func TestMissingFile(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none.toml")
	if _, err := Load(missing, false); err != nil {
		t.Fatalf("implicit missing file: %v", err)
	}
	if _, err := Load(missing, true); err == nil {
		t.Fatal("explicit missing file: no error")
	}
}

func TestPathPrecedence(t *testing.T) {
	t.Setenv(EnvPath, "/from/env.toml")
	if p, explicit := Path("/from/flag.toml"); p != "/from/flag.toml" || !explicit {
		t.Fatalf("flag: %s %v", p, explicit)
	}
	if p, explicit := Path(""); p != "/from/env.toml" || !explicit {
		t.Fatalf("env: %s %v", p, explicit)
	}
	t.Setenv(EnvPath, "")
	if p, explicit := Path(""); p != DefaultPath || explicit {
		t.Fatalf("default: %s %v", p, explicit)
	}
}

func TestCheckAssetsNamesMissingKernel(t *testing.T) {
	cfg := Default()
	cfg.Hypervisor.Path = "/bin/sh"
	cfg.Hypervisor.Kernel = "/nonexistent/vmlinux"
	if err := cfg.CheckAssets(); err == nil || !strings.Contains(err.Error(), "hypervisor.kernel") {
		t.Fatalf("err = %v", err)
	}
}

// The commented configuration that make install ships must load and change
// nothing: it documents the defaults.
// TestShippedConfigurationIsTheDefaults: the shipped, commented file
// documents every key of Config in its section, and with every key
// uncommented it is exactly the built-in defaults (but for the kernel and
// initrd, which default to wherever they are found).
func TestShippedConfigurationIsTheDefaults(t *testing.T) {
	shipped, err := os.ReadFile("../../config/configuration.toml")
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	section := ""
	var uncommented strings.Builder
	for _, line := range strings.Split(string(shipped), "\n") {
		if strings.HasPrefix(line, "[") {
			section = strings.Trim(line, "[]")
		}
		if m := regexp.MustCompile(`^#([a-z_]+) = `).FindStringSubmatch(line); m != nil {
			documented[section+"."+m[1]] = true
			line = line[1:]
		}
		uncommented.WriteString(line + "\n")
	}
	sections := reflect.TypeOf(Config{})
	for i := 0; i < sections.NumField(); i++ {
		sec := sections.Field(i)
		name := sec.Tag.Get("toml")
		if name == "-" {
			continue
		}
		for j := 0; j < sec.Type.NumField(); j++ {
			key := name + "." + sec.Type.Field(j).Tag.Get("toml")
			if !documented[key] {
				t.Errorf("config/configuration.toml does not document %s", key)
			}
		}
	}
	path := filepath.Join(t.TempDir(), "all.toml")
	if err := os.WriteFile(path, []byte(uncommented.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(path, true)
	if err != nil {
		t.Fatal(err)
	}
	want := *Default()
	cfg.Source = ""
	cfg.Hypervisor.Kernel, cfg.Hypervisor.Initrd = want.Hypervisor.Kernel, want.Hypervisor.Initrd
	if *cfg != want {
		t.Fatalf("the shipped file's values differ from the defaults:\n%+v\n%+v", *cfg, want)
	}
}
