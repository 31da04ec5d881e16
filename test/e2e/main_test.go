package e2e

import (
	"os"
	"path/filepath"
	"testing"
)

// keptLogDir is where husk keeps the console logs of guests that failed to
// boot or crashed (sandbox.KeptLogDir).
const keptLogDir = "/var/log/husk"

// defaultTemplateDir is hypervisor.template_dir's default, where the
// suite's sandboxes (and those Docker and containerd start) keep their
// templates, each holding tens of MiB of a tmpfs.
const defaultTemplateDir = "/run/husk-templates"

// TestMain removes what the suite's own sandboxes left on purpose, so that
// a test run leaves the machine as it found it: the console logs that its
// crashes and failed boots made husk keep, and the templates it made.
// What was there before is left alone.
func TestMain(m *testing.M) {
	patterns := []string{filepath.Join(keptLogDir, "*.console.log"), filepath.Join(defaultTemplateDir, "*")}
	before := map[string]bool{}
	for _, pattern := range patterns {
		existing, _ := filepath.Glob(pattern)
		for _, f := range existing {
			before[f] = true
		}
	}
	code := m.Run()
	for _, pattern := range patterns {
		after, _ := filepath.Glob(pattern)
		for _, f := range after {
			if !before[f] {
				os.RemoveAll(f)
			}
		}
	}
	os.Exit(code)
}
