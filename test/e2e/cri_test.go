package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// criEnv drives containerd's CRI plugin with crictl, the way the kubelet
// would, with husk as the runtime handler "husk".
type criEnv struct {
	t      *testing.T
	config string
}

func newCRIEnv(t *testing.T) *criEnv {
	t.Helper()
	requireGuest(t)
	config := os.Getenv("HUSK_TEST_CRICTL_CONFIG")
	if config == "" {
		t.Skip("HUSK_TEST_CRICTL_CONFIG is not set: run scripts/start-services.sh (make test does)")
	}
	if _, err := exec.LookPath("crictl"); err != nil {
		t.Skip("needs crictl (scripts/install-deps.sh installs it)")
	}
	c := &criEnv{t: t, config: config}
	if r := c.run("", "info"); r.status != 0 || !strings.Contains(r.stdout, `"husk"`) {
		t.Skipf("the CRI has no husk runtime handler: %s %s", r.stdout, r.stderr)
	}
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

// TestCRIPodOfTwoContainers runs a pod as the kubelet would: its sandbox,
// then two containers, all in one VM that shares the pod's namespaces.
func TestCRIPodOfTwoContainers(t *testing.T) {
	c := newCRIEnv(t)
	dir := t.TempDir()
	name := fmt.Sprintf("husk-e2e-pod-%d", os.Getpid())
	pod := writeJSON(t, dir, "pod.json", map[string]any{
		"metadata":      map[string]any{"name": name, "namespace": "husk-e2e", "uid": name + "-uid"},
		"hostname":      "husk-pod",
		"log_directory": dir,
		"linux":         map[string]any{},
	})
	podID := c.mustRun("runp", "--runtime", "husk", pod)
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
		if mounts, _ := os.ReadFile("/proc/self/mounts"); strings.Contains(string(mounts), podID) {
			t.Errorf("a mount of the pod is left:\n%s", mounts)
		}
	})

	var ids []string
	for _, n := range []string{"first", "second"} {
		spec := writeJSON(t, dir, n+".json", map[string]any{
			"metadata": map[string]any{"name": n},
			"image":    map[string]any{"image": ctrImage},
			"command":  []string{"sh", "-c", "echo " + n + " > /tmp/who; exec sleep 600"},
			"log_path": n + ".log",
			"linux":    map[string]any{},
		})
		id := c.mustRun("create", podID, spec, pod)
		c.mustRun("start", id)
		ids = append(ids, id)
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

	// Stopping the pod ends its containers and its VM; removing it leaves nothing.
	c.mustRun("stopp", podID)
	for _, id := range ids {
		if out := c.mustRun("inspect", "-o", "go-template", "--template", "{{.status.state}}", id); out != "CONTAINER_EXITED" {
			t.Errorf("container %s after stopp: %q", id, out)
		}
	}
	c.mustRun("rmp", podID)
}
