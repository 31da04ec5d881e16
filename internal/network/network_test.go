package network

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
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

func TestAttachAndDetach(t *testing.T) {
	path := testNamespace(t)
	a, err := Attach(path)
	if err != nil {
		t.Fatal(err)
	}
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
	ns := strings.TrimPrefix(path, "/var/run/netns/")
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
	a, err := Attach("/var/run/netns/" + name)
	if err != nil || len(a.Endpoints) != 0 {
		t.Fatalf("loopback-only namespace: %+v, %v", a, err)
	}
	if _, err := Attach("/var/run/netns/husk-no-such-namespace"); err == nil {
		t.Error("a missing namespace was accepted")
	}
	if _, err := Attach("/proc/self/ns/net"); !errors.Is(err, ErrOwnNamespace) {
		t.Errorf("the host's own namespace: %v", err)
	}
}
