package agent

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/husk-runtime/husk/internal/channel"
)

const (
	// stateDir holds libcontainer's per-container state inside the guest.
	stateDir = "/run/husk/containers"
	// rootEnv marks the second start of /init, after it moved the root.
	rootEnv = "HUSK_AGENT_ROOT"
)

// Params are the agent's settings from the kernel command line (husk.*).
type Params struct {
	MSize        int  // 9p msize
	Debug        bool // log to the console
	DebugConsole bool // serve DebugConsole (the image holds a busybox)
}

// ParseCmdline reads husk.* parameters from a kernel command line.
func ParseCmdline(cmdline string) (Params, error) {
	p := Params{MSize: 512 << 10}
	for _, field := range strings.Fields(cmdline) {
		key, value, _ := strings.Cut(field, "=")
		switch key {
		case "husk.msize":
			n, err := strconv.Atoi(value)
			if err != nil || n < 4096 {
				return p, fmt.Errorf("husk.msize=%q: want a number of bytes >= 4096", value)
			}
			p.MSize = n
		case "husk.debug":
			p.Debug = value == "1" || value == "true"
		case "husk.debug_console":
			p.DebugConsole = value == "1" || value == "true"
		}
	}
	return p, nil
}

// MoveRootIfInitramfs makes the root a real mount. pivot_root(2) fails with
// EINVAL while the root is the initramfs, and libcontainer pivots into every
// container's root, so on first start /init bind-mounts / onto itself (a mount
// that has a parent), moves it over / and re-executes. The bind costs no copy
// of the image. It returns only on the second start or on error.
func MoveRootIfInitramfs() error {
	if os.Getpid() != 1 || os.Getenv(rootEnv) != "" {
		return nil
	}
	const newRoot = "/newroot"
	if err := os.MkdirAll(newRoot, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", newRoot, err)
	}
	if err := unix.Mount("/", newRoot, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind-mounting / for the new root: %w", err)
	}
	if err := unix.Chdir(newRoot); err != nil {
		return fmt.Errorf("entering the new root: %w", err)
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("moving the new root over /: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot into the new root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return err
	}
	env := append(os.Environ(), rootEnv+"=1")
	if err := unix.Exec("/init", os.Args, env); err != nil {
		return fmt.Errorf("re-executing /init: %w", err)
	}
	return nil
}

type mountPoint struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}

// MountProc mounts /proc, which the agent needs to read its parameters.
func MountProc() error {
	if err := os.MkdirAll("/proc", 0o555); err != nil {
		return err
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mounting proc: %w", err)
	}
	return nil
}

// MountSystem mounts the rest of what the kernel does not: pseudo
// filesystems and cgroup v2.
func MountSystem() error {
	const nosuid = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	mounts := []mountPoint{
		{"sysfs", "/sys", "sysfs", nosuid, ""},
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
		{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"},
		{"tmpfs", "/dev/shm", "tmpfs", nosuid, "mode=1777"},
		{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
		{"cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid, ""},
	}
	for _, m := range mounts {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			return fmt.Errorf("creating %s: %w", m.target, err)
		}
		if err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data); err != nil {
			return fmt.Errorf("mounting %s on %s: %w", m.fstype, m.target, err)
		}
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return err
	}
	// Hand every controller to child cgroups, where libcontainer puts containers.
	controllers, err := os.ReadFile("/sys/fs/cgroup/cgroup.controllers")
	if err != nil {
		return fmt.Errorf("reading cgroup controllers: %w", err)
	}
	var enable []string
	for _, c := range strings.Fields(string(controllers)) {
		enable = append(enable, "+"+c)
	}
	if len(enable) > 0 {
		if err := os.WriteFile("/sys/fs/cgroup/cgroup.subtree_control", []byte(strings.Join(enable, " ")), 0); err != nil {
			return fmt.Errorf("enabling cgroup controllers: %w", err)
		}
	}
	if err := os.Symlink("/proc/self/fd", "/dev/fd"); err != nil && !os.IsExist(err) {
		return err
	}
	return setLoopbackUp()
}

// MountShare mounts the sandbox's shared directory. It comes after the
// host's hello: QEMU cannot save a guest that has the 9p share mounted, and
// a sandbox restored from a template mounts its own.
func MountShare(p Params) error {
	if err := os.MkdirAll(channel.GuestSharedDir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", channel.GuestSharedDir, err)
	}
	data := fmt.Sprintf("trans=virtio,version=9p2000.L,msize=%d,cache=mmap,access=client", p.MSize)
	if err := unix.Mount(channel.SharedTag, channel.GuestSharedDir, "9p", unix.MS_NODEV, data); err != nil {
		return fmt.Errorf("mounting the shared directory on %s: %w", channel.GuestSharedDir, err)
	}
	return nil
}

// TakeHello sets the guest's clock to the host's and reseeds its random
// number generator with the host's entropy. Guests restored from one
// template would otherwise all wake with the template's clock and, worse,
// the template's random state: the same "random" bytes in every sandbox.
func TakeHello(h channel.Hello) error {
	ts := unix.NsecToTimespec(h.RealtimeNs)
	if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
		return fmt.Errorf("setting the guest's clock: %w", err)
	}
	return addEntropy(h.Entropy[:])
}

// addEntropy credits seed to the kernel's input pool and makes the kernel
// reseed its generator from that pool at once, rather than at its next
// scheduled reseed (up to a minute later).
func addEntropy(seed []byte) error {
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening /dev/urandom: %w", err)
	}
	defer f.Close()
	// struct rand_pool_info: int entropy_count (bits); int buf_size
	// (bytes); the bytes.
	info := make([]byte, 8+len(seed))
	binary.NativeEndian.PutUint32(info[0:], uint32(8*len(seed)))
	binary.NativeEndian.PutUint32(info[4:], uint32(len(seed)))
	copy(info[8:], seed)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&info[0]))); errno != 0 {
		return fmt.Errorf("adding the host's entropy: %w", errno)
	}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDRESEEDCRNG, 0); errno != 0 {
		return fmt.Errorf("reseeding the guest's random number generator: %w", errno)
	}
	return nil
}

func setLoopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket for lo: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("reading lo flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bringing lo up: %w", err)
	}
	return nil
}

// OpenPort finds the virtio-serial port named channel.PortName and opens it.
// The port's device node appears shortly after the driver binds, so it waits.
func OpenPort(timeout time.Duration) (*os.File, error) {
	deadline := time.Now().Add(timeout)
	for {
		names, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
		for _, nameFile := range names {
			name, err := os.ReadFile(nameFile)
			if err != nil || strings.TrimSpace(string(name)) != channel.PortName {
				continue
			}
			dev := "/dev/" + filepath.Base(filepath.Dir(nameFile))
			f, err := os.OpenFile(dev, os.O_RDWR|unix.O_CLOEXEC, 0)
			if err == nil {
				return f, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no virtio-serial port named %s after %s", channel.PortName, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// PowerOff ends the VM. With reboot=t on the kernel command line a restart
// is a triple fault, and QEMU started with -no-reboot exits on it: microvm
// has no ACPI to power off through.
func PowerOff() {
	unix.Sync()
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
}

// MonotonicNow is the guest's CLOCK_MONOTONIC in nanoseconds: time since boot.
func MonotonicNow() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}
