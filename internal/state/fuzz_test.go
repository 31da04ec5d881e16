package state

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoad reads arbitrary state files: a corrupt state must be an error,
// never a panic.
func FuzzLoad(f *testing.F) {
	f.Add([]byte(`{"version":1,"id":"c","status":"running","daemon":{"pid":1,"start_time":1}}`))
	f.Add([]byte(`{"version":1,"exit_status":null}`))
	f.Add([]byte(`not json`))
	root := f.TempDir()
	s := Store{Root: root}
	if err := os.MkdirAll(s.Dir("c"), 0o700); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(filepath.Join(s.Dir("c"), "state.json"), data, 0o600); err != nil {
			t.Fatal(err)
		}
		st, err := s.Load("c")
		if err == nil && st.Version != Version {
			t.Fatalf("loaded a state of version %d", st.Version)
		}
		_, _ = s.List()
	})
}
