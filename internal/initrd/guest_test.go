package initrd

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestGuest(t *testing.T) {
	agent := []byte("\x7fELF pretend agent")
	archive := writeArchive(t, Guest(agent, "husk-agent 1.2.3"))
	got := readBack(t, archive)

	want := []struct {
		name string
		mode uint32
		rdev [2]uint32
	}{
		{"dev", 0o040755, [2]uint32{}},
		{"dev/console", 0o020600, [2]uint32{5, 1}},
		{"etc", 0o040755, [2]uint32{}},
		{"etc/husk-release", 0o100644, [2]uint32{}},
		{"init", 0o100755, [2]uint32{}},
		{"proc", 0o040755, [2]uint32{}},
		{"run", 0o040755, [2]uint32{}},
		{"sys", 0o040755, [2]uint32{}},
		{"tmp", 0o041777, [2]uint32{}},
	}
	if len(got) != len(want) {
		t.Fatalf("guest image holds %v, want %d entries", names(got), len(want))
	}
	for i, w := range want {
		g := got[i]
		if g.name != w.name || g.mode != w.mode || [2]uint32{g.rdevMajor, g.rdevMinor} != w.rdev {
			t.Errorf("entry %d: %s mode %#o rdev %d:%d, want %s mode %#o rdev %d:%d",
				i, g.name, g.mode, g.rdevMajor, g.rdevMinor, w.name, w.mode, w.rdev[0], w.rdev[1])
		}
		if w.name == "init" && !bytes.Equal(g.data, agent) {
			t.Errorf("init holds %q, want the agent %q", g.data, agent)
		}
	}
	if release, err := ReadFile(archive, ReleaseFile); err != nil || string(release) != "husk-agent 1.2.3\n" {
		t.Errorf("release file %q, %v", release, err)
	}
	if _, err := ReadFile(archive, "etc/passwd"); err == nil {
		t.Error("ReadFile found a file that is not there")
	}
	if _, err := ReadFile([]byte("garbage"), ReleaseFile); err == nil {
		t.Error("ReadFile read garbage")
	}
}

// minimalELF returns the headers of a 64-bit little-endian x86-64 ELF file of
// the given type with one program header of each given type. debug/elf needs
// nothing more to parse it.
func minimalELF(t *testing.T, typ elf.Type, progs ...elf.ProgType) []byte {
	t.Helper()
	const headerSize, progSize = 64, 56
	hdr := elf.Header64{
		Type:      uint16(typ),
		Machine:   uint16(elf.EM_X86_64),
		Version:   uint32(elf.EV_CURRENT),
		Entry:     0x401000,
		Phoff:     headerSize,
		Ehsize:    headerSize,
		Phentsize: progSize,
		Phnum:     uint16(len(progs)),
		Shentsize: 64,
	}
	copy(hdr.Ident[:], elf.ELFMAG)
	hdr.Ident[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	hdr.Ident[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	hdr.Ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)

	var buf bytes.Buffer
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(binary.Write(&buf, binary.LittleEndian, hdr))
	interp := "/lib64/ld-linux-x86-64.so.2\x00"
	interpOff := uint64(headerSize + progSize*len(progs))
	for _, typ := range progs {
		prog := elf.Prog64{Type: uint32(typ), Align: 8}
		if typ == elf.PT_INTERP {
			prog.Off, prog.Filesz, prog.Memsz = interpOff, uint64(len(interp)), uint64(len(interp))
		}
		must(binary.Write(&buf, binary.LittleEndian, prog))
	}
	buf.WriteString(interp)
	return buf.Bytes()
}

// withoutEntry clears the entry point of an ELF file made by minimalELF.
func withoutEntry(binary []byte) []byte {
	binary = bytes.Clone(binary)
	clear(binary[24:32]) // e_entry
	return binary
}

func TestCheckAgent(t *testing.T) {
	tests := []struct {
		name   string
		binary []byte
		want   error
	}{
		{"static executable", minimalELF(t, elf.ET_EXEC, elf.PT_LOAD), nil},
		{"static-pie executable", minimalELF(t, elf.ET_DYN, elf.PT_LOAD), nil},
		{"dynamic executable", minimalELF(t, elf.ET_EXEC, elf.PT_PHDR, elf.PT_INTERP, elf.PT_LOAD), ErrDynamicAgent},
		{"dynamic pie", minimalELF(t, elf.ET_DYN, elf.PT_INTERP, elf.PT_LOAD), ErrDynamicAgent},
		{"shared library", withoutEntry(minimalELF(t, elf.ET_DYN, elf.PT_LOAD)), ErrNotExecutable},
		{"relocatable object", minimalELF(t, elf.ET_REL), ErrNotExecutable},
		{"core dump", minimalELF(t, elf.ET_CORE, elf.PT_LOAD), ErrNotExecutable},
		{"empty", nil, ErrNotELF},
		{"shell script", []byte("#!/bin/sh\nexec /bin/agent\n"), ErrNotELF},
		{"magic only", []byte("\x7fELF"), ErrNotELF},
		{"truncated header", minimalELF(t, elf.ET_EXEC, elf.PT_LOAD)[:40], ErrNotELF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckAgent(tt.binary)
			if !errors.Is(err, tt.want) {
				t.Errorf("CheckAgent = %v, want %v", err, tt.want)
			}
			if err != nil && strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q spans lines", err)
			}
		})
	}
	err := CheckAgent(minimalELF(t, elf.ET_EXEC, elf.PT_INTERP))
	if err == nil || !strings.Contains(err.Error(), "/lib64/ld-linux-x86-64.so.2") {
		t.Errorf("CheckAgent = %v, want the interpreter named", err)
	}
}

// TestGNUCpio checks the archive with an independent reader, GNU cpio: its
// listing, its verbose listing's modes and device numbers, and the files it
// extracts.
func TestGNUCpio(t *testing.T) {
	cpio, err := exec.LookPath("cpio")
	if err != nil {
		t.Skip("cpio is not installed (apt-get install cpio); the other tests still read the archive back")
	}
	agent := bytes.Repeat([]byte("agent"), 1001) // not a multiple of 4
	entries := append(Guest(agent, "husk-agent test"), Entry{Path: "tmp/note", Mode: 0o640, Data: []byte("hi")})
	archivePath := filepath.Join(t.TempDir(), "initrd.cpio")
	if err := os.WriteFile(archivePath, writeArchive(t, entries), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(dir string, args ...string) string {
		t.Helper()
		archive, err := os.Open(archivePath)
		if err != nil {
			t.Fatal(err)
		}
		defer archive.Close()
		cmd := exec.Command(cpio, args...)
		cmd.Dir = dir
		cmd.Stdin = archive
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil || stderr.Len() > 0 {
			t.Fatalf("cpio %s: %v; stderr: %s", strings.Join(args, " "), err, stderr.Bytes())
		}
		return string(out)
	}

	listing := strings.Fields(run("", "-it", "--quiet"))
	wantNames := []string{"dev", "dev/console", "etc", "etc/husk-release", "init", "proc", "run", "sys", "tmp", "tmp/note"}
	if !slices.Equal(listing, wantNames) {
		t.Errorf("cpio -it lists %v, want %v", listing, wantNames)
	}

	// cpio -itv prints an ls -l line: mode, links, owner, group, size or
	// device numbers, date, name.
	wantLong := map[string]string{
		"dev":         "drwxr-xr-x 2 root root 0",
		"dev/console": "crw------- 1 root root 5, 1",
		"init":        "-rwxr-xr-x 1 root root 5005",
		"tmp":         "drwxrwxrwt 2 root root 0",
		"tmp/note":    "-rw-r----- 1 root root 2",
	}
	for _, line := range strings.Split(strings.TrimSpace(run("", "-itv", "--quiet", "--numeric-uid-gid")), "\n") {
		fields := strings.Fields(line)
		name := fields[len(fields)-1]
		want, ok := wantLong[name]
		if !ok {
			continue
		}
		wantFields := strings.Fields(strings.NewReplacer("root", "0").Replace(want))
		if got := fields[:len(wantFields)]; !slices.Equal(got, wantFields) {
			t.Errorf("cpio -itv: %q, want it to start %q", line, strings.Join(wantFields, " "))
		}
	}

	// Creating dev/console would need root, so extract the rest.
	dir := t.TempDir()
	run(dir, "-idm", "--quiet", "--no-absolute-filenames", "--nonmatching", "dev/console")
	for name, wantData := range map[string][]byte{"init": agent, "tmp/note": []byte("hi")} {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("extracting %s: %v", name, err)
		} else if !bytes.Equal(data, wantData) {
			t.Errorf("extracted %s differs from what was archived", name)
		}
	}
	if fi, err := os.Stat(filepath.Join(dir, "init")); err != nil {
		t.Error(err)
	} else if fi.Mode() != 0o755 {
		t.Errorf("extracted init has mode %v, want -rwxr-xr-x", fi.Mode())
	}
}
