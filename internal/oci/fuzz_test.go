package oci

import (
	"encoding/json"
	"testing"
)

// FuzzParseSpec feeds config.json handling arbitrary bytes: it must reject
// or accept without panicking, and an accepted spec must rewrite for the guest.
func FuzzParseSpec(f *testing.F) {
	good, _ := json.Marshal(DefaultSpec())
	f.Add(good)
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"ociVersion":"1.0.0","root":{"path":"r"},"process":{"args":["sh"],"cwd":"/"},"linux":{"namespaces":[{"type":"pid","path":"/x"}]}}`))
	f.Add([]byte(`{"ociVersion":"1","root":{"path":"r"},"process":{"args":["a"],"cwd":"/"},"linux":{},"mounts":[{"destination":"/d","type":"bind","options":["rbind"]}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		spec, err := ParseSpec(data)
		if err != nil {
			return
		}
		sources := map[int]string{}
		for i, m := range spec.Mounts {
			if IsBind(m) {
				sources[i] = "/guest/m"
			}
		}
		out, err := GuestSpec(spec, GuestPaths{Root: "/guest/root", Sources: sources}, nil)
		if err != nil {
			t.Fatalf("accepted spec does not rewrite: %v", err)
		}
		if _, err := ParseSpec(out); err != nil {
			t.Fatalf("rewritten spec no longer parses: %v", err)
		}
	})
}

// FuzzValidateID: whatever is accepted must be usable as one path element.
func FuzzValidateID(f *testing.F) {
	for _, s := range []string{"a", ".", "..", "../x", "a/b", "\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		if ValidateID(id) != nil {
			return
		}
		for _, c := range id {
			if c == '/' || c == 0 {
				t.Fatalf("accepted id %q contains %q", id, c)
			}
		}
		if id == "." || id == ".." {
			t.Fatalf("accepted id %q", id)
		}
	})
}
