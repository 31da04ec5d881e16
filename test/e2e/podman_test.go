package e2e

import (
	"os/exec"
	"strings"
	"testing"
)

func podman(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	full := append([]string{"--runtime", huskBin, "--cgroup-manager=cgroupfs"}, args...)
	return runCommand(t, exec.Command("podman", full...), stdin)
}

func TestPodman(t *testing.T) {
	requireGuest(t)
	if _, err := exec.LookPath("podman"); err != nil {
		skipUnlessRequired(t, "needs podman (apt-get install podman)")
	}
	if r := podman(t, "", "image", "exists", "localhost/busybox:local"); r.status != 0 {
		skipUnlessRequired(t, "needs the localhost/busybox:local image: run scripts/start-services.sh (make test does)")
	}
	// This host's hard limits are below podman's defaults, with runc too.
	run := []string{"run", "--rm", "--network=none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"}
	if r := podman(t, "", append(run, "busybox:local", "echo", "hi")...); r.status != 0 || r.stdout != "hi\n" {
		t.Fatalf("echo: %d %q %q", r.status, r.stdout, r.stderr)
	}
	if r := podman(t, "", append(run, "busybox:local", "sh", "-c", "exit 5")...); r.status != 5 {
		t.Fatalf("exit code: %d %q", r.status, r.stderr)
	}
	if r := podman(t, "in\n", append(append(run, "-i"), "busybox:local", "cat")...); r.stdout != "in\n" {
		t.Fatalf("-i: %q %q", r.stdout, r.stderr)
	}
	detached := []string{"run", "-d", "--network=none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
		"busybox:local", "sh", "-c", "trap 'exit 0' TERM; echo up; while true; do sleep 0.1; done"}
	r := podman(t, "", detached...)
	if r.status != 0 {
		t.Fatalf("run -d: %q", r.stderr)
	}
	id := strings.TrimSpace(r.stdout)
	defer checkNoSandbox(t, id)
	defer podman(t, "", "rm", "-f", id)
	waitFor(t, "the container to print up", func() bool { return strings.Contains(podman(t, "", "logs", id).stdout, "up") })
	if r := podman(t, "", "exec", id, "echo", "exec-ok"); r.stdout != "exec-ok\n" {
		t.Fatalf("exec: %q %q", r.stdout, r.stderr)
	}
	if r := podman(t, "", "stop", "-t", "10", id); r.status != 0 {
		t.Fatalf("stop: %q", r.stderr)
	}
	if r := podman(t, "", "rm", id); r.status != 0 {
		t.Fatalf("rm: %q", r.stderr)
	}
}
