package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// netFixture is two network namespaces of the test's own, A and B, joined
// by a veth pair on a private subnet; A's default route goes through B.
// Nothing of it touches the host's root namespace.
type netFixture struct {
	a, b       string // namespace names, under /var/run/netns
	vethA      string
	addrA      string // A's address, without the prefix length
	addrB      string
	mtu        string
	serverRoot string // what B's HTTP server serves
}

var netSeq int

func newNetFixture(t *testing.T) *netFixture {
	t.Helper()
	for _, tool := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			skipUnlessRequired(t, "needs %s (apt-get install iproute2)", tool)
		}
	}
	netSeq++
	n := fmt.Sprintf("%d-%d", os.Getpid()%100000, netSeq)
	f := &netFixture{
		a: "husk-e2e-a-" + n, b: "husk-e2e-b-" + n,
		vethA: fmt.Sprintf("hk%da", netSeq), addrA: "10.231.7.1", addrB: "10.231.7.2", mtu: "1400",
		serverRoot: t.TempDir(),
	}
	vethB := fmt.Sprintf("hk%db", netSeq)
	// The leak check for what husk makes in a namespace: the tests that
	// use an env make the fixture first, so this runs after the env has
	// deleted their containers.
	t.Cleanup(func() {
		if left := f.leftovers(); left != "" {
			t.Errorf("left in %s after the test:\n%s", f.a, left)
		}
		exec.Command("ip", "netns", "del", f.a).Run()
		exec.Command("ip", "netns", "del", f.b).Run()
	})
	for _, args := range [][]string{
		{"netns", "add", f.a},
		{"netns", "add", f.b},
		{"-n", f.a, "link", "add", f.vethA, "type", "veth", "peer", "name", vethB, "netns", f.b},
		{"-n", f.a, "addr", "add", f.addrA + "/24", "dev", f.vethA},
		{"-n", f.a, "link", "set", f.vethA, "mtu", f.mtu, "up"},
		{"-n", f.a, "link", "set", "lo", "up"},
		{"-n", f.a, "route", "add", "default", "via", f.addrB},
		{"-n", f.b, "addr", "add", f.addrB + "/24", "dev", vethB},
		{"-n", f.b, "link", "set", vethB, "mtu", f.mtu, "up"},
		{"-n", f.b, "link", "set", "lo", "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	return f
}

// joined says whether a sandbox has joined namespace A: its tap or
// macvtap is there.
func (f *netFixture) joined() bool {
	links, _ := exec.Command("ip", "-n", f.a, "link").Output()
	return strings.Contains(string(links), "husktap")
}

// leftovers describes what a sandbox left in namespace A: taps, macvtaps
// and the ingress qdisc of A's interface ("" for nothing).
func (f *netFixture) leftovers() string {
	links, _ := exec.Command("ip", "-n", f.a, "link").Output()
	qdiscs, _ := exec.Command("tc", "-n", f.a, "qdisc", "show", "dev", f.vethA).Output()
	if !strings.Contains(string(links), "husktap") && !strings.Contains(string(qdiscs), "ingress") {
		return ""
	}
	return string(links) + string(qdiscs)
}

// serveFromB runs busybox's HTTP server in namespace B until the test ends,
// serving a file called name that holds content.
func (f *netFixture) serveFromB(t *testing.T, port int, name, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(f.serverRoot, name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", f.b, "/bin/busybox", "httpd", "-f", "-p", fmt.Sprint(port), "-h", f.serverRoot)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
}

// fetchFromB gets a URL from namespace B, retrying while the server comes up.
func (f *netFixture) fetchFromB(t *testing.T, url string) string {
	t.Helper()
	var out []byte
	var err error
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
		// (busybox-static's wget crashes on -T: the context bounds it.)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		out, err = exec.CommandContext(ctx, "ip", "netns", "exec", f.b, "/bin/busybox", "wget", "-q", "-O", "-", url).Output()
		cancel()
		if err == nil {
			return string(out)
		}
	}
	t.Fatalf("fetching %s from %s: %v %s", url, f.b, err, out)
	return ""
}

// inNamespace makes a spec join the named network namespace.
func inNamespace(name string) func(*specs.Spec) {
	return func(s *specs.Spec) {
		for i, ns := range s.Linux.Namespaces {
			if ns.Type == specs.NetworkNamespace {
				s.Linux.Namespaces[i].Path = filepath.Join("/var/run/netns", name)
				return
			}
		}
		s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: filepath.Join("/var/run/netns", name)})
	}
}

// TestNetworkThroughTheVM: in each network mode that joins interfaces, a
// container joined to namespace A sees A's interface (name, MTU, address)
// and routes inside its VM, fetches a file from a server in namespace B
// across the veth, serves one that B fetches, and its teardown removes the
// tap (or macvtap) and any tc rules from A.
func TestNetworkThroughTheVM(t *testing.T) {
	for _, mode := range []string{"tc", "macvtap"} {
		t.Run(mode, func(t *testing.T) { testNetworkThroughTheVM(t, mode) })
	}
}

func testNetworkThroughTheVM(t *testing.T, mode string) {
	f := newNetFixture(t) // before the env: its leak check runs after the env's clean-up
	e := newEnv(t)
	e.writeConfig(fmt.Sprintf("[network]\nmode = %q\n", mode))
	f.serveFromB(t, 8080, "hello.txt", "hello across the veth\n")

	b := e.bundle(inNamespace(f.a), "sh", "-c", fmt.Sprintf(
		"cat /sys/class/net/%s/mtu; cat /sys/class/net/%s/address; ip -4 addr show %s; ip route; wget -q -O - http://%s:8080/hello.txt",
		f.vethA, f.vethA, f.vethA, f.addrB))
	r := e.run("", "run", "--bundle", b, e.id())
	if r.status != 0 {
		t.Fatalf("run: status %d, stdout %q, stderr %q", r.status, r.stdout, r.stderr)
	}
	// The guest's device takes the interface's MAC address, also when it was
	// restored from a template with a placeholder.
	mac, err := exec.Command("ip", "netns", "exec", f.a, "cat", "/sys/class/net/"+f.vethA+"/address").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{f.mtu + "\n", string(mac), "inet " + f.addrA + "/24", "default via " + f.addrB, "hello across the veth"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("container output lacks %q:\n%s", want, r.stdout)
		}
	}
	if strings.Contains(r.stdout, "husktap") {
		t.Errorf("the container sees the host side's tap:\n%s", r.stdout)
	}

	// A server in the container, reached from B.
	id := e.id()
	e.createWith(id, inNamespace(f.a), "sh", "-c", "mkdir -p /dev/shm/www && echo served-from-the-guest > /dev/shm/www/index.html && echo started && exec httpd -f -p 8081 -h /dev/shm/www")
	e.start(id)
	if got := f.fetchFromB(t, fmt.Sprintf("http://%s:8081/index.html", f.addrA)); got != "served-from-the-guest\n" {
		t.Errorf("fetched %q from the container", got)
	}
	// tc mode's guests are restored from a template with a network device;
	// a macvtap's queue offers other features, so those guests boot.
	if restored := strings.Contains(e.daemonLog(id), "restored=true"); restored != (mode == "tc") {
		t.Errorf("mode %s: guest restored from a template: %v", mode, restored)
	}
	links, _ := exec.Command("ip", "-n", f.a, "-d", "link", "show", "husktap0").Output()
	kind := map[string]string{"tc": "tun type tap", "macvtap": "macvtap mode passthru"}[mode]
	if !strings.Contains(string(links), kind) {
		t.Errorf("no %s in %s while the container runs:\n%s", kind, f.a, links)
	}
	filters, _ := exec.Command("tc", "-n", f.a, "filter", "show", "dev", f.vethA, "ingress").Output()
	if redirected := strings.Contains(string(filters), "Redirect to device husktap0"); redirected != (mode == "tc") {
		t.Errorf("mode %s: tc filters on %s:\n%s", mode, f.vethA, filters)
	}
	e.mustRun("delete", "--force", id)

	// Teardown leaves A as it was.
	waitFor(t, "the tap and tc rules to go", func() bool { return f.leftovers() == "" })
}

// TestNetworkModeNone: with network.mode = "none" the container has
// loopback only, whatever namespace its spec names.
func TestNetworkModeNone(t *testing.T) {
	f := newNetFixture(t) // before the env: its leak check runs after the env's clean-up
	e := newEnv(t)
	e.writeConfig("[network]\nmode = \"none\"\n")
	b := e.bundle(inNamespace(f.a), "ls", "/sys/class/net")
	r := e.run("", "run", "--bundle", b, e.id())
	if r.status != 0 || strings.TrimSpace(r.stdout) != "lo" {
		t.Fatalf("mode none: status %d, interfaces %q, stderr %q", r.status, r.stdout, r.stderr)
	}
	links, _ := exec.Command("ip", "-n", f.a, "link").Output()
	if strings.Contains(string(links), "husktap") {
		t.Errorf("a tap was made in mode none:\n%s", links)
	}
}
