package initrd

import (
	"bytes"
	"fmt"
	"strconv"
)

// cpioEntry is one entry as read back from an archive, trailer excluded.
type cpioEntry struct {
	ino, mode, uid, gid, nlink, mtime uint32
	devMajor, devMinor                uint32
	rdevMajor, rdevMinor              uint32
	check                             uint32
	name                              string
	data                              []byte
}

// ReadFile returns the data of the entry called name in a newc archive
// written by Write.
func ReadFile(archive []byte, name string) ([]byte, error) {
	entries, err := readArchive(archive)
	if err != nil {
		return nil, fmt.Errorf("reading the archive: %w", err)
	}
	for _, e := range entries {
		if e.name == name {
			return e.data, nil
		}
	}
	return nil, fmt.Errorf("%s: not in the archive", name)
}

// readArchive parses a newc archive strictly: every header must carry the
// newc magic and well-formed hex fields, every name must be NUL-terminated,
// all padding must be zeros, the archive must end with the trailer, and what
// follows the trailer must be zeros up to a 512-byte boundary.
func readArchive(archive []byte) ([]cpioEntry, error) {
	var entries []cpioEntry
	off := 0
	for {
		if off%4 != 0 {
			return nil, fmt.Errorf("header at %d is not 4-byte aligned", off)
		}
		if len(archive)-off < headerSize {
			return nil, fmt.Errorf("truncated header at %d", off)
		}
		hdr := archive[off : off+headerSize]
		if string(hdr[:6]) != "070701" {
			return nil, fmt.Errorf("bad magic %q at %d", hdr[:6], off)
		}
		var fields [13]uint32
		for i := range fields {
			s := string(hdr[6+8*i : 6+8*(i+1)])
			v, err := strconv.ParseUint(s, 16, 32)
			if err != nil {
				return nil, fmt.Errorf("field %d %q at %d: %v", i, s, off, err)
			}
			fields[i] = uint32(v)
		}
		e := cpioEntry{
			ino: fields[0], mode: fields[1], uid: fields[2], gid: fields[3],
			nlink: fields[4], mtime: fields[5],
			devMajor: fields[7], devMinor: fields[8],
			rdevMajor: fields[9], rdevMinor: fields[10],
			check: fields[12],
		}
		fileSize, nameSize := int(fields[6]), int(fields[11])
		off += headerSize

		if nameSize == 0 || len(archive)-off < nameSize {
			return nil, fmt.Errorf("bad name size %d at %d", nameSize, off)
		}
		name := archive[off : off+nameSize]
		if i := bytes.IndexByte(name, 0); i != nameSize-1 {
			return nil, fmt.Errorf("name %q at %d: NUL at %d, want %d", name, off, i, nameSize-1)
		}
		e.name = string(name[:nameSize-1])
		off += nameSize
		var err error
		if off, err = skipPadding(archive, off, 4); err != nil {
			return nil, err
		}
		if len(archive)-off < fileSize {
			return nil, fmt.Errorf("%s: truncated data", e.name)
		}
		e.data = archive[off : off+fileSize]
		off += fileSize
		if off, err = skipPadding(archive, off, 4); err != nil {
			return nil, err
		}
		if e.name == "TRAILER!!!" {
			if fileSize != 0 {
				return nil, fmt.Errorf("trailer has %d bytes of data", fileSize)
			}
			if len(archive)%512 != 0 {
				return nil, fmt.Errorf("archive is %d bytes, not a multiple of 512", len(archive))
			}
			if _, err := skipPadding(archive, off, 512); err != nil {
				return nil, err
			}
			return entries, nil
		}
		entries = append(entries, e)
	}
}

// skipPadding checks that the bytes from off to the next multiple of align
// are zeros and returns that multiple.
func skipPadding(archive []byte, off, align int) (int, error) {
	end := (off + align - 1) / align * align
	if end > len(archive) {
		return 0, fmt.Errorf("truncated padding at %d", off)
	}
	for i, b := range archive[off:end] {
		if b != 0 {
			return 0, fmt.Errorf("non-zero padding byte at %d", off+i)
		}
	}
	return end, nil
}
