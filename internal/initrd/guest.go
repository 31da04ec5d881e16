package initrd

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
)

// ReleaseFile names, in the guest image, the husk version that built it.
const ReleaseFile = "etc/husk-release"

// Guest returns the entries of the standard guest image: the mount points
// the agent needs, a console, the agent itself as /init and the release
// file naming the husk version that built it. The /init entry shares
// agentBinary rather than copying it.
func Guest(agentBinary []byte, release string) []Entry {
	const dir = os.ModeDir | 0o755
	return []Entry{
		{Path: "dev", Mode: dir},
		// The kernel opens /dev/console for init's stdin, stdout and stderr
		// before the agent can mount devtmpfs; without the node, init runs
		// with no stdio and its early errors are lost.
		{Path: "dev/console", Mode: os.ModeDevice | os.ModeCharDevice | 0o600, Major: 5, Minor: 1},
		{Path: "proc", Mode: dir},
		{Path: "sys", Mode: dir},
		{Path: "run", Mode: dir},
		{Path: "tmp", Mode: os.ModeDir | os.ModeSticky | 0o777},
		{Path: "etc", Mode: dir},
		{Path: ReleaseFile, Mode: 0o644, Data: []byte(release + "\n")},
		{Path: "init", Mode: 0o755, Data: agentBinary},
	}
}

// Errors returned by CheckAgent.
var (
	ErrNotELF        = errors.New("not an ELF file")
	ErrNotExecutable = errors.New("not an ELF executable")
	ErrDynamicAgent  = errors.New("dynamically linked")
)

// CheckAgent returns nil if binary can run as the guest's /init: an ELF
// executable with no program interpreter, since the guest image holds no
// dynamic loader or shared libraries. Otherwise it returns an error wrapping
// ErrNotELF, ErrNotExecutable or ErrDynamicAgent.
func CheckAgent(binary []byte) error {
	if !bytes.HasPrefix(binary, []byte(elf.ELFMAG)) {
		return ErrNotELF
	}
	f, err := elf.NewFile(bytes.NewReader(binary))
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNotELF, err)
	}
	// A static-pie executable is ET_DYN like a shared library; its entry
	// point tells them apart.
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return fmt.Errorf("%w: type %v", ErrNotExecutable, f.Type)
	}
	if f.Entry == 0 {
		return fmt.Errorf("%w: no entry point", ErrNotExecutable)
	}
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			interp, _ := io.ReadAll(io.LimitReader(prog.Open(), 256))
			return fmt.Errorf("%w: needs program interpreter %q; build the agent statically (CGO_ENABLED=0)",
				ErrDynamicAgent, bytes.TrimRight(interp, "\x00"))
		}
	}
	return nil
}
