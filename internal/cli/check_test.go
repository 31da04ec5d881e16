package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestKSMState(t *testing.T) {
	dir := t.TempDir()
	for content, wantOn := range map[string]bool{"1\n": true, "0\n": false, "2\n": false} {
		path := filepath.Join(dir, "run")
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		on, detail := ksmState(path)
		if on != wantOn || !strings.HasPrefix(detail, map[bool]string{true: "on:", false: "off:"}[wantOn]) {
			t.Errorf("run file %q: on %v, %q", content, on, detail)
		}
	}
	if on, detail := ksmState(filepath.Join(dir, "missing")); on || !strings.Contains(detail, "no KSM") {
		t.Errorf("no run file: on %v, %q", on, detail)
	}
}
