package network

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// testNamespace makes a network namespace holding one end of a veth pair
// (the other end in a second namespace), with an address, an MTU and a
// default route. Nothing is added to the root namespace.
func testNamespace(t *testing.T) (path string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip (apt-get install iproute2)")
	}
	a, b := fmt.Sprintf("husk-net-a-%d", os.Getpid()), fmt.Sprintf("husk-net-b-%d", os.Getpid())
	t.Cleanup(func() {
		exec.Command("ip", "netns", "del", a).Run()
		exec.Command("ip", "netns", "del", b).Run()
	})
	for _, args := range [][]string{
		{"netns", "add", a}, {"netns", "add", b},
		{"-n", a, "link", "add", "eth7", "type", "veth", "peer", "name", "peer7", "netns", b},
		{"-n", a, "addr", "add", "10.232.0.5/24", "dev", "eth7"},
		{"-n", a, "link", "set", "eth7", "mtu", "1450", "up"},
		{"-n", a, "route", "add", "default", "via", "10.232.0.1"},
		{"-n", a, "route", "add", "192.0.2.0/24", "via", "10.232.0.9"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	return "/var/run/netns/" + a
}

// checkAttachment checks what Attach read of testNamespace's namespace:
// its interface and the routes the guest must have.
func checkAttachment(t *testing.T, a *Attachment) *Endpoint {
	t.Helper()
	if len(a.Endpoints) != 1 {
		t.Fatalf("endpoints: %+v", a.Endpoints)
	}
	ep := a.Endpoints[0]
	if ep.Interface.Name != "eth7" || ep.Interface.MTU != 1450 || len(ep.Interface.MAC) != 6 {
		t.Errorf("interface %+v", ep.Interface)
	}
	if len(ep.Interface.Addresses) != 1 || ep.Interface.Addresses[0].String() != "10.232.0.5/24" {
		t.Errorf("addresses %v", ep.Interface.Addresses)
	}
	var routes []string
	for _, r := range a.Routes {
		dst := "default"
		if r.Destination != nil {
			dst = r.Destination.String()
		}
		routes = append(routes, fmt.Sprintf("%s via %s dev %s", dst, r.Gateway, r.Device))
	}
	got := strings.Join(routes, "; ")
	for _, want := range []string{"default via 10.232.0.1 dev eth7", "192.0.2.0/24 via 10.232.0.9 dev eth7"} {
		if !strings.Contains(got, want) {
			t.Errorf("routes %q lack %q", got, want)
		}
	}
	if strings.Contains(got, "10.232.0.0/24") {
		t.Errorf("the kernel's route for the address was taken: %q", got)
	}
	return ep
}

func TestAttachAndDetach(t *testing.T) {
	path := testNamespace(t)
	a, err := Attach(path, TC, "test-owner")
	if err != nil {
		t.Fatal(err)
	}
	ep := checkAttachment(t, a)
	// The tap carries virtio-net headers, so QEMU can offer the guest
	// checksum and segmentation offloads.
	ifr, err := unix.NewIfreq("")
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlIfreq(int(ep.TapFile.Fd()), unix.TUNGETIFF, ifr); err != nil {
		t.Fatal(err)
	}
	if ifr.Uint16()&unix.IFF_VNET_HDR == 0 {
		t.Errorf("tap flags %#x lack IFF_VNET_HDR", ifr.Uint16())
	}
	ns := strings.TrimPrefix(path, "/var/run/netns/")
	if link, _ := exec.Command("ip", "-n", ns, "-d", "link", "show", ep.Tap).Output(); !strings.Contains(string(link), "alias "+aliasPrefix+"test-owner") {
		t.Errorf("tap %s does not carry its sandbox's alias:\n%s", ep.Tap, link)
	}
	filters, _ := exec.Command("tc", "-n", ns, "filter", "show", "dev", "eth7", "ingress").Output()
	if !strings.Contains(string(filters), "Redirect to device "+ep.Tap) {
		t.Errorf("no redirect from eth7 to %s:\n%s", ep.Tap, filters)
	}
	filters, _ = exec.Command("tc", "-n", ns, "filter", "show", "dev", ep.Tap, "ingress").Output()
	if !strings.Contains(string(filters), "Redirect to device eth7") {
		t.Errorf("no redirect from %s to eth7:\n%s", ep.Tap, filters)
	}

	a.Detach()
	links, _ := exec.Command("ip", "-n", ns, "link").Output()
	qdiscs, _ := exec.Command("tc", "-n", ns, "qdisc", "show", "dev", "eth7").Output()
	if strings.Contains(string(links), ep.Tap) || strings.Contains(string(qdiscs), "ingress") {
		t.Errorf("left after Detach:\n%s\n%s", links, qdiscs)
	}
}

func TestAttachLoopbackOnly(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes network namespaces")
	}
	name := fmt.Sprintf("husk-net-lo-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Skipf("ip netns add: %v %s", err, out)
	}
	defer exec.Command("ip", "netns", "del", name).Run()
	for _, mode := range []Mode{TC, Macvtap} {
		a, err := Attach("/var/run/netns/"+name, mode, "test-owner")
		if err != nil || len(a.Endpoints) != 0 {
			t.Fatalf("loopback-only namespace, mode %d: %+v, %v", mode, a, err)
		}
		if _, err := Attach("/var/run/netns/husk-no-such-namespace", mode, "test-owner"); err == nil {
			t.Errorf("mode %d: a missing namespace was accepted", mode)
		}
		if _, err := Attach("/proc/self/ns/net", mode, "test-owner"); !errors.Is(err, ErrOwnNamespace) {
			t.Errorf("mode %d: the host's own namespace: %v", mode, err)
		}
	}
}

func TestAttachMacvtap(t *testing.T) {
	path := testNamespace(t)
	ns := strings.TrimPrefix(path, "/var/run/netns/")
	before, err := os.ReadDir("/dev")
	if err != nil {
		t.Fatal(err)
	}
	// The process's own namespaces (its main thread's, which /proc/self
	// names) stay where they were, whichever thread opened the queue.
	ownNS := func() string {
		net, _ := os.Readlink("/proc/self/ns/net")
		mnt, _ := os.Readlink("/proc/self/ns/mnt")
		return net + " " + mnt
	}
	own := ownNS()
	a, err := Attach(path, Macvtap, "test-owner")
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		f, err := openMacvtapQueue(mustNS(t, path), a.Endpoints[0].Tap)
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	if now := ownNS(); now != own {
		t.Errorf("the process's namespaces moved from %s to %s", own, now)
	}
	ep := checkAttachment(t, a)
	link, _ := exec.Command("ip", "-n", ns, "-d", "link", "show", ep.Tap).Output()
	if !strings.Contains(string(link), "macvtap mode passthru") || !strings.Contains(string(link), "@eth7") ||
		!strings.Contains(string(link), ep.Interface.MAC.String()) || !strings.Contains(string(link), "mtu 1450") {
		t.Errorf("macvtap %s is not a passthru on eth7 with its MAC and MTU:\n%s", ep.Tap, link)
	}
	// A queue length of 0 would give the queue a ring with no slots,
	// dropping every frame for the guest.
	if !strings.Contains(string(link), "qlen 500") {
		t.Errorf("macvtap %s does not have the kernel's queue length:\n%s", ep.Tap, link)
	}
	// The queue is a working character device: a frame written to it goes
	// out of eth7 and arrives at its peer.
	if ep.TapFile == nil {
		t.Fatal("no queue")
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(ep.TapFile.Fd()), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR {
		t.Errorf("the queue is not a character device: %v %o", err, st.Mode)
	}
	if !strings.Contains(string(link), "alias "+aliasPrefix+"test-owner") {
		t.Errorf("macvtap %s does not carry its sandbox's alias:\n%s", ep.Tap, link)
	}
	peerNS := strings.Replace(ns, "husk-net-a-", "husk-net-b-", 1)
	if out, err := exec.Command("ip", "-n", peerNS, "link", "set", "peer7", "up").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	capture := captureTestFrames(t, "/var/run/netns/"+peerNS, "peer7")
	sendTestFrame(t, ep)
	if !capture() {
		t.Error("a frame written to the queue did not reach eth7's peer")
	}
	tc, _ := exec.Command("tc", "-n", ns, "filter", "show", "dev", "eth7", "ingress").Output()
	if len(strings.TrimSpace(string(tc))) != 0 {
		t.Errorf("macvtap mode made tc rules:\n%s", tc)
	}

	a.Detach()
	links, _ := exec.Command("ip", "-n", ns, "link").Output()
	if strings.Contains(string(links), ep.Tap) {
		t.Errorf("left after Detach:\n%s", links)
	}
	after, _ := os.ReadDir("/dev")
	if len(after) != len(before) {
		t.Errorf("/dev had %d entries, now %d", len(before), len(after))
	}
}

func mustNS(t *testing.T, path string) netns.NsHandle {
	t.Helper()
	h, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// sendTestFrame writes one broadcast Ethernet frame, behind the virtio-net
// header a macvtap queue expects, to ep's queue.
func sendTestFrame(t *testing.T, ep *Endpoint) {
	t.Helper()
	frame := make([]byte, 10+60) // struct virtio_net_hdr, then the frame
	eth := frame[10:]
	copy(eth[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(eth[6:12], ep.Interface.MAC)
	eth[12], eth[13] = testEtherType>>8, testEtherType&0xff
	if _, err := ep.TapFile.Write(frame); err != nil {
		t.Fatalf("writing a frame to the queue: %v", err)
	}
}

// testEtherType is the IEEE's local experimental EtherType: nothing but
// sendTestFrame sends it.
const testEtherType = 0x88b5

// captureTestFrames opens a packet socket for testEtherType on the device
// in the namespace at path; the function returned says whether a frame
// from sendTestFrame arrived within two seconds.
func captureTestFrames(t *testing.T, path, device string) func() bool {
	t.Helper()
	proto := int(htons(testEtherType))
	var fd int
	err := inNetNS(path, func() error {
		link, err := netlink.LinkByName(device)
		if err != nil {
			return err
		}
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(testEtherType), Ifindex: link.Attrs().Index})
	})
	if err != nil {
		t.Fatalf("capturing on %s: %v", device, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return func() bool {
		tv := unix.Timeval{Sec: 2}
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 2048)
		n, _, err := unix.Recvfrom(fd, buf, 0)
		return err == nil && n >= 14 && buf[12] == 0x88 && buf[13] == 0xb5
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// TestClearAfterALostDetach: what Attach made, left behind by a process
// that died without Detach (its queue closed, as when QEMU dies), is
// removed by Clear; an ingress qdisc that is not husk's stays.
func TestClearAfterALostDetach(t *testing.T) {
	for _, mode := range []Mode{TC, Macvtap} {
		path := testNamespace(t)
		ns := strings.TrimPrefix(path, "/var/run/netns/")
		// Attach leaves loopback alone: an ingress qdisc there is another's.
		if out, err := exec.Command("tc", "-n", ns, "qdisc", "add", "dev", "lo", "ingress").CombinedOutput(); err != nil {
			t.Fatalf("tc: %v: %s", err, out)
		}
		a, err := Attach(path, mode, "test-owner")
		if err != nil {
			t.Fatal(err)
		}
		for _, ep := range a.Endpoints {
			ep.TapFile.Close()
		}
		leftLinks, _ := exec.Command("ip", "-n", ns, "link").Output()
		leftQdisc, _ := exec.Command("tc", "-n", ns, "qdisc", "show", "dev", "eth7").Output()
		if left := map[Mode]bool{TC: strings.Contains(string(leftQdisc), "ingress"), Macvtap: strings.Contains(string(leftLinks), tapPrefix)}; !left[mode] {
			t.Fatalf("mode %d: nothing was left to clear:\n%s\n%s", mode, leftLinks, leftQdisc)
		}
		if err := Clear(path, "test-owner"); err != nil {
			t.Fatalf("mode %d: %v", mode, err)
		}
		links, _ := exec.Command("ip", "-n", ns, "link").Output()
		eth7, _ := exec.Command("tc", "-n", ns, "qdisc", "show", "dev", "eth7").Output()
		if strings.Contains(string(links), tapPrefix) || strings.Contains(string(eth7), "ingress") {
			t.Errorf("mode %d: left after Clear:\n%s\n%s", mode, links, eth7)
		}
		if lo, _ := exec.Command("tc", "-n", ns, "qdisc", "show", "dev", "lo").Output(); !strings.Contains(string(lo), "ingress") {
			t.Errorf("mode %d: Clear removed loopback's ingress qdisc:\n%s", mode, lo)
		}
		if err := Clear("/proc/self/ns/net", "test-owner"); !errors.Is(err, ErrOwnNamespace) {
			t.Errorf("Clear of the host's namespace: %v", err)
		}
		exec.Command("ip", "netns", "del", ns).Run()
		exec.Command("ip", "netns", "del", strings.Replace(ns, "husk-net-a-", "husk-net-b-", 1)).Run()
	}
}

// TestAnotherSandboxsDevicesAreKept: a second Attach to a namespace that a
// sandbox already joined fails, and neither its failure nor a Clear for the
// second sandbox removes the first one's device or redirects.
func TestAnotherSandboxsDevicesAreKept(t *testing.T) {
	for _, mode := range []Mode{TC, Macvtap} {
		path := testNamespace(t)
		ns := strings.TrimPrefix(path, "/var/run/netns/")
		first, err := Attach(path, mode, "first")
		if err != nil {
			t.Fatal(err)
		}
		state := func() string {
			links, _ := exec.Command("ip", "-n", ns, "-d", "link", "show", "husktap0").Output()
			filters, _ := exec.Command("tc", "-n", ns, "filter", "show", "dev", "eth7", "ingress").Output()
			return string(links) + string(filters)
		}
		before := state()
		if !strings.Contains(before, "alias "+aliasPrefix+"first") {
			t.Fatalf("mode %d: the first sandbox's device:\n%s", mode, before)
		}
		if _, err := Attach(path, mode, "second"); err == nil {
			t.Errorf("mode %d: a second sandbox attached to a namespace already joined", mode)
		}
		if err := Clear(path, "second"); err != nil {
			t.Errorf("mode %d: Clear for the second sandbox: %v", mode, err)
		}
		if after := state(); after != before {
			t.Errorf("mode %d: the first sandbox's network changed:\n%s\nnow:\n%s", mode, before, after)
		}
		first.Detach()
		if left := state(); strings.Contains(left, "husktap0") || strings.Contains(left, "mirred") {
			t.Errorf("mode %d: left after the first sandbox's Detach:\n%s", mode, left)
		}
		exec.Command("ip", "netns", "del", ns).Run()
		exec.Command("ip", "netns", "del", strings.Replace(ns, "husk-net-a-", "husk-net-b-", 1)).Run()
	}
}
