package network

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// attachMacvtap puts a passthru macvtap device on link and opens its queue.
// The calling thread is in the namespace. Passthru mode hands the macvtap
// every frame the interface receives (the interface goes promiscuous) and
// the macvtap inherits the interface's MAC, which the guest then uses: the
// interface keeps its addresses, so the namespace looks as its maker left
// it.
func attachMacvtap(ep *Endpoint, link netlink.Link, alias string) error {
	attrs := link.Attrs()
	// NewLinkAttrs leaves the queue length to the kernel: a zero length
	// would give the queue a ring of no slots, and every frame for the
	// guest would be dropped.
	mvAttrs := netlink.NewLinkAttrs()
	mvAttrs.Name, mvAttrs.ParentIndex, mvAttrs.MTU = ep.Tap, attrs.Index, attrs.MTU
	mv := &netlink.Macvtap{Macvlan: netlink.Macvlan{LinkAttrs: mvAttrs, Mode: netlink.MACVLAN_MODE_PASSTHRU}}
	if err := netlink.LinkAdd(mv); err != nil {
		return fmt.Errorf("macvtap %s on %s: %w", ep.Tap, attrs.Name, err)
	}
	made, err := netlink.LinkByName(ep.Tap)
	if err != nil {
		// Just made, and gone or renamed: nothing of it is ours to find.
		return fmt.Errorf("macvtap %s: %w", ep.Tap, err)
	}
	// Named as the sandbox's before anything can fail: Detach and Clear
	// delete only what carries the name.
	if err := netlink.LinkSetAlias(made, alias); err != nil {
		_ = netlink.LinkDel(made)
		return fmt.Errorf("macvtap %s: alias: %w", ep.Tap, err)
	}
	ep.tapIndex = made.Attrs().Index
	if err := netlink.LinkSetUp(made); err != nil {
		return fmt.Errorf("macvtap %s: up: %w", ep.Tap, err)
	}
	here, err := netns.Get()
	if err != nil {
		return fmt.Errorf("the current network namespace: %w", err)
	}
	defer here.Close()
	ep.TapFile, err = openMacvtapQueue(here, ep.Tap)
	return err
}

// openMacvtapQueue opens a queue of the macvtap device name in the network
// namespace ns. The queue is a character device whose number only the
// namespace's own sysfs tells, and the host's /dev may have no node for it
// (nodes are named by interface index, which namespaces repeat). So a
// thread of its own enters the namespace and a private mount namespace,
// mounts sysfs there to read the number, and opens a node it makes on a
// private tmpfs. The thread is never unlocked: it exits with its goroutine,
// and its mounts with it, so nothing is left on the host.
func openMacvtapQueue(ns netns.NsHandle, name string) (*os.File, error) {
	f, err := onThrowawayThread(ns, name)
	if err != nil {
		return nil, fmt.Errorf("opening macvtap %s: %w", name, err)
	}
	return f, nil
}

// onThrowawayThread runs openQueueOnThisThread on a locked thread that
// exits afterwards.
func onThrowawayThread(ns netns.NsHandle, name string) (*os.File, error) {
	type result struct {
		file *os.File
		err  error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			// The main thread is never thrown away (Go parks it for
			// good instead), and /proc/self names its namespaces: it
			// must not enter others. Held here, it cannot take the
			// work, which another thread does.
			f, err := onThrowawayThread(ns, name)
			runtime.UnlockOSThread()
			done <- result{f, err}
			return
		}
		f, err := openQueueOnThisThread(ns, name)
		done <- result{f, err}
	}()
	r := <-done
	return r.file, r.err
}

// openQueueOnThisThread does openMacvtapQueue's work on a locked thread
// that is thrown away afterwards.
func openQueueOnThisThread(ns netns.NsHandle, name string) (*os.File, error) {
	if err := netns.Set(ns); err != nil {
		return nil, fmt.Errorf("entering the network namespace: %w", err)
	}
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return nil, fmt.Errorf("a private mount namespace: %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return nil, fmt.Errorf("making mounts private: %w", err)
	}
	// /sys is mounted over in the private namespace only; sysfs shows the
	// network namespace of the thread that mounts it.
	if err := unix.Mount("sysfs", "/sys", "sysfs", unix.MS_NOSUID|unix.MS_NOEXEC, ""); err != nil {
		return nil, fmt.Errorf("mounting sysfs: %w", err)
	}
	dev, err := macvtapDevNumber(filepath.Join("/sys/class/net", name, "macvtap"))
	if err != nil {
		return nil, err
	}
	if err := unix.Mount("tmpfs", "/sys", "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "size=4k,mode=0700"); err != nil {
		return nil, fmt.Errorf("mounting a tmpfs for the device node: %w", err)
	}
	node := "/sys/queue"
	if err := unix.Mknod(node, unix.S_IFCHR|0o600, int(dev)); err != nil {
		return nil, fmt.Errorf("making the device node: %w", err)
	}
	fd, err := unix.Open(node, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening the device node: %w", err)
	}
	return os.NewFile(uintptr(fd), "macvtap:"+name), nil
}

// macvtapDevNumber reads the device number of the one queue device under
// dir (/sys/class/net/NAME/macvtap/tapINDEX/dev, "major:minor").
func macvtapDevNumber(dir string) (uint64, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	if len(entries) != 1 {
		return 0, fmt.Errorf("%s: want one queue device, found %d", dir, len(entries))
	}
	raw, err := os.ReadFile(filepath.Join(dir, entries[0].Name(), "dev"))
	if err != nil {
		return 0, err
	}
	var major, minor uint32
	if _, err := fmt.Sscanf(strings.TrimSpace(string(raw)), "%d:%d", &major, &minor); err != nil {
		return 0, fmt.Errorf("device number %q: %w", raw, err)
	}
	return unix.Mkdev(major, minor), nil
}
