package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestKSMState(t *testing.T) {
	dir := t.TempDir()
	for content, want := range map[string]string{"1\n": "on:", "0\n": "off:", "2\n": "off:"} {
		path := filepath.Join(dir, "run")
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if got := ksmState(path); !strings.HasPrefix(got, want) {
			t.Errorf("run file %q: %q, want it to start with %q", content, got, want)
		}
	}
	if got := ksmState(filepath.Join(dir, "missing")); !strings.HasPrefix(got, "none") {
		t.Errorf("no run file: %q", got)
	}
	if got := ksmState(dir); !strings.HasPrefix(got, "unknown") {
		t.Errorf("an unreadable run file (a directory): %q", got)
	}
}
