package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// dockerEnv drives the private dockerd that scripts/start-services.sh starts
// with husk registered as the runtime "husk".
type dockerEnv struct {
	t    *testing.T
	host string
}

var dockerWarmUp sync.Once

func newDockerEnv(t *testing.T) *dockerEnv {
	t.Helper()
	requireGuest(t)
	host := os.Getenv("HUSK_TEST_DOCKER_HOST")
	if host == "" {
		skipUnlessRequired(t, "HUSK_TEST_DOCKER_HOST is not set: run scripts/start-services.sh (make test does)")
	}
	d := &dockerEnv{t: t, host: host}
	if r := d.run("", "info", "--format", "{{json .Runtimes}}"); r.status != 0 || !strings.Contains(r.stdout, "husk") {
		skipUnlessRequired(t, "dockerd at %s has no husk runtime: %s %s", host, r.stdout, r.stderr)
	}
	// Run last, after the test's own clean-up: dockerd and containerd hold
	// no more descriptors than before the test. dockerd opens some for good
	// on its first husk container: one warm-up run comes before the first
	// baseline.
	dockerWarmUp.Do(func() { d.run("", "run", "--rm", "--runtime", "husk", "busybox:local", "true") })
	baseline := fdBaselines(t, "dockerd", "containerd")
	t.Cleanup(func() { baseline.check(t) })
	// Whatever the test ran, no sandbox of this dockerd may outlive it: the
	// runtime root that containerd's shim gives husk names every process
	// (daemon and stand-in command lines, QEMU's console path).
	t.Cleanup(func() { checkNoSandbox(t, "/runtime-runc/") })
	return d
}

func (d *dockerEnv) command(args ...string) *exec.Cmd {
	return exec.Command("docker", append([]string{"-H", d.host}, args...)...)
}

func (d *dockerEnv) run(stdin string, args ...string) result {
	d.t.Helper()
	return runCommand(d.t, d.command(args...), stdin)
}

func (d *dockerEnv) mustRun(args ...string) string {
	d.t.Helper()
	r := d.run("", args...)
	if r.status != 0 {
		d.t.Fatalf("docker %v: status %d, stderr %q", args, r.status, r.stderr)
	}
	return strings.TrimSpace(r.stdout)
}

// checkNoSandbox fails if anything of the container's sandbox is left: a
// VM, daemon or stand-in, a mount naming it, or its state directory under
// the runtimes' roots in Docker's exec root.
func checkNoSandbox(t *testing.T, id string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, _ := exec.Command("ps", "-eo", "args").Output()
		var left []string
		for _, line := range strings.Split(string(out), "\n") {
			if strings.Contains(line, id) && (strings.Contains(line, "qemu-system") || strings.Contains(line, "sandbox-daemon") || strings.Contains(line, "stand-in")) {
				left = append(left, line)
			}
		}
		mounts, _ := os.ReadFile("/proc/self/mounts")
		for _, line := range strings.Split(string(mounts), "\n") {
			if strings.Contains(line, id) {
				left = append(left, "mount: "+line)
			}
		}
		if execRoot := os.Getenv("HUSK_TEST_DOCKER_EXEC_ROOT"); execRoot != "" {
			dirs, _ := filepath.Glob(filepath.Join(execRoot, "runtime-*", "*", id))
			for _, dir := range dirs {
				left = append(left, "state directory: "+dir)
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("left behind for %s: %q", id, left)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestDockerRun(t *testing.T) {
	d := newDockerEnv(t)
	run := []string{"run", "--runtime", "husk", "--rm"}
	if got := d.mustRun(append(run, "busybox:local", "echo", "hi")...); got != "hi" {
		t.Fatalf("echo: %q", got)
	}
	if r := d.run("", append(run, "busybox:local", "sh", "-c", "exit 3")...); r.status != 3 {
		t.Fatalf("exit code: %d (%s)", r.status, r.stderr)
	}
	if r := d.run("piped in\n", append(run, "-i", "busybox:local", "cat")...); r.stdout != "piped in\n" {
		t.Fatalf("-i: %q %q", r.stdout, r.stderr)
	}
	got := d.mustRun(append(run, "-e", "FOO=bar", "-w", "/tmp", "-u", "1000:1000", "busybox:local", "sh", "-c", "echo $FOO $(pwd) $(id -u):$(id -g)")...)
	if got != "bar /tmp 1000:1000" {
		t.Fatalf("-e -w -u: %q", got)
	}
	if r := d.run("", append(run, "--read-only", "busybox:local", "touch", "/x")...); r.status == 0 || !strings.Contains(r.stderr, "Read-only file system") {
		t.Fatalf("--read-only: status %d, stderr %q", r.status, r.stderr)
	}
	if got := d.mustRun(append(run, "busybox:local", "uname", "-r")...); got == hostKernel() {
		t.Fatalf("container sees the host kernel %q", got)
	}
}

func hostKernel() string {
	out, _ := exec.Command("uname", "-r").Output()
	return strings.TrimSpace(string(out))
}

func TestDockerRunTerminal(t *testing.T) {
	d := newDockerEnv(t)
	if _, err := exec.LookPath("script"); err != nil {
		skipUnlessRequired(t, "needs script(1) from bsdutils for a pty")
	}
	cmd := exec.Command("script", "-qec", "docker -H "+d.host+" run --runtime husk --rm -t busybox:local sh -c 'tty; stty size'", "/dev/null")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("docker run -t: %v %q", err, out)
	}
	if !strings.Contains(string(out), "/dev/pts/") {
		t.Fatalf("no terminal in the container: %q", out)
	}
}

func TestDockerDetachedLifecycle(t *testing.T) {
	d := newDockerEnv(t)
	id := d.mustRun("run", "--runtime", "husk", "-d", "busybox:local", "sh", "-c",
		"trap 'echo got-term; exit 0' TERM; echo up; while true; do sleep 0.1; done")
	defer checkNoSandbox(t, id)
	defer d.run("", "rm", "-f", id)
	waitFor(t, "the container to print up", func() bool { return strings.Contains(d.run("", "logs", id).stdout, "up") })

	if got := d.mustRun("exec", id, "echo", "exec-ok"); got != "exec-ok" {
		t.Fatalf("exec: %q", got)
	}
	if r := d.run("exec in\n", "exec", "-i", id, "cat"); r.stdout != "exec in\n" {
		t.Fatalf("exec -i: %q %q", r.stdout, r.stderr)
	}
	if r := d.run("", "exec", id, "sh", "-c", "exit 6"); r.status != 6 {
		t.Fatalf("exec exit code: %d", r.status)
	}
	// docker top shows the host's rows of the PIDs the runtime gives: the
	// container's stand-in, and nothing unrelated.
	if out := d.mustRun("top", id); len(strings.Split(out, "\n")) != 2 || !strings.Contains(out, "stand-in "+id) {
		t.Fatalf("top: %q, want the header and the container's stand-in", out)
	}
	d.mustRun("pause", id)
	if st := d.mustRun("inspect", "-f", "{{.State.Status}}", id); st != "paused" {
		t.Fatalf("after pause: %s", st)
	}
	d.mustRun("unpause", id)
	if st := d.mustRun("inspect", "-f", "{{.State.Status}}", id); st != "running" {
		t.Fatalf("after unpause: %s", st)
	}
	d.mustRun("stats", "--no-stream", id)
	d.mustRun("kill", "-s", "USR1", id) // no handler: the shell, PID 1, ignores it
	if st := d.mustRun("inspect", "-f", "{{.State.Status}}", id); st != "running" {
		t.Fatalf("after USR1: %s", st)
	}
	d.mustRun("stop", "-t", "10", id)
	if code := d.mustRun("wait", id); code != "0" {
		t.Fatalf("wait after stop: %q", code)
	}
	if !strings.Contains(d.run("", "logs", id).stdout, "got-term") {
		t.Fatal("SIGTERM did not reach the container's process")
	}
	d.mustRun("rm", id)
}

func TestDockerStopKillsAfterGracePeriod(t *testing.T) {
	d := newDockerEnv(t)
	// No TERM handler: as PID 1 the shell ignores TERM, so only the SIGKILL
	// after the grace period ends it.
	id := d.mustRun("run", "--runtime", "husk", "-d", "busybox:local", "sh", "-c", "echo up; while true; do sleep 0.1; done")
	defer checkNoSandbox(t, id)
	defer d.run("", "rm", "-f", id)
	waitFor(t, "the container to print up", func() bool { return strings.Contains(d.run("", "logs", id).stdout, "up") })
	d.mustRun("stop", "-t", "1", id)
	if code := d.mustRun("wait", id); code != "137" {
		t.Fatalf("exit code after SIGKILL: %q, want 137", code)
	}
}

func TestDockerKillAndRemove(t *testing.T) {
	d := newDockerEnv(t)
	id := d.mustRun("run", "--runtime", "husk", "-d", "busybox:local", "sleep", "600")
	defer checkNoSandbox(t, id)
	d.mustRun("kill", "-s", "KILL", id)
	if code := d.mustRun("wait", id); code != "137" {
		t.Fatalf("exit code after kill -s KILL: %q", code)
	}
	d.mustRun("rm", id)

	id2 := d.mustRun("run", "--runtime", "husk", "-d", "busybox:local", "sleep", "600")
	defer checkNoSandbox(t, id2)
	d.mustRun("rm", "-f", id2)
}

func TestDockerExecTerminal(t *testing.T) {
	d := newDockerEnv(t)
	if _, err := exec.LookPath("script"); err != nil {
		skipUnlessRequired(t, "needs script(1) from bsdutils for a pty")
	}
	id := d.mustRun("run", "--runtime", "husk", "-d", "busybox:local", "sleep", "600")
	defer d.run("", "rm", "-f", id)
	out, err := exec.Command("script", "-qec", "docker -H "+d.host+" exec -t "+id+" sh -c 'tty; echo exec-tty-ok'", "/dev/null").Output()
	if err != nil {
		t.Fatalf("docker exec -t: %v %q", err, out)
	}
	if !strings.Contains(string(out), "/dev/pts/") || !strings.Contains(string(out), "exec-tty-ok") {
		t.Fatalf("no terminal in the exec'd process: %q", out)
	}
}

// TestDockerVolumes: bind mounts reach the guest through the sandbox's share
// in both directions, read-only where asked; tmpfs and /dev/shm sizes hold;
// a symlink in a volume resolves inside the container, never on the host.
func TestDockerVolumes(t *testing.T) {
	d := newDockerEnv(t)
	dir := t.TempDir()
	if err := os.WriteFile(dir+"/in.txt", []byte("from-host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/shadow", dir+"/shadow-link"); err != nil {
		t.Fatal(err)
	}
	// Control: followed on the host, the link does reach a file starting "root".
	if host, err := os.ReadFile(dir + "/shadow-link"); err != nil || !strings.HasPrefix(string(host), "root") {
		t.Fatalf("control: the host's /etc/shadow through the link: %v", err)
	}
	file := t.TempDir() + "/config"
	if err := os.WriteFile(file, []byte("cfg\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	script := `cat /data/in.txt; echo from-container > /data/out.txt
cat /etc/x; (echo changed > /etc/x) 2>/dev/null || echo ro-held
cat /data/shadow-link 2>/dev/null | head -c 5 | grep -q root && echo HOST-SHADOW
df -k /scratch /dev/shm | awk 'NR > 1 {print $2}'`
	out := d.mustRun("run", "--rm", "--runtime", "husk", "-v", dir+":/data", "-v", file+":/etc/x:ro",
		"--tmpfs", "/scratch:size=1m", "--shm-size", "8m", "busybox:local", "sh", "-c", script)
	want := "from-host\ncfg\nro-held\n1024\n8192"
	if out != want {
		t.Fatalf("in the container:\n%s\nwant:\n%s", out, want)
	}
	if data, err := os.ReadFile(dir + "/out.txt"); err != nil || string(data) != "from-container\n" {
		t.Fatalf("the container's write did not reach the host: %q %v", data, err)
	}
	if data, _ := os.ReadFile(file); string(data) != "cfg\n" {
		t.Fatalf("read-only file changed: %q", data)
	}
}

// TestDockerBridgeNetwork: a container on a Docker bridge network gets
// its network through Docker's own prestart hook (libnetwork-setkey), which
// husk runs on the host before the VM boots: it has the address Docker gave
// it and fetches a file from a runc container on the same bridge. The
// bridge carries no IPv4 address (inhibit_ipv4), so every address of the
// test lives in the containers' namespaces.
func TestDockerBridgeNetwork(t *testing.T) {
	d := newDockerEnv(t)
	const network, subnet, serverIP = "husk-e2e-bridge", "10.231.9.0/24", "10.231.9.10"
	d.run("", "rm", "-f", "husk-e2e-srv")
	d.run("", "network", "rm", network)
	d.mustRun("network", "create", "-d", "bridge", "--subnet", subnet,
		"-o", "com.docker.network.bridge.name=hke2ebr0", "-o", "com.docker.network.bridge.inhibit_ipv4=true", network)
	t.Cleanup(func() {
		d.run("", "rm", "-f", "husk-e2e-srv")
		d.run("", "network", "rm", network)
	})
	d.mustRun("run", "-d", "--runtime", "runc", "--network", network, "--ip", serverIP, "--name", "husk-e2e-srv",
		"busybox:local", "httpd", "-f", "-p", "8080", "-h", "/etc")
	// Docker's /etc/hostname, /etc/hosts and /etc/resolv.conf come as bind
	// mounts of files it writes: the container must see Docker's.
	id := d.mustRun("run", "-d", "--runtime", "husk", "--network", network, "--ip", "10.231.9.20",
		"--hostname", "husk-bridged", "--add-host", "db.husk.test:10.231.9.99", "busybox:local", "sleep", "600")
	t.Cleanup(func() { d.run("", "rm", "-f", id) })
	if out := d.mustRun("exec", id, "sh", "-c", "ip -4 -o addr show eth0 | grep -o 'inet [0-9./]*'; hostname"); out != "inet 10.231.9.20/24\nhusk-bridged" {
		t.Errorf("address and hostname in the container: %q", out)
	}
	for _, f := range []struct{ path, inspect string }{
		{"/etc/hostname", "{{.HostnamePath}}"}, {"/etc/hosts", "{{.HostsPath}}"}, {"/etc/resolv.conf", "{{.ResolvConfPath}}"},
	} {
		host, err := os.ReadFile(d.mustRun("inspect", "-f", f.inspect, id))
		if err != nil {
			t.Fatal(err)
		}
		if inside := d.mustRun("exec", id, "cat", f.path); inside != strings.TrimSpace(string(host)) {
			t.Errorf("%s in the container:\n%s\nDocker's:\n%s", f.path, inside, host)
		}
	}
	if hosts := d.mustRun("exec", id, "cat", "/etc/hosts"); !strings.Contains(hosts, "10.231.9.99\tdb.husk.test") {
		t.Errorf("--add-host missing from /etc/hosts:\n%s", hosts)
	}
	var fetched result
	for i := 0; i < 5; i++ {
		if fetched = d.run("", "exec", id, "wget", "-q", "-O", "-", "http://"+serverIP+":8080/hostname"); fetched.status == 0 {
			break
		}
		time.Sleep(time.Second)
	}
	if want := d.mustRun("inspect", "-f", "{{.Config.Hostname}}", "husk-e2e-srv"); fetched.status != 0 || strings.TrimSpace(fetched.stdout) != want {
		t.Fatalf("fetch from the runc container on the bridge: status %d, stdout %q (want %q), stderr %q", fetched.status, fetched.stdout, want, fetched.stderr)
	}
}

// TestDockerNetworkContainerMode: `--network container:OWNER` joins the
// owner's sandbox: the second container runs in the owner's VM (no QEMU of
// its own), reaches the owner's server on 127.0.0.1, and leaves the owner
// running when it is removed.
func TestDockerNetworkContainerMode(t *testing.T) {
	d := newDockerEnv(t)
	const owner, guest = "husk-e2e-owner", "husk-e2e-joiner"
	d.run("", "rm", "-f", guest, owner)
	t.Cleanup(func() { d.run("", "rm", "-f", guest, owner) })
	ownerID := d.mustRun("run", "-d", "--runtime", "husk", "--network", "none", "--name", owner,
		"busybox:local", "httpd", "-f", "-p", "8080", "-h", "/etc")
	guestID := d.mustRun("run", "-d", "--runtime", "husk", "--network", "container:"+owner, "--name", guest,
		"busybox:local", "sleep", "600")
	qemus := func(id string) int {
		out, _ := exec.Command("pgrep", "-c", "-f", "qemu-system.*sandbox-"+id).Output()
		n := 0
		fmt.Sscan(string(out), &n)
		return n
	}
	if n, m := qemus(ownerID), qemus(guestID); n != 1 || m != 0 {
		t.Errorf("QEMU processes: %d for the owner, %d for the joined container; want 1 and 0", n, m)
	}
	hostname := d.mustRun("inspect", "-f", "{{.Config.Hostname}}", owner)
	var out string
	for i := 0; i < 10; i++ { // httpd may still be starting
		if r := d.run("", "exec", guest, "wget", "-q", "-O", "-", "http://127.0.0.1:8080/hostname"); r.status == 0 {
			out = strings.TrimSpace(r.stdout)
			break
		}
		time.Sleep(300 * time.Millisecond)
	}
	if out != hostname {
		t.Errorf("the joined container fetched %q from 127.0.0.1, want the owner's hostname %q", out, hostname)
	}
	d.mustRun("rm", "-f", guest)
	if r := d.run("", "exec", owner, "true"); r.status != 0 {
		t.Errorf("the owner after its joined container was removed: status %d, stderr %q", r.status, r.stderr)
	}
}
