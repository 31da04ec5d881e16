package sandbox

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/husk-runtime/husk/internal/channel"
	"github.com/husk-runtime/husk/internal/oci"
)

// sharedFiles are a container's paths in the share, host side and guest side.
type sharedFiles struct {
	guest oci.GuestPaths
}

// shareContainer bind-mounts the container's rootfs and every bind-mount
// source into the shared directory, at <shared>/<id>/rootfs and
// <shared>/<id>/mounts/<n>. Only these reach the guest, never the rest of
// the host. The mounts live in the front door's (daemon's or shim's) own mount
// namespace.
func shareContainer(sharedDir, id string, bundle *oci.Bundle) (*sharedFiles, error) {
	base := filepath.Join(sharedDir, id)
	rootfs := filepath.Join(base, "rootfs")
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		return nil, fmt.Errorf("sharing rootfs: %w", err)
	}
	// The rootfs is shared writable even when root.readonly is set: the
	// guest's libcontainer creates mount points in it first and makes it
	// read-only last, as runc does on a host.
	if err := bindMount(bundle.Rootfs, rootfs, true, false, false); err != nil {
		return nil, fmt.Errorf("sharing rootfs: %w", err)
	}
	guestBase := filepath.Join(channel.GuestSharedDir, id)
	files := &sharedFiles{guest: oci.GuestPaths{Root: filepath.Join(guestBase, "rootfs"), Sources: map[int]string{}, Submounts: map[int][]string{}}}
	for i, m := range bundle.Spec.Mounts {
		if !oci.IsBind(m) {
			continue
		}
		source := m.Source
		if !filepath.IsAbs(source) {
			source = filepath.Join(bundle.Dir, source)
		}
		fi, err := os.Stat(source)
		if err != nil {
			return nil, fmt.Errorf("mounts[%d] (%s): %w", i, m.Destination, err)
		}
		name := strconv.Itoa(i)
		target := filepath.Join(base, "mounts", name)
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return nil, err
		}
		if fi.IsDir() {
			err = os.Mkdir(target, 0o755)
		} else {
			err = os.WriteFile(target, nil, 0o644)
		}
		if err != nil {
			return nil, fmt.Errorf("mounts[%d] (%s): %w", i, m.Destination, err)
		}
		rec, ro, rro := recursive(m), hasOption(m, "ro"), hasOption(m, "rro")
		if err := bindMount(source, target, rec, ro || rro, rro); err != nil {
			return nil, fmt.Errorf("mounts[%d] (%s): %w", i, m.Destination, err)
		}
		files.guest.Sources[i] = filepath.Join(guestBase, "mounts", name)
		if rec && ro && !rro && fi.IsDir() {
			// The guest sees the share as one mount, which "ro" makes
			// read-only whole: the host's mounts below the source are
			// mounted again in the guest, keeping their own flags.
			if files.guest.Submounts[i], err = submountsBelow(source); err != nil {
				return nil, fmt.Errorf("mounts[%d] (%s): %w", i, m.Destination, err)
			}
		}
	}
	return files, nil
}

// recursive says whether a bind mount takes the source's submounts along:
// "rbind" does, "bind" does not.
func recursive(m specs.Mount) bool { return hasOption(m, "rbind") }

func hasOption(m specs.Mount, option string) bool {
	for _, o := range m.Options {
		if o == option {
			return true
		}
	}
	return false
}

// bindMount binds source at target; read-only also on the host side, so
// that a guest root that remounts its own view still cannot write through
// the share: the top mount only, as runc's "ro" does, or every submount
// with recRO ("rro"). The share is nodev and nosuid on the host
// side, with every submount: QEMU, which serves it as root, never opens a
// device node or runs a setuid file through it, whatever a guest made there.
// The guest sees the files as they are (its own kernel opens the device
// nodes it finds, as the guest's devices).
func bindMount(source, target string, rec, ro, recRO bool) error {
	flags := uintptr(unix.MS_BIND)
	if rec {
		flags |= unix.MS_REC
	}
	if err := unix.Mount(source, target, "", flags, ""); err != nil {
		return fmt.Errorf("bind-mounting %s: %w", source, err)
	}
	if err := unix.Mount("", target, "", unix.MS_SLAVE|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("making %s a slave mount: %w", target, err)
	}
	attr := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_NODEV | unix.MOUNT_ATTR_NOSUID}
	if recRO {
		attr.Attr_set |= unix.MOUNT_ATTR_RDONLY
	}
	if err := unix.MountSetattr(-1, target, unix.AT_RECURSIVE, attr); err != nil {
		return fmt.Errorf("setting the attributes of %s: %w", target, err)
	}
	if ro && !recRO {
		top := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}
		if err := unix.MountSetattr(-1, target, 0, top); err != nil {
			return fmt.Errorf("making %s read-only: %w", target, err)
		}
	}
	return nil
}

// submountsBelow lists the mounts below dir, relative to it, parents first.
func submountsBelow(dir string) ([]string, error) {
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return nil, err
	}
	mountinfo, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("listing mounts: %w", err)
	}
	return submountsIn(string(mountinfo), real), nil
}

// submountsIn lists the mount points of a mountinfo table strictly below
// dir, relative to it, each once, parents first.
func submountsIn(mountinfo, dir string) []string {
	prefix := strings.TrimSuffix(dir, "/") + "/"
	seen := map[string]bool{}
	var rels []string
	for _, line := range strings.Split(mountinfo, "\n") {
		fields := strings.Fields(line)
		if len(fields) < 5 {
			continue
		}
		point := unescapeMountPath(fields[4])
		if !strings.HasPrefix(point, prefix) || seen[point] {
			continue
		}
		seen[point] = true
		rels = append(rels, strings.TrimPrefix(point, prefix))
	}
	sort.Strings(rels) // a parent is a prefix of its children: it sorts first
	return rels
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountPath(p string) string {
	if !strings.Contains(p, "\\") {
		return p
	}
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		if p[i] == '\\' && i+3 < len(p) {
			if n, err := strconv.ParseUint(p[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(p[i])
	}
	return b.String()
}

// shareRootSize bounds the tmpfs under the share: it holds only the mount
// points, so a guest cannot fill the host's /run through it.
const shareRootSize = "1m"

// mountShareRoot puts a small tmpfs on the shared directory, in the front door's
// mount namespace; everything shared is mounted on top of it.
func mountShareRoot(dir string) error {
	if err := unix.Mount("husk-shared", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0711,size="+shareRootSize); err != nil {
		return fmt.Errorf("mounting the shared directory: %w", err)
	}
	return nil
}

// unmountShareRoot detaches the share with everything mounted under it, so
// that removing the state directory afterwards cannot reach through it.
func unmountShareRoot(dir string) {
	_ = unix.Unmount(dir, unix.MNT_DETACH)
}

// unshareContainer undoes shareContainer. It removes only empty directories
// and files it created, never recursively: if an unmount failed, the user's
// files under it must not be deleted through the share.
func unshareContainer(sharedDir, id string) {
	base := filepath.Join(sharedDir, id)
	rootfs := filepath.Join(base, "rootfs")
	_ = unix.Unmount(rootfs, unix.MNT_DETACH)
	_ = os.Remove(rootfs)
	mounts := filepath.Join(base, "mounts")
	if entries, err := os.ReadDir(mounts); err == nil {
		for _, e := range entries {
			target := filepath.Join(mounts, e.Name())
			_ = unix.Unmount(target, unix.MNT_DETACH)
			_ = os.Remove(target)
		}
	}
	_ = os.Remove(mounts)
	_ = os.Remove(base)
}
