// Package initrd writes the guest image: a reproducible newc cpio archive whose
// /init is the agent.
//
// The archive holds only what the guest kernel needs before the agent runs:
// directories, device nodes and regular files, all owned by root with mtime 0.
// The same entries always produce the same bytes, whatever order they are
// given in, so an image can be rebuilt and compared byte for byte.
package initrd

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path"
	"slices"
	"strings"
)

// Entry is one file in the archive.
type Entry struct {
	// Path is relative to the guest's root. Leading slashes are ignored and
	// the path is cleaned; it must not escape the root.
	Path string
	// Mode holds the type bits (directory, character device, or none for a
	// regular file) and the permission bits, including setuid, setgid and
	// sticky.
	Mode os.FileMode
	// Data is the contents of a regular file; it must be empty otherwise.
	Data []byte
	// Major and Minor are the device numbers of a device node; they must be
	// zero otherwise.
	Major, Minor uint32
}

// Errors returned, wrapped with the offending path, by Write.
var (
	ErrInvalidPath     = errors.New("invalid path")
	ErrDuplicatePath   = errors.New("duplicate path")
	ErrMissingParent   = errors.New("missing parent directory")
	ErrUnsupportedMode = errors.New("unsupported file mode")
	ErrInvalidEntry    = errors.New("invalid entry")
)

const (
	magic       = "070701" // newc: ASCII hex fields, no checksum
	headerSize  = 110      // magic plus 13 fields of 8 hex digits
	trailerName = "TRAILER!!!"
	blockSize   = 512

	modeTypeMask = 0o170000
	modeRegular  = 0o100000
	modeDir      = 0o040000
	modeCharDev  = 0o020000
	modeSetuid   = 0o4000
	modeSetgid   = 0o2000
	modeSticky   = 0o1000
)

// Write writes entries to w as a newc cpio archive in the format the Linux
// kernel unpacks into its initial root filesystem.
//
// Entries are written sorted by path, so a directory always precedes what it
// contains; inode numbers are assigned 1, 2, 3... in that order, every owner
// is root and every mtime is 0. Every parent directory must itself be an
// entry: Write rejects a missing one rather than invent its mode. The
// archive ends with the TRAILER!!! entry and is padded with zeros to a
// multiple of 512 bytes.
//
// All entries are checked before anything is written, so an invalid entry
// leaves w untouched.
func Write(w io.Writer, entries []Entry) error {
	files, err := prepare(entries)
	if err != nil {
		return err
	}
	aw := &archiveWriter{w: bufio.NewWriter(w)}
	for i, f := range files {
		aw.writeFile(header{
			ino:      uint32(i + 1),
			mode:     f.mode,
			nlink:    f.nlink,
			fileSize: uint32(len(f.data)),
			rdevMaj:  f.major,
			rdevMin:  f.minor,
		}, f.name, f.data)
	}
	// GNU cpio writes the trailer with one link; the kernel only looks at
	// its name.
	aw.writeFile(header{nlink: 1}, trailerName, nil)
	aw.pad(blockSize)
	if aw.err != nil {
		return fmt.Errorf("writing initrd: %w", aw.err)
	}
	if err := aw.w.Flush(); err != nil {
		return fmt.Errorf("writing initrd: %w", err)
	}
	return nil
}

// file is a validated entry, ready to be written.
type file struct {
	name         string
	mode         uint32
	nlink        uint32
	data         []byte
	major, minor uint32
}

// prepare validates entries and returns them as files sorted by name. Plain
// byte order puts every directory before its contents, since a parent's
// name is a prefix of its children's.
func prepare(entries []Entry) ([]file, error) {
	files := make([]file, 0, len(entries))
	isDir := make(map[string]bool, len(entries))
	for _, e := range entries {
		f, err := validate(e)
		if err != nil {
			return nil, err
		}
		if _, dup := isDir[f.name]; dup {
			return nil, fmt.Errorf("initrd entry %q: %w", e.Path, ErrDuplicatePath)
		}
		isDir[f.name] = f.mode&modeTypeMask == modeDir
		files = append(files, f)
	}
	for _, f := range files {
		parent := path.Dir(f.name)
		if parent == "." {
			continue
		}
		dir, ok := isDir[parent]
		if !ok {
			return nil, fmt.Errorf("initrd entry %q: %w: %q is not in the archive", f.name, ErrMissingParent, parent)
		}
		if !dir {
			return nil, fmt.Errorf("initrd entry %q: %w: %q is not a directory", f.name, ErrMissingParent, parent)
		}
	}
	slices.SortFunc(files, func(a, b file) int { return strings.Compare(a.name, b.name) })
	return files, nil
}

func validate(e Entry) (file, error) {
	fail := func(err error, detail string) (file, error) {
		return file{}, fmt.Errorf("initrd entry %q: %w: %s", e.Path, err, detail)
	}
	name, err := cleanPath(e.Path)
	if err != nil {
		return fail(ErrInvalidPath, err.Error())
	}
	mode, err := unixMode(e.Mode)
	if err != nil {
		return fail(ErrUnsupportedMode, err.Error())
	}
	f := file{name: name, mode: mode, nlink: 1}
	typ := mode & modeTypeMask
	if typ != modeRegular && len(e.Data) > 0 {
		return fail(ErrInvalidEntry, "only a regular file has data")
	}
	if typ != modeCharDev && (e.Major != 0 || e.Minor != 0) {
		return fail(ErrInvalidEntry, "only a device node has device numbers")
	}
	switch typ {
	case modeRegular:
		if uint64(len(e.Data)) > math.MaxUint32 {
			return fail(ErrInvalidEntry, "newc cannot hold a file of 4 GiB or more")
		}
		f.data = e.Data
	case modeDir:
		// A directory's own "." entry is its second link.
		f.nlink = 2
	case modeCharDev:
		f.major, f.minor = e.Major, e.Minor
	}
	return f, nil
}

// cleanPath returns p relative to the root, as it is stored in the archive.
func cleanPath(p string) (string, error) {
	if strings.IndexByte(p, 0) >= 0 {
		return "", errors.New("contains a NUL byte")
	}
	name := path.Clean(strings.TrimLeft(p, "/"))
	switch {
	case name == ".":
		return "", errors.New("empty or the root itself")
	case name == ".." || strings.HasPrefix(name, "../"):
		return "", errors.New("escapes the root")
	case name == trailerName:
		// The kernel would stop unpacking at this entry.
		return "", errors.New("is the end-of-archive marker")
	}
	return name, nil
}

// unixMode converts m to the st_mode bits that newc stores.
func unixMode(m os.FileMode) (uint32, error) {
	var mode uint32
	switch m.Type() {
	case 0:
		mode = modeRegular
	case os.ModeDir:
		mode = modeDir
	case os.ModeDevice | os.ModeCharDevice:
		mode = modeCharDev
	default:
		return 0, fmt.Errorf("type %v is not a directory, character device or regular file", m.Type())
	}
	extra := m &^ (os.ModeType | os.ModePerm | os.ModeSetuid | os.ModeSetgid | os.ModeSticky)
	if extra&0o7000 != 0 {
		// Easy to write by habit (0o1777), but os.FileMode has its own bits.
		return 0, fmt.Errorf("bits %#o are Unix setuid/setgid/sticky; use os.ModeSetuid, os.ModeSetgid or os.ModeSticky", uint32(extra&0o7000))
	}
	if extra != 0 {
		return 0, fmt.Errorf("mode bits %v have no cpio equivalent", extra)
	}
	mode |= uint32(m.Perm())
	if m&os.ModeSetuid != 0 {
		mode |= modeSetuid
	}
	if m&os.ModeSetgid != 0 {
		mode |= modeSetgid
	}
	if m&os.ModeSticky != 0 {
		mode |= modeSticky
	}
	return mode, nil
}

// header holds the newc header fields that vary; uid, gid, mtime, the
// containing device and the checksum are always 0.
type header struct {
	ino, mode, nlink, fileSize uint32
	rdevMaj, rdevMin           uint32
}

// archiveWriter writes the archive and remembers the first error, so the
// caller checks once at the end.
type archiveWriter struct {
	w   *bufio.Writer
	n   int64
	err error
}

func (aw *archiveWriter) write(p []byte) {
	if aw.err != nil {
		return
	}
	n, err := aw.w.Write(p)
	aw.n += int64(n)
	aw.err = err
}

// pad writes zeros up to the next multiple of align.
func (aw *archiveWriter) pad(align int64) {
	var zeros [blockSize]byte
	if rem := aw.n % align; rem != 0 {
		aw.write(zeros[:align-rem])
	}
}

func (aw *archiveWriter) writeFile(h header, name string, data []byte) {
	buf := make([]byte, 0, headerSize+len(name)+1)
	buf = append(buf, magic...)
	for _, field := range [13]uint32{
		h.ino, h.mode,
		0, 0, // uid, gid
		h.nlink,
		0, // mtime
		h.fileSize,
		0, 0, // major and minor of the device holding the file
		h.rdevMaj, h.rdevMin,
		uint32(len(name) + 1), // name size, counting its NUL
		0,                     // checksum, used only by the 070702 format
	} {
		buf = fmt.Appendf(buf, "%08x", field)
	}
	buf = append(buf, name...)
	buf = append(buf, 0)
	aw.write(buf)
	aw.pad(4)
	aw.write(data)
	aw.pad(4)
}
