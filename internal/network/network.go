package network

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Interface is one interface as the guest recreates it.
type Interface struct {
	Name      string
	MAC       net.HardwareAddr
	MTU       int
	Addresses []*net.IPNet
}

// Route is one route of the namespace, by the name of its interface.
type Route struct {
	Destination *net.IPNet // nil: the default route
	Gateway     net.IP
	Device      string
	Scope       netlink.Scope
}

// Mode says how an interface of the namespace is joined to the VM.
type Mode int

const (
	// TC joins the interface to a new tap device with a tc ingress
	// redirect each way: the interface keeps its own device.
	TC Mode = iota
	// Macvtap puts a passthru macvtap device on the interface: the
	// kernel hands the macvtap every frame the interface receives and
	// sends the VM's frames out of it, without a tc rule.
	Macvtap
)

// Endpoint is an interface of the namespace and the tap joined to it.
type Endpoint struct {
	Interface Interface
	// Tap names the tap (TC) or macvtap (Macvtap) device made for the
	// interface.
	Tap string
	// TapFile is the device's queue, for QEMU (-netdev tap,fd=N).
	TapFile *os.File
	mode    Mode
	// linkIndex is the interface's index; tapIndex the made device's, 0
	// until it was made and found.
	linkIndex, tapIndex int
}

// Attachment is what Attach set up in a namespace.
type Attachment struct {
	NetNS     string
	Endpoints []*Endpoint
	Routes    []Route
	// owner names the sandbox in the alias of every device made for it.
	owner string
}

// ErrOwnNamespace is returned by Attach for the caller's own network
// namespace (the host's): husk never puts taps or redirects there. Docker's
// --network container:ID names the stand-in's, which is the host's.
var ErrOwnNamespace = errors.New("the network namespace is the host's own")

// tapPrefix begins the name of every device husk makes in a namespace.
const tapPrefix = "husktap"

// tapName names the tap of the n-th interface; the namespace is the
// sandbox's, so the name only has to be unique within it.
func tapName(n int) string { return fmt.Sprintf("%s%d", tapPrefix, n) }

// inNetNS runs fn with the calling thread in the network namespace at path.
// Netlink requests and the tap's creation act on the thread's namespace.
func inNetNS(path string, fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("the current network namespace: %w", err)
	}
	defer orig.Close()
	target, err := netns.GetFromPath(path)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("network namespace %s: %w", path, err)
	}
	defer target.Close()
	if target.Equal(orig) {
		runtime.UnlockOSThread()
		return fmt.Errorf("network namespace %s: %w", path, ErrOwnNamespace)
	}
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("entering network namespace %s: %w", path, err)
	}
	fnErr := fn()
	if err := netns.Set(orig); err != nil {
		// The thread stays locked, so it ends with its goroutine rather
		// than serve another in the wrong namespace.
		return errors.Join(fnErr, fmt.Errorf("leaving network namespace %s: %w", path, err))
	}
	runtime.UnlockOSThread()
	return fnErr
}

// HasInterfaces says whether the namespace at path has an interface that
// Attach would join to a VM.
func HasInterfaces(path string) (bool, error) {
	found := false
	err := inNetNS(path, func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return fmt.Errorf("listing interfaces: %w", err)
		}
		for _, link := range links {
			if joinable(link) {
				found = true
				break
			}
		}
		return nil
	})
	return found, err
}

// joinable says whether Attach joins link to the VM: loopback stays in the
// namespace, taps are the namespace's own business, and husk's macvtaps
// are its own.
func joinable(link netlink.Link) bool {
	return link.Attrs().Flags&net.FlagLoopback == 0 && link.Type() != "tuntap" && !isHuskDevice(link)
}

// aliasPrefix begins the alias of every device husk makes in a namespace;
// the sandbox's id follows, so that clean-up touches only its own.
const aliasPrefix = "husk:"

// isHuskDevice says whether link is a tap or macvtap husk made.
func isHuskDevice(link netlink.Link) bool {
	return strings.HasPrefix(link.Attrs().Alias, aliasPrefix) && (link.Type() == "tuntap" || link.Type() == "macvtap")
}

// Attach joins every interface of the namespace at path (other than
// loopback) to a new tap or macvtap device, as mode says, and reads the
// routes the guest must have. owner (the sandbox's id) names the devices,
// for Clear. A namespace with loopback only gives an attachment with no
// endpoints.
func Attach(path string, mode Mode, owner string) (_ *Attachment, retErr error) {
	a := &Attachment{NetNS: path, owner: owner}
	defer func() {
		if retErr != nil {
			a.Detach()
		}
	}()
	err := inNetNS(path, func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return fmt.Errorf("listing interfaces: %w", err)
		}
		names := map[int]string{}
		for _, link := range links {
			attrs := link.Attrs()
			names[attrs.Index] = attrs.Name
			if !joinable(link) {
				continue
			}
			ep, err := attachLink(link, len(a.Endpoints), mode, aliasPrefix+owner)
			if ep != nil {
				a.Endpoints = append(a.Endpoints, ep)
			}
			if err != nil {
				return err
			}
		}
		if len(a.Endpoints) == 0 {
			return nil
		}
		a.Routes, err = routes(names)
		return err
	})
	if err != nil {
		return nil, err
	}
	return a, nil
}

// attachLink joins link to a new device as mode says, aliased alias. The
// endpoint returned with an error holds what was made, for Detach.
func attachLink(link netlink.Link, n int, mode Mode, alias string) (*Endpoint, error) {
	attrs := link.Attrs()
	iface := Interface{Name: attrs.Name, MAC: attrs.HardwareAddr, MTU: attrs.MTU}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("addresses of %s: %w", attrs.Name, err)
	}
	for _, addr := range addrs {
		// Link-local IPv6 addresses the guest's kernel makes itself.
		if addr.IP.IsLinkLocalUnicast() {
			continue
		}
		iface.Addresses = append(iface.Addresses, addr.IPNet)
	}
	ep := &Endpoint{Interface: iface, Tap: tapName(n), mode: mode, linkIndex: attrs.Index}
	if mode == Macvtap {
		return ep, attachMacvtap(ep, link, alias)
	}
	ep.TapFile, err = openTap(ep.Tap)
	if err != nil {
		return nil, err
	}
	tap, err := netlink.LinkByName(ep.Tap)
	if err != nil {
		return ep, fmt.Errorf("tap %s: %w", ep.Tap, err)
	}
	ep.tapIndex = tap.Attrs().Index
	if err := netlink.LinkSetAlias(tap, alias); err != nil {
		return ep, fmt.Errorf("tap %s: alias: %w", ep.Tap, err)
	}
	if err := netlink.LinkSetMTU(tap, attrs.MTU); err != nil {
		return ep, fmt.Errorf("tap %s: mtu: %w", ep.Tap, err)
	}
	if err := netlink.LinkSetUp(tap); err != nil {
		return ep, fmt.Errorf("tap %s: up: %w", ep.Tap, err)
	}
	for _, dir := range [][2]int{{ep.linkIndex, ep.tapIndex}, {ep.tapIndex, ep.linkIndex}} {
		if err := redirect(dir[0], dir[1]); err != nil {
			return ep, fmt.Errorf("redirecting %s and %s: %w", attrs.Name, ep.Tap, err)
		}
	}
	return ep, nil
}

// openTap creates a tap device in the thread's namespace. It lives as long
// as a queue of it is open: here, then in QEMU. Frames carry a virtio-net
// header, which lets QEMU offer the guest checksum and segmentation
// offloads: TCP through the tap runs about twice as fast under TCG.
func openTap(name string) (*os.File, error) {
	f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("opening /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		f.Close()
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(int(f.Fd()), unix.TUNSETIFF, ifr); err != nil {
		f.Close()
		return nil, fmt.Errorf("creating tap %s: %w", name, err)
	}
	return f, nil
}

// ingressHandle is the handle of a link's ingress qdisc.
var ingressHandle = netlink.MakeHandle(0xffff, 0)

// redirect sends every frame arriving on from out of to.
func redirect(from, to int) error {
	ingress := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: from, Handle: ingressHandle, Parent: netlink.HANDLE_INGRESS}}
	if err := netlink.QdiscAdd(ingress); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("ingress qdisc: %w", err)
	}
	filter := &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: from, Parent: ingressHandle, Priority: 1, Protocol: unix.ETH_P_ALL},
		Actions:     []netlink.Action{netlink.NewMirredAction(to)},
	}
	if err := netlink.FilterAdd(filter); err != nil {
		return fmt.Errorf("redirect filter: %w", err)
	}
	return nil
}

// routes lists the namespace's routes through interfaces the guest gets,
// leaving out those the kernel makes for an address (the guest's makes
// them too).
func routes(names map[int]string) ([]Route, error) {
	var out []Route
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		list, err := netlink.RouteList(nil, family)
		if err != nil {
			return nil, fmt.Errorf("listing routes: %w", err)
		}
		for _, r := range list {
			name, ok := names[r.LinkIndex]
			if !ok || r.Protocol == unix.RTPROT_KERNEL || name == "lo" {
				continue
			}
			if r.Dst != nil && r.Dst.IP.IsLinkLocalUnicast() {
				continue
			}
			dst := r.Dst
			if dst != nil {
				if ones, _ := dst.Mask.Size(); ones == 0 {
					dst = nil // 0.0.0.0/0 or ::/0: the default route
				}
			}
			out = append(out, Route{Destination: dst, Gateway: r.Gw, Device: name, Scope: r.Scope})
		}
	}
	return out, nil
}

// Detach undoes Attach: the redirects go (tc mode), and the devices it
// made, by their index: a name that Attach could not take (another
// sandbox's device in the same namespace) is never touched. Safe on a
// partial attachment.
func (a *Attachment) Detach() {
	if a == nil || len(a.Endpoints) == 0 {
		return
	}
	_ = inNetNS(a.NetNS, func() error {
		for _, ep := range a.Endpoints {
			if ep.mode == TC {
				for _, index := range []int{ep.linkIndex, ep.tapIndex} {
					if index != 0 {
						_ = netlink.QdiscDel(&netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: index, Handle: ingressHandle, Parent: netlink.HANDLE_INGRESS}})
					}
				}
			}
			if ep.TapFile != nil {
				ep.TapFile.Close()
			}
			// A tap QEMU still holds would outlive the close, and a
			// macvtap lives until deleted.
			if ep.tapIndex == 0 {
				continue
			}
			if dev, err := netlink.LinkByIndex(ep.tapIndex); err == nil && dev.Attrs().Alias == aliasPrefix+a.owner {
				_ = netlink.LinkDel(dev)
			}
		}
		return nil
	})
}

// Clear removes from the namespace at path what an Attach for owner left
// there when the process that made it died before its Detach: owner's taps
// and macvtaps, and the ingress qdiscs of interfaces whose redirects lead
// to them or to devices that no longer exist (a tap goes with QEMU's last
// queue; its redirect stays behind). Another sandbox's devices and their
// redirects, and what is not husk's, are kept. The host's own namespace is
// never touched.
func Clear(path, owner string) error {
	return inNetNS(path, func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return fmt.Errorf("listing interfaces: %w", err)
		}
		ours := map[int]bool{}
		exists := map[int]bool{}
		for _, link := range links {
			attrs := link.Attrs()
			exists[attrs.Index] = true
			if isHuskDevice(link) && attrs.Alias == aliasPrefix+owner {
				ours[attrs.Index] = true
			}
		}
		var errs []error
		for _, link := range links {
			attrs := link.Attrs()
			if ours[attrs.Index] || !redirectsToGone(link, ours, exists) {
				continue
			}
			ingress := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: attrs.Index, Handle: ingressHandle, Parent: netlink.HANDLE_INGRESS}}
			if err := netlink.QdiscDel(ingress); err != nil {
				errs = append(errs, fmt.Errorf("removing the ingress qdisc of %s: %w", attrs.Name, err))
			}
		}
		for _, link := range links {
			if ours[link.Attrs().Index] {
				if err := netlink.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
					errs = append(errs, fmt.Errorf("removing %s: %w", link.Attrs().Name, err))
				}
			}
		}
		return errors.Join(errs...)
	})
}

// redirectsToGone says whether an ingress filter of link redirects to one
// of the devices in ours or to a device index that no longer exists.
func redirectsToGone(link netlink.Link, ours, exists map[int]bool) bool {
	filters, err := netlink.FilterList(link, ingressHandle)
	if err != nil {
		return false
	}
	for _, f := range filters {
		u32, ok := f.(*netlink.U32)
		if !ok {
			continue
		}
		for _, action := range u32.Actions {
			if m, ok := action.(*netlink.MirredAction); ok && (ours[m.Ifindex] || !exists[m.Ifindex]) {
				return true
			}
		}
	}
	return false
}
