package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// criEnv drives containerd's CRI plugin with crictl, the way the kubelet
// would, with husk as the runtime handler "husk".
type criEnv struct {
	t      *testing.T
	config string
	// containers are those startContainer made, for the leak check.
	containers []string
}

func newCRIEnv(t *testing.T) *criEnv {
	t.Helper()
	requireGuest(t)
	config := os.Getenv("HUSK_TEST_CRICTL_CONFIG")
	if config == "" {
		skipUnlessRequired(t, "HUSK_TEST_CRICTL_CONFIG is not set: run scripts/start-services.sh (make test does)")
	}
	if _, err := exec.LookPath("crictl"); err != nil {
		skipUnlessRequired(t, "needs crictl (scripts/install-deps.sh installs it)")
	}
	c := &criEnv{t: t, config: config}
	if r := c.run("", "info"); r.status != 0 || !strings.Contains(r.stdout, `"husk"`) {
		skipUnlessRequired(t, "the CRI has no husk runtime handler: %s %s", r.stdout, r.stderr)
	}
	// Run last, after the pods' clean-up: containerd holds no more
	// descriptors than before the test.
	baseline := fdBaselines(t, "containerd")
	t.Cleanup(func() { baseline.check(t) })
	return c
}

func (c *criEnv) run(stdin string, args ...string) result {
	c.t.Helper()
	return runCommand(c.t, exec.Command("crictl", append([]string{"-c", c.config}, args...)...), stdin)
}

func (c *criEnv) mustRun(args ...string) string {
	c.t.Helper()
	r := c.run("", args...)
	if r.status != 0 {
		c.t.Fatalf("crictl %v: status %d, stdout %q, stderr %q", args, r.status, r.stdout, r.stderr)
	}
	return strings.TrimSpace(r.stdout)
}

// writeJSON writes v to a file in dir and returns its path.
func writeJSON(t *testing.T, dir, name string, v any) string {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// podProcesses lists the QEMU and shim processes that serve a pod.
func podProcesses(t *testing.T, podID string) (qemus, shims []string) {
	t.Helper()
	out, err := exec.Command("ps", "-eo", "pid,args").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		switch {
		case strings.Contains(line, "qemu-system") && strings.Contains(line, "/run/husk/containerd/"):
			qemus = append(qemus, strings.TrimSpace(line))
		case strings.Contains(line, "containerd-shim-husk-v2") && !strings.Contains(line, "unshare") && strings.Contains(line, "k8s.io"):
			shims = append(shims, strings.TrimSpace(line))
		}
	}
	return qemus, shims
}

// newPod runs a pod sandbox with the husk handler and checks, when the test
// ends, that nothing of it is left. It returns the pod's id, its config
// file and a directory for the test's files.
func (c *criEnv) newPod() (podID, podConfig, dir string) {
	t := c.t
	t.Helper()
	dir = t.TempDir()
	name := fmt.Sprintf("husk-e2e-%s-%d", strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")), os.Getpid())
	podConfig = writeJSON(t, dir, "pod.json", map[string]any{
		"metadata":      map[string]any{"name": name, "namespace": "husk-e2e", "uid": name + "-uid"},
		"hostname":      "husk-pod",
		"log_directory": dir,
		"linux":         map[string]any{},
	})
	podID = c.mustRun("runp", "--runtime", "husk", podConfig)
	stateDir := filepath.Join("/run/husk/containerd/k8s.io", podID)
	t.Cleanup(func() {
		c.run("", "stopp", podID)
		c.run("", "rmp", "-f", podID)
		deadline := time.Now().Add(15 * time.Second)
		for {
			qemus, shims := podProcesses(t, podID)
			_, statErr := os.Stat(stateDir)
			if len(qemus)+len(shims) == 0 && os.IsNotExist(statErr) {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("left behind by the pod: qemu %q, shims %q, state directory present: %v", qemus, shims, statErr == nil)
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		mounts, _ := os.ReadFile("/proc/self/mounts")
		for _, id := range append([]string{podID}, c.containers...) {
			if strings.Contains(string(mounts), id) {
				t.Errorf("a mount of %s is left:\n%s", id, mounts)
			}
		}
		if pods := c.mustRun("pods", "-q", "--id", podID); pods != "" {
			t.Errorf("the CRI still lists the pod: %q", pods)
		}
		if ctrs := c.mustRun("ps", "-a", "-q", "--pod", podID); ctrs != "" {
			t.Errorf("the CRI still lists the pod's containers: %q", ctrs)
		}
	})
	return podID, podConfig, dir
}

// startContainer creates and starts a busybox container in a pod.
func (c *criEnv) startContainer(podID, podConfig, dir, name string, command ...string) string {
	c.t.Helper()
	spec := writeJSON(c.t, dir, name+".json", map[string]any{
		"metadata": map[string]any{"name": name},
		"image":    map[string]any{"image": ctrImage},
		"command":  command,
		"log_path": name + ".log",
		"linux":    map[string]any{},
	})
	id := c.mustRun("create", podID, spec, podConfig)
	c.containers = append(c.containers, id)
	c.mustRun("start", id)
	return id
}

// containerState is the CRI's state of a container.
func (c *criEnv) containerState(id string) string {
	c.t.Helper()
	return c.mustRun("inspect", "-o", "go-template", "--template", "{{.status.state}}", id)
}

// TestCRIPodOfTwoContainers runs a pod as the kubelet would: its sandbox,
// then two containers, all in one VM that shares the pod's namespaces.
func TestCRIPodOfTwoContainers(t *testing.T) {
	c := newCRIEnv(t)
	podID, pod, dir := c.newPod()
	stateDir := filepath.Join("/run/husk/containerd/k8s.io", podID)
	var ids []string
	for _, n := range []string{"first", "second"} {
		ids = append(ids, c.startContainer(podID, pod, dir, n, "sh", "-c", "echo "+n+" > /tmp/who; exec sleep 600"))
	}

	// One VM, one shim for the whole pod.
	qemus, shims := podProcesses(t, podID)
	if len(qemus) != 1 || !strings.Contains(qemus[0], stateDir+"/") {
		t.Errorf("want one QEMU for the pod %s, got %q", podID, qemus)
	}
	if len(shims) != 1 {
		t.Errorf("want one shim for the pod, got %q", shims)
	}

	// Each container has its own rootfs, in the pod's namespaces.
	ns := map[string]string{}
	for i, id := range ids {
		want := []string{"first", "second"}[i]
		if got := c.mustRun("exec", id, "cat", "/tmp/who"); got != want {
			t.Errorf("container %d reads %q from its own /tmp, want %q", i, got, want)
		}
		if got := c.mustRun("exec", id, "hostname"); got != "husk-pod" {
			t.Errorf("container %d hostname = %q", i, got)
		}
		if got := c.mustRun("exec", id, "uname", "-r"); got == hostKernel() {
			t.Errorf("container %d sees the host kernel", i)
		}
		links := c.mustRun("exec", id, "sh", "-c", "for n in net ipc uts; do readlink /proc/self/ns/$n; done")
		if prev, ok := ns["links"]; ok && prev != links {
			t.Errorf("the containers do not share the pod's namespaces: %q vs %q", prev, links)
		}
		ns["links"] = links
	}

	// Stats: the guest's cgroup figures for each container.
	for _, id := range ids {
		out := c.mustRun("stats", "-o", "json", "--id", id)
		var stats struct {
			Stats []struct {
				Memory struct {
					WorkingSetBytes struct{ Value string } `json:"workingSetBytes"`
				} `json:"memory"`
				CPU struct {
					UsageCoreNanoSeconds struct{ Value string } `json:"usageCoreNanoSeconds"`
				} `json:"cpu"`
			} `json:"stats"`
		}
		if err := json.Unmarshal([]byte(out), &stats); err != nil || len(stats.Stats) != 1 {
			t.Fatalf("crictl stats: %v %q", err, out)
		}
		s := stats.Stats[0]
		if v := s.Memory.WorkingSetBytes.Value; v == "" || v == "0" {
			t.Errorf("container %s: memory working set %q in %s", id, v, out)
		}
		if v := s.CPU.UsageCoreNanoSeconds.Value; v == "" || v == "0" {
			t.Errorf("container %s: cpu usage %q in %s", id, v, out)
		}
	}

	// The kubelet's resource updates reach the container's cgroup in the
	// guest.
	c.mustRun("update", "--memory", "67108864", ids[0])
	// Without a cgroup namespace (the CRI's default, as under runc) the
	// container sees the whole hierarchy and finds its own cgroup by path.
	if got := c.mustRun("exec", ids[0], "sh", "-c", "cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/memory.max"); got != "67108864" {
		t.Errorf("memory.max after crictl update: %q, want 67108864", got)
	}

	// Stopping the pod ends its containers and its VM; removing it leaves nothing.
	c.mustRun("stopp", podID)
	for _, id := range ids {
		if out := c.containerState(id); out != "CONTAINER_EXITED" {
			t.Errorf("container %s after stopp: %q", id, out)
		}
	}
	c.mustRun("rmp", podID)
}

// TestCRIPodVMKilled: when the pod's QEMU dies, its containers exit with a
// status and the pod can still be stopped and removed.
func TestCRIPodVMKilled(t *testing.T) {
	c := newCRIEnv(t)
	podID, pod, dir := c.newPod()
	id := c.startContainer(podID, pod, dir, "victim", "sleep", "600")
	qemus, _ := podProcesses(t, podID)
	if len(qemus) != 1 {
		t.Fatalf("want one QEMU for the pod, got %q", qemus)
	}
	var pid int
	fmt.Sscan(qemus[0], &pid)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for c.containerState(id) != "CONTAINER_EXITED" {
		if time.Now().After(deadline) {
			t.Fatalf("container %s: %s after its VM was killed", id, c.containerState(id))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if code := c.mustRun("inspect", "-o", "go-template", "--template", "{{.status.exitCode}}", id); code != "137" {
		t.Errorf("exit code %q, want 137", code)
	}
	c.mustRun("stopp", podID)
	c.mustRun("rmp", podID)
}

// TestCRIStopContainerThatForked: a container whose process forked stops at
// once and its pod goes, as under runc: its main process's exit ends the
// processes it left (with the pod's PID namespace shared, the kernel does
// not), and their hold on its output does not hold the exit back.
func TestCRIStopContainerThatForked(t *testing.T) {
	for _, mode := range []struct {
		name string
		pid  int // the CRI's NamespaceMode: 0 the pod's, 1 the container's own
	}{{"pod PID namespace", 0}, {"own PID namespace", 1}} {
		t.Run(mode.name, func(t *testing.T) {
			c := newCRIEnv(t)
			dir := t.TempDir()
			name := fmt.Sprintf("husk-e2e-forked-%d-%d", mode.pid, os.Getpid())
			linux := map[string]any{"security_context": map[string]any{"namespace_options": map[string]any{"pid": mode.pid}}}
			pod := writeJSON(t, dir, "pod.json", map[string]any{
				"metadata":      map[string]any{"name": name, "namespace": "husk-e2e", "uid": name + "-uid"},
				"log_directory": dir,
				"linux":         linux,
			})
			podID := c.mustRun("runp", "--runtime", "husk", pod)
			defer func() {
				c.run("", "stopp", podID)
				c.run("", "rmp", "-f", podID)
			}()
			spec := writeJSON(t, dir, "forker.json", map[string]any{
				"metadata": map[string]any{"name": "forker"},
				"image":    map[string]any{"image": ctrImage},
				"command":  []string{"sh", "-c", "sleep 1000 & echo forked; exec sleep 2000"},
				"log_path": "forker.log",
				"linux":    linux,
			})
			id := c.mustRun("create", podID, spec, pod)
			c.mustRun("start", id)
			waitFor(t, "the container to fork", func() bool {
				data, _ := os.ReadFile(filepath.Join(dir, "forker.log"))
				return strings.Contains(string(data), "forked")
			})
			start := time.Now()
			if r := c.run("", "stop", "-t", "0", id); r.status != 0 {
				t.Fatalf("crictl stop -t 0: status %d, stderr %q", r.status, r.stderr)
			}
			if got := c.containerState(id); got != "CONTAINER_EXITED" {
				t.Errorf("after stop: %q", got)
			}
			t.Logf("stopped in %s", time.Since(start).Round(time.Millisecond))
			c.mustRun("rm", id)
			c.mustRun("stopp", podID)
			c.mustRun("rmp", podID)
			deadline := time.Now().Add(15 * time.Second)
			for {
				qemus, shims := podProcesses(t, podID)
				if len(qemus)+len(shims) == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("the pod's VM is left: qemu %q, shims %q", qemus, shims)
				}
				time.Sleep(200 * time.Millisecond)
			}
		})
	}
}
