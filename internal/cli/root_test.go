package cli

import (
	"os"
	"path/filepath"
	"testing"
)

// TestResolveExisting: links in the existing part of a path are resolved,
// the part that does not exist yet is kept, and a path with no links is
// unchanged.
func TestResolveExisting(t *testing.T) {
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	real := filepath.Join(dir, "run")
	if err := os.Mkdir(real, 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "var-run")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ path, want string }{
		{link, real},
		{filepath.Join(link, "docker", "runtime-husk", "moby"), filepath.Join(real, "docker", "runtime-husk", "moby")},
		{filepath.Join(real, "husk"), filepath.Join(real, "husk")},
		{filepath.Join(dir, "missing", "husk"), filepath.Join(dir, "missing", "husk")},
	} {
		got, err := resolveExisting(tt.path)
		if err != nil || got != tt.want {
			t.Errorf("resolveExisting(%q) = %q, %v; want %q", tt.path, got, err, tt.want)
		}
	}
}
