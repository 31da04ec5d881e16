package sandbox

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/husk-runtime/husk/internal/channel"
	"github.com/husk-runtime/husk/internal/oci"
)

// sharedFiles are a container's paths in the share, host side and guest side.
type sharedFiles struct {
	guestRoot    string
	guestSources map[int]string
}

// shareContainer bind-mounts the container's rootfs and every bind-mount
// source into the shared directory, at <shared>/<id>/rootfs and
// <shared>/<id>/mounts/<n>. Only these reach the guest, never the rest of
// the host. The mounts live in the daemon's own mount namespace.
func shareContainer(sharedDir, id string, bundle *oci.Bundle) (*sharedFiles, error) {
	base := filepath.Join(sharedDir, id)
	rootfs := filepath.Join(base, "rootfs")
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		return nil, fmt.Errorf("sharing rootfs: %w", err)
	}
	if err := bindMount(bundle.Rootfs, rootfs, bundle.Spec.Root.Readonly); err != nil {
		return nil, fmt.Errorf("sharing rootfs: %w", err)
	}
	guestBase := filepath.Join(channel.GuestSharedDir, id)
	files := &sharedFiles{guestRoot: filepath.Join(guestBase, "rootfs"), guestSources: map[int]string{}}
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
		if err := bindMount(source, target, readOnly(m)); err != nil {
			return nil, fmt.Errorf("mounts[%d] (%s): %w", i, m.Destination, err)
		}
		files.guestSources[i] = filepath.Join(guestBase, "mounts", name)
	}
	return files, nil
}

func readOnly(m specs.Mount) bool {
	for _, o := range m.Options {
		if o == "ro" {
			return true
		}
	}
	return false
}

// bindMount binds source at target; read-only also on the host side, so a
// guest that remounts its view cannot write through the share.
func bindMount(source, target string, ro bool) error {
	if err := unix.Mount(source, target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind-mounting %s: %w", source, err)
	}
	if err := unix.Mount("", target, "", unix.MS_SLAVE|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("making %s a slave mount: %w", target, err)
	}
	if ro {
		if err := unix.Mount("", target, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("making %s read-only: %w", target, err)
		}
	}
	return nil
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
