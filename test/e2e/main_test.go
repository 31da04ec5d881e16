package e2e

import (
	"os"
	"path/filepath"
	"testing"
)

// keptLogDir is where husk keeps the console logs of guests that failed to
// boot or crashed (sandbox.KeptLogDir).
const keptLogDir = "/var/log/husk"

// TestMain removes the console logs that the suite's own crashes and failed
// boots made husk keep, so that a test run leaves the machine as it found
// it; logs that were there before are left alone.
func TestMain(m *testing.M) {
	before := map[string]bool{}
	existing, _ := filepath.Glob(filepath.Join(keptLogDir, "*.console.log"))
	for _, f := range existing {
		before[f] = true
	}
	code := m.Run()
	after, _ := filepath.Glob(filepath.Join(keptLogDir, "*.console.log"))
	for _, f := range after {
		if !before[f] {
			os.Remove(f)
		}
	}
	os.Exit(code)
}
