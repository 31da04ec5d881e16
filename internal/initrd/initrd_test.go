package initrd

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path"
	"slices"
	"strings"
	"testing"
)

func writeArchive(t *testing.T, entries []Entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := Write(&buf, entries); err != nil {
		t.Fatalf("Write: %v", err)
	}
	return buf.Bytes()
}

func readBack(t *testing.T, archive []byte) []cpioEntry {
	t.Helper()
	entries, err := readArchive(archive)
	if err != nil {
		t.Fatalf("reading archive back: %v", err)
	}
	return entries
}

// TestWriteRoundTrip checks every header field of every entry. Name and data
// lengths cover all four residues mod 4, so every padding case is exercised.
func TestWriteRoundTrip(t *testing.T) {
	in := []Entry{
		{Path: "/init", Mode: 0o755, Data: []byte("agent")},
		{Path: "dev", Mode: os.ModeDir | 0o755},
		{Path: "dev/console", Mode: os.ModeDevice | os.ModeCharDevice | 0o600, Major: 5, Minor: 1},
		{Path: "tmp", Mode: os.ModeDir | os.ModeSticky | 0o777},
		{Path: "etc/", Mode: os.ModeDir | 0o755},
		{Path: "etc/a", Mode: 0o644},
		{Path: "etc/ab", Mode: 0o644, Data: []byte("1")},
		{Path: "etc/abc", Mode: 0o644, Data: []byte("12")},
		{Path: "etc/abcd", Mode: 0o644, Data: []byte("123")},
		{Path: "etc/./x//y/..", Mode: 0o644, Data: []byte("1234")},
		{Path: "sbin", Mode: os.ModeDir | os.ModeSetgid | 0o755},
		{Path: "sbin/su", Mode: os.ModeSetuid | 0o755, Data: []byte("s")},
	}
	type want struct {
		name  string
		mode  uint32
		nlink uint32
		rdev  [2]uint32
		data  string
	}
	wants := []want{
		{name: "dev", mode: 0o040755, nlink: 2},
		{name: "dev/console", mode: 0o020600, nlink: 1, rdev: [2]uint32{5, 1}},
		{name: "etc", mode: 0o040755, nlink: 2},
		{name: "etc/a", mode: 0o100644, nlink: 1},
		{name: "etc/ab", mode: 0o100644, nlink: 1, data: "1"},
		{name: "etc/abc", mode: 0o100644, nlink: 1, data: "12"},
		{name: "etc/abcd", mode: 0o100644, nlink: 1, data: "123"},
		{name: "etc/x", mode: 0o100644, nlink: 1, data: "1234"},
		{name: "init", mode: 0o100755, nlink: 1, data: "agent"},
		{name: "sbin", mode: 0o042755, nlink: 2},
		{name: "sbin/su", mode: 0o104755, nlink: 1, data: "s"},
		{name: "tmp", mode: 0o041777, nlink: 2},
	}

	got := readBack(t, writeArchive(t, in))
	if len(got) != len(wants) {
		t.Fatalf("got %d entries, want %d: %v", len(got), len(wants), names(got))
	}
	for i, w := range wants {
		g := got[i]
		if g.name != w.name {
			t.Errorf("entry %d: name %q, want %q", i, g.name, w.name)
			continue
		}
		if g.ino != uint32(i+1) {
			t.Errorf("%s: ino %d, want %d", g.name, g.ino, i+1)
		}
		if g.mode != w.mode {
			t.Errorf("%s: mode %#o, want %#o", g.name, g.mode, w.mode)
		}
		if g.nlink != w.nlink {
			t.Errorf("%s: nlink %d, want %d", g.name, g.nlink, w.nlink)
		}
		if g.uid != 0 || g.gid != 0 || g.mtime != 0 || g.check != 0 {
			t.Errorf("%s: uid %d gid %d mtime %d check %d, want all 0", g.name, g.uid, g.gid, g.mtime, g.check)
		}
		if g.devMajor != 0 || g.devMinor != 0 {
			t.Errorf("%s: device %d:%d, want 0:0", g.name, g.devMajor, g.devMinor)
		}
		if rdev := [2]uint32{g.rdevMajor, g.rdevMinor}; rdev != w.rdev {
			t.Errorf("%s: rdev %d:%d, want %d:%d", g.name, rdev[0], rdev[1], w.rdev[0], w.rdev[1])
		}
		if string(g.data) != w.data {
			t.Errorf("%s: data %q, want %q", g.name, g.data, w.data)
		}
	}
}

func names(entries []cpioEntry) []string {
	var out []string
	for _, e := range entries {
		out = append(out, e.name)
	}
	return out
}

// TestWriteHeaderBytes pins the exact bytes of a one-directory archive, so a
// mistake shared by Write and the test reader cannot hide.
func TestWriteHeaderBytes(t *testing.T) {
	archive := writeArchive(t, []Entry{{Path: "dev", Mode: os.ModeDir | 0o755}})
	want := "070701" + "00000001" + "000041ed" + "00000000" + "00000000" + "00000002" + "00000000" +
		"00000000" + "00000000" + "00000000" + "00000000" + "00000000" + "00000004" + "00000000" +
		"dev\x00" + "\x00\x00" +
		"070701" + "00000000" + "00000000" + "00000000" + "00000000" + "00000001" + "00000000" +
		"00000000" + "00000000" + "00000000" + "00000000" + "00000000" + "0000000b" + "00000000" +
		"TRAILER!!!\x00" + "\x00\x00\x00"
	want += strings.Repeat("\x00", 512-len(want))
	if string(archive) != want {
		t.Errorf("archive:\n%q\nwant:\n%q", archive, want)
	}
}

func TestWriteEmpty(t *testing.T) {
	archive := writeArchive(t, nil)
	if len(archive) != 512 {
		t.Errorf("empty archive is %d bytes, want 512", len(archive))
	}
	if got := readBack(t, archive); len(got) != 0 {
		t.Errorf("empty archive holds %v", names(got))
	}
}

// TestWriteParentsFirst feeds children before parents, with sibling names
// that sort between a directory and its contents ("a-b" and "a.b" sort
// before "a/b" byte-wise).
func TestWriteParentsFirst(t *testing.T) {
	in := []Entry{
		{Path: "a/b/c", Mode: 0o644},
		{Path: "a.b", Mode: 0o644},
		{Path: "a/b", Mode: os.ModeDir | 0o755},
		{Path: "a-b", Mode: os.ModeDir | 0o755},
		{Path: "a-b/z", Mode: 0o644},
		{Path: "a", Mode: os.ModeDir | 0o755},
	}
	got := readBack(t, writeArchive(t, in))
	seen := map[string]bool{}
	for _, e := range got {
		if parent := path.Dir(e.name); parent != "." && !seen[parent] {
			t.Errorf("%s written before its parent %s; order %v", e.name, parent, names(got))
		}
		seen[e.name] = true
	}
	if len(seen) != len(in) {
		t.Errorf("wrote %v, want %d entries", names(got), len(in))
	}
}

func TestWriteReproducible(t *testing.T) {
	in := Guest([]byte("\x7fELF agent bytes"), "husk-agent test")
	in = append(in, Entry{Path: "tmp/x", Mode: 0o600, Data: []byte("xyz")})
	orig := slices.Clone(in)

	first := writeArchive(t, in)
	if !slices.EqualFunc(in, orig, entriesEqual) {
		t.Fatalf("Write reordered or changed its input")
	}
	if second := writeArchive(t, in); !bytes.Equal(first, second) {
		t.Errorf("two writes of the same entries differ")
	}
	slices.Reverse(in)
	if reversed := writeArchive(t, in); !bytes.Equal(first, reversed) {
		t.Errorf("input order changed the archive")
	}
}

func entriesEqual(a, b Entry) bool {
	return a.Path == b.Path && a.Mode == b.Mode && bytes.Equal(a.Data, b.Data) &&
		a.Major == b.Major && a.Minor == b.Minor
}

func TestWriteRejects(t *testing.T) {
	dir := Entry{Path: "d", Mode: os.ModeDir | 0o755}
	tests := []struct {
		name    string
		entries []Entry
		want    error
	}{
		{"empty path", []Entry{{Path: "", Mode: 0o644}}, ErrInvalidPath},
		{"root", []Entry{{Path: "/", Mode: os.ModeDir | 0o755}}, ErrInvalidPath},
		{"dot", []Entry{{Path: ".", Mode: os.ModeDir | 0o755}}, ErrInvalidPath},
		{"dotdot", []Entry{{Path: "..", Mode: os.ModeDir | 0o755}}, ErrInvalidPath},
		{"escapes", []Entry{{Path: "../etc/passwd", Mode: 0o644}}, ErrInvalidPath},
		{"escapes after cleaning", []Entry{dir, {Path: "d/../../x", Mode: 0o644}}, ErrInvalidPath},
		{"NUL in name", []Entry{{Path: "in\x00it", Mode: 0o644}}, ErrInvalidPath},
		{"trailer name", []Entry{{Path: "TRAILER!!!", Mode: 0o644}}, ErrInvalidPath},
		{"duplicate", []Entry{dir, dir}, ErrDuplicatePath},
		{"duplicate after cleaning", []Entry{dir, {Path: "/d/", Mode: os.ModeDir | 0o700}}, ErrDuplicatePath},
		{"missing parent", []Entry{{Path: "d/x", Mode: 0o644}}, ErrMissingParent},
		{"missing grandparent", []Entry{{Path: "d/e", Mode: os.ModeDir | 0o755}, {Path: "d/e/x", Mode: 0o644}}, ErrMissingParent},
		{"parent is a file", []Entry{{Path: "f", Mode: 0o644}, {Path: "f/x", Mode: 0o644}}, ErrMissingParent},
		{"symlink", []Entry{{Path: "l", Mode: os.ModeSymlink | 0o777, Data: []byte("init")}}, ErrUnsupportedMode},
		{"block device", []Entry{{Path: "b", Mode: os.ModeDevice | 0o600, Major: 8}}, ErrUnsupportedMode},
		{"named pipe", []Entry{{Path: "p", Mode: os.ModeNamedPipe | 0o600}}, ErrUnsupportedMode},
		{"socket", []Entry{{Path: "s", Mode: os.ModeSocket | 0o600}}, ErrUnsupportedMode},
		{"irregular", []Entry{{Path: "i", Mode: os.ModeIrregular | 0o600}}, ErrUnsupportedMode},
		{"Unix sticky bit in os.FileMode", []Entry{{Path: "tmp", Mode: os.ModeDir | 0o1777}}, ErrUnsupportedMode},
		{"append-only flag", []Entry{{Path: "f", Mode: os.ModeAppend | 0o600}}, ErrUnsupportedMode},
		{"directory with data", []Entry{{Path: "d", Mode: os.ModeDir | 0o755, Data: []byte("x")}}, ErrInvalidEntry},
		{"device with data", []Entry{{Path: "c", Mode: os.ModeDevice | os.ModeCharDevice, Data: []byte("x")}}, ErrInvalidEntry},
		{"file with device numbers", []Entry{{Path: "f", Mode: 0o644, Major: 1}}, ErrInvalidEntry},
		{"directory with device numbers", []Entry{{Path: "d", Mode: os.ModeDir, Minor: 1}}, ErrInvalidEntry},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			err := Write(&buf, tt.entries)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Write = %v, want %v", err, tt.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q spans lines", err)
			}
			if buf.Len() != 0 {
				t.Errorf("wrote %d bytes before failing", buf.Len())
			}
		})
	}
}

var errDiskFull = errors.New("disk full")

// failingWriter accepts limit bytes and then fails.
type failingWriter struct{ limit int }

func (w *failingWriter) Write(p []byte) (int, error) {
	if len(p) > w.limit {
		n := w.limit
		w.limit = 0
		return n, errDiskFull
	}
	w.limit -= len(p)
	return len(p), nil
}

func TestWriteReportsWriterError(t *testing.T) {
	agent := bytes.Repeat([]byte{0x90}, 64<<10) // larger than bufio's buffer
	for _, limit := range []int{0, 100, 5000, 66000} {
		t.Run(fmt.Sprint(limit), func(t *testing.T) {
			err := Write(&failingWriter{limit: limit}, Guest(agent, "husk-agent test"))
			if !errors.Is(err, errDiskFull) {
				t.Errorf("Write = %v, want %v", err, errDiskFull)
			}
		})
	}
}

// TestReadArchiveRejectsCorruption makes sure the test reader would notice
// the mistakes the round-trip tests rely on it to catch.
func TestReadArchiveRejectsCorruption(t *testing.T) {
	good := writeArchive(t, []Entry{{Path: "init", Mode: 0o755, Data: []byte("abcde")}})
	// Header 110 + "init\0" 5 = 115, padded to 116; data 116..121, padded to 124.
	tests := []struct {
		name    string
		corrupt func([]byte) []byte
	}{
		{"magic", func(b []byte) []byte { b[5] = '2'; return b }},
		{"hex field", func(b []byte) []byte { b[6] = 'g'; return b }},
		{"name padding", func(b []byte) []byte { b[115] = 1; return b }},
		{"data padding", func(b []byte) []byte { b[122] = 1; return b }},
		{"tail padding", func(b []byte) []byte { b[len(b)-1] = 1; return b }},
		{"not a 512 multiple", func(b []byte) []byte { return b[:len(b)-4] }},
		{"no trailer", func(b []byte) []byte { return b[:124] }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := readArchive(tt.corrupt(bytes.Clone(good))); err == nil {
				t.Error("readArchive accepted a corrupt archive")
			}
		})
	}
}
