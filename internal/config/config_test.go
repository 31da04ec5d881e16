package config

import (
	"os"
	"path/filepath"
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
		"not toml at all [":                    "configuration",
	} {
		_, err := Load(writeConfig(t, body), true)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err = %v, want mention of %q", body, err, want)
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
func TestShippedConfigurationIsTheDefaults(t *testing.T) {
	cfg, err := Load("../../config/configuration.toml", true)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Source = ""
	if got, want := *cfg, *Default(); got != want {
		t.Fatalf("shipped configuration differs from the defaults:\n%+v\n%+v", got, want)
	}
}
