package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/husk-runtime/husk/internal/initrd"
)

func TestRunEcho(t *testing.T) {
	e := newEnv(t)
	b := e.bundle(nil, "echo", "hello from the guest")
	r := e.run("", "run", "--bundle", b, e.id())
	if r.status != 0 || r.stdout != "hello from the guest\n" {
		t.Fatalf("status %d, stdout %q, stderr %q", r.status, r.stdout, r.stderr)
	}
}

func TestRunRunsInItsOwnKernel(t *testing.T) {
	e := newEnv(t)
	b := e.bundle(nil, "uname", "-r")
	r := e.run("", "run", "--bundle", b, e.id())
	var host syscall.Utsname
	_ = syscall.Uname(&host)
	hostRelease := int8sToString(host.Release[:])
	if r.status != 0 || strings.TrimSpace(r.stdout) == "" || strings.TrimSpace(r.stdout) == hostRelease {
		t.Fatalf("guest kernel %q, host kernel %q (status %d, stderr %q)", r.stdout, hostRelease, r.status, r.stderr)
	}
}

func int8sToString(b []int8) string {
	var s []byte
	for _, c := range b {
		if c == 0 {
			break
		}
		s = append(s, byte(c))
	}
	return string(s)
}

func TestRunExitStatus(t *testing.T) {
	e := newEnv(t)
	// Without a PID namespace of its own the shell is not an init process,
	// which ignores signals it has no handler for, so it can kill itself.
	for script, want := range map[string]int{
		"exit 0":      0,
		"exit 3":      3,
		"kill -9 $$":  137,
		"kill -15 $$": 143,
	} {
		b := e.bundle(noPIDNamespace, "sh", "-c", script)
		if r := e.run("", "run", "--bundle", b, e.id()); r.status != want {
			t.Errorf("%q: status %d, want %d (stderr %q)", script, r.status, want, r.stderr)
		}
	}
}

func TestRunStdin(t *testing.T) {
	e := newEnv(t)
	b := e.bundle(nil, "cat")
	r := e.run("hi\nthere\n", "run", "--bundle", b, e.id())
	if r.status != 0 || r.stdout != "hi\nthere\n" {
		t.Fatalf("status %d, stdout %q, stderr %q", r.status, r.stdout, r.stderr)
	}
}

func TestRunStderrIsSeparate(t *testing.T) {
	e := newEnv(t)
	b := e.bundle(nil, "sh", "-c", "echo out; echo err >&2")
	r := e.run("", "run", "--bundle", b, e.id())
	if r.stdout != "out\n" || !strings.Contains(r.stderr, "err\n") {
		t.Fatalf("stdout %q, stderr %q", r.stdout, r.stderr)
	}
}

func TestRunEnvAndCwd(t *testing.T) {
	e := newEnv(t)
	b := e.bundle(func(s *specs.Spec) {
		s.Process.Env = append(s.Process.Env, "GREETING=from-config")
		s.Process.Cwd = "/tmp"
	}, "sh", "-c", `echo "$GREETING $(pwd)"`)
	r := e.run("", "run", "--bundle", b, e.id())
	if r.status != 0 || r.stdout != "from-config /tmp\n" {
		t.Fatalf("status %d, stdout %q, stderr %q", r.status, r.stdout, r.stderr)
	}
}

func TestRunCommandNotFound(t *testing.T) {
	e := newEnv(t)
	b := e.bundle(nil, "/no/such/program")
	r := e.run("", "run", "--bundle", b, e.id())
	if r.status == 0 || !strings.Contains(r.stderr, "no such file or directory") {
		t.Fatalf("status %d, stderr %q", r.status, r.stderr)
	}
	if n := strings.Count(strings.TrimSpace(r.stderr), "\n"); n != 0 {
		t.Errorf("error is %d lines, want one: %q", n+1, r.stderr)
	}
}

func TestRunForwardsSignals(t *testing.T) {
	e := newEnv(t)
	b := e.bundle(nil, "sh", "-c", "trap 'echo got TERM; exit 42' TERM; echo ready; while true; do sleep 0.1; done")
	cmd := e.command("run", "--bundle", b, e.id())
	stdout := &syncBuffer{}
	cmd.Stdout = stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(stdout.String(), "ready") {
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			t.Fatalf("container never printed ready; stdout %q", stdout.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	status := 0
	if exitErr, ok := err.(interface{ ExitCode() int }); ok {
		status = exitErr.ExitCode()
	}
	if status != 42 || !strings.Contains(stdout.String(), "got TERM") {
		t.Fatalf("status %d, stdout %q", status, stdout.String())
	}
}

func TestListAndStateOfRunningContainer(t *testing.T) {
	e := newEnv(t)
	id := e.id()
	b := e.bundle(nil, "sh", "-c", "echo ready; sleep 600")
	cmd := e.command("run", "--bundle", b, id)
	stdout := &syncBuffer{}
	cmd.Stdout = stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		e.run("", "delete", "--force", id)
	}()
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(stdout.String(), "ready") {
		if time.Now().After(deadline) {
			t.Fatalf("container never printed ready")
		}
		time.Sleep(50 * time.Millisecond)
	}

	r := e.run("", "list")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "ID") || !strings.Contains(lines[1], id) || !strings.Contains(lines[1], "running") {
		t.Fatalf("list:\n%s", r.stdout)
	}
	if r := e.run("", "list", "-q"); strings.TrimSpace(r.stdout) != id {
		t.Fatalf("list -q: %q", r.stdout)
	}
	r = e.run("", "list", "--format", "json")
	var listed []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &listed); err != nil || len(listed) != 1 || listed[0]["id"] != id {
		t.Fatalf("list json %q: %v", r.stdout, err)
	}

	r = e.run("", "state", id)
	var st struct {
		OCIVersion string `json:"ociVersion"`
		ID         string `json:"id"`
		PID        int    `json:"pid"`
		Status     string `json:"status"`
		Bundle     string `json:"bundle"`
		Rootfs     string `json:"rootfs"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("state %q: %v", r.stdout, err)
	}
	if st.ID != id || st.Status != "running" || st.PID != cmd.Process.Pid || st.Bundle != b || st.Rootfs != filepath.Join(b, "rootfs") || st.OCIVersion == "" {
		t.Fatalf("state = %+v (husk run pid %d)", st, cmd.Process.Pid)
	}

	// A running container is not deleted without --force.
	if r := e.run("", "delete", id); r.status != 1 || !strings.Contains(r.stderr, "not stopped") {
		t.Fatalf("delete of running container: status %d, stderr %q", r.status, r.stderr)
	}
	if r := e.run("", "delete", "--force", id); r.status != 0 {
		t.Fatalf("delete --force: status %d, stderr %q", r.status, r.stderr)
	}
	if err := cmd.Wait(); err == nil {
		t.Error("husk run exited 0 after its container was killed")
	}
	if r := e.run("", "state", id); r.status != 1 || !strings.Contains(r.stderr, "does not exist") {
		t.Fatalf("state after delete: status %d, stderr %q", r.status, r.stderr)
	}
}

func TestBadInputLeavesNothing(t *testing.T) {
	e := newEnv(t)
	good := e.bundle(nil, "true")
	malformed := e.bundle(nil, "true")
	if err := os.WriteFile(filepath.Join(malformed, "config.json"), []byte("{oops"), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, args := range map[string][]string{
		"missing bundle":   {"run", "--bundle", filepath.Join(t.TempDir(), "absent"), e.id()},
		"malformed config": {"run", "--bundle", malformed, e.id()},
		"path-like id":     {"run", "--bundle", good, "../x"},
		"empty id":         {"run", "--bundle", good, ""},
		"dot id":           {"run", "--bundle", good, "."},
		"dot-dot id":       {"run", "--bundle", good, ".."},
		"slash id":         {"run", "--bundle", good, "a/b"},
		"1 KiB id":         {"run", "--bundle", good, strings.Repeat("a", 1024)},
		"non-UTF-8 id":     {"run", "--bundle", good, "bad\xff\xfeid"},
		"no id given":      {"run", "--bundle", good},
		"unknown state":    {"state", "no-such-container"},
		"unknown delete":   {"delete", "no-such-container"},
	} {
		r := e.run("", args...)
		if r.status != 1 || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 || r.stderr == "" {
			t.Errorf("%s: status %d, stderr %q; want exit 1 and one line", name, r.status, r.stderr)
		}
		if strings.HasSuffix(name, " id") && !strings.Contains(r.stderr, "invalid container id") {
			t.Errorf("%s: stderr %q does not say the id is invalid", name, r.stderr)
		}
	}
}

func TestMissingKernelOrQEMU(t *testing.T) {
	e := newEnv(t)
	b := e.bundle(nil, "true")
	for name, cfg := range map[string]string{
		"kernel": "[hypervisor]\nkernel = \"/nonexistent/vmlinux\"\n",
		"qemu":   "[hypervisor]\npath = \"/nonexistent/qemu\"\n",
	} {
		path := filepath.Join(e.root, name+".toml")
		if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(huskBin, "--root", filepath.Join(e.root, "state"), "--config", path, "run", "--bundle", b, e.id())
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "nonexistent") {
			t.Errorf("%s: err %v, output %q", name, err, out)
		}
	}
}

func TestBootTimeoutNamesConsoleLog(t *testing.T) {
	e := newEnv(t)
	// No guest boots in a millisecond, under TCG or KVM.
	e.writeConfig("[agent]\nboot_timeout = \"1ms\"\n")
	b := e.bundle(nil, "true")
	id := e.id()
	r := e.run("", "run", "--bundle", b, id)
	if r.status != 1 || !strings.Contains(r.stderr, "console log") {
		t.Fatalf("status %d, stderr %q", r.status, r.stderr)
	}
	kept := filepath.Join(keptLogDir, id+".console.log")
	if !strings.Contains(r.stderr, kept) {
		t.Fatalf("stderr %q does not name %s", r.stderr, kept)
	}
	if _, err := os.Stat(kept); err != nil {
		t.Fatalf("console log not kept: %v", err)
	}
	os.Remove(kept)
}

// TestCheckRefusesAnotherHusksGuest: an initrd whose agent speaks another
// agent API fails check, which names both.
func TestCheckRefusesAnotherHusksGuest(t *testing.T) {
	e := newEnv(t)
	var archive bytes.Buffer
	if err := initrd.Write(&archive, initrd.Guest([]byte("\x7fELF not run"), "husk-agent 0.0.1-elsewhere api=1")); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(e.root, "other-initrd.img")
	if err := os.WriteFile(other, archive.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	e.writeConfig("")
	body, _ := os.ReadFile(e.config)
	os.WriteFile(e.config, bytes.Replace(body, []byte(filepath.Join(buildDir, "husk-initrd.img")), []byte(other), 1), 0o644)
	r := e.run("", "check")
	if r.status == 0 || !strings.Contains(r.stdout, "FAIL initrd") || !strings.Contains(r.stdout, "agent API 1") {
		t.Fatalf("check with another husk's initrd: status %d, stdout %q", r.status, r.stdout)
	}
	if r := e.run("", "check"); !strings.Contains(r.stdout, "ok   kernel") {
		t.Errorf("kernel line: %q", r.stdout)
	}
}

// TestDevicesAreTheGuests: linux.devices are made in the guest, as runc
// makes them on a host: the numbers name the guest kernel's devices, so a
// node with /dev/null's numbers is the guest's null and a host device the
// guest lacks (/dev/kvm) opens as no device; readonlyPaths may name them.
func TestDevicesAreTheGuests(t *testing.T) {
	e := newEnv(t)
	uid, gid := uint32(0), uint32(0)
	mode := os.FileMode(0o666)
	b := e.bundle(func(s *specs.Spec) {
		s.Linux.Devices = append(s.Linux.Devices,
			specs.LinuxDevice{Path: "/dev/husk-null", Type: "c", Major: 1, Minor: 3, FileMode: &mode, UID: &uid, GID: &gid},
			specs.LinuxDevice{Path: "/dev/kvm", Type: "c", Major: 10, Minor: 232, FileMode: &mode, UID: &uid, GID: &gid},
			specs.LinuxDevice{Path: "/dev/husk-ro", Type: "c", Major: 1, Minor: 5, FileMode: &mode, UID: &uid, GID: &gid})
		allow := func(minor int64) specs.LinuxDeviceCgroup {
			major := int64(1)
			if minor == 232 {
				major = 10
			}
			return specs.LinuxDeviceCgroup{Allow: true, Type: "c", Major: &major, Minor: &minor, Access: "rwm"}
		}
		if s.Linux.Resources == nil {
			s.Linux.Resources = &specs.LinuxResources{}
		}
		s.Linux.Resources.Devices = append(s.Linux.Resources.Devices, allow(3), allow(232), allow(5))
		s.Linux.ReadonlyPaths = append(s.Linux.ReadonlyPaths, "/dev/husk-ro")
	}, "sh", "-c", `ls -l /dev/husk-null /dev/kvm | awk '{print $1, $5, $6}'
echo into-null > /dev/husk-null && echo null-ok
sh -c ': < /dev/kvm' 2>&1 | grep -o 'No such device'  # the guest has no KVM
head -c 4 /dev/husk-ro | wc -c
awk '$5 == "/dev/husk-ro" {split($6, o, ","); print o[1]}' /proc/self/mountinfo`)
	r := e.run("", "run", "--bundle", b, e.id())
	want := "crw-rw-rw- 1, 3\ncrw-rw-rw- 10, 232\nnull-ok\nNo such device\n4\nro\n"
	if r.status != 0 || r.stdout != want {
		t.Fatalf("devices: status %d, stdout %q, want %q; stderr %q", r.status, r.stdout, want, r.stderr)
	}
}

// TestVMSizedForLimits: a container's memory limit and CPU quota size its
// VM, so the limits can be used, and the limits hold inside.
func TestVMSizedForLimits(t *testing.T) {
	e := newEnv(t)
	limit := int64(384 << 20)
	quota, period := int64(200000), uint64(100000)
	b := e.bundle(func(s *specs.Spec) {
		s.Linux.Resources = &specs.LinuxResources{
			Memory: &specs.LinuxMemory{Limit: &limit},
			CPU:    &specs.LinuxCPU{Quota: &quota, Period: &period},
		}
	}, "sh", "-c", "grep MemTotal /proc/meminfo; nproc; cat /sys/fs/cgroup/memory.max")
	r := e.run("", "run", "--bundle", b, e.id())
	if r.status != 0 {
		t.Fatalf("run: status %d, stderr %q", r.status, r.stderr)
	}
	var memKiB, cpus int
	var memMax string
	fmt.Sscanf(r.stdout, "MemTotal: %d kB\n%d\n%s", &memKiB, &cpus, &memMax)
	// The guest keeps some memory for its kernel: the total is a little
	// under the VM's size, 256 MiB + the limit.
	if memKiB < (256+384)*1024*9/10 {
		t.Errorf("guest memory %d KiB for a 384 MiB limit", memKiB)
	}
	if want := min(2, runtime.NumCPU()); cpus != want {
		t.Errorf("%d vCPUs for a quota of 2 CPUs, want %d", cpus, want)
	}
	if memMax != fmt.Sprint(limit) {
		t.Errorf("memory.max %q in the container, want %d", memMax, limit)
	}
}

// TestVMSizedForCpuset: the CPUs a cpuset names are there in the guest (up
// to the host's), so the container gets them, as under runc.
func TestVMSizedForCpuset(t *testing.T) {
	e := newEnv(t)
	want := min(2, runtime.NumCPU())
	cpus := "0"
	if want == 2 {
		cpus = "0-1"
	}
	b := e.bundle(func(s *specs.Spec) {
		s.Linux.Resources = &specs.LinuxResources{CPU: &specs.LinuxCPU{Cpus: cpus}}
	}, "sh", "-c", "nproc; cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/cpuset.cpus.effective")
	r := e.run("", "run", "--bundle", b, e.id())
	if r.status != 0 || r.stdout != fmt.Sprintf("%d\n%s\n", want, cpus) {
		t.Fatalf("cpuset %s: status %d, stdout %q, want %d CPUs, effective %s; stderr %q", cpus, r.status, r.stdout, want, cpus, r.stderr)
	}
}

// TestReadOnlyBindIsNotRecursive: as under runc, "ro" on a recursive bind
// mount makes its top mount read-only and leaves the host's mounts below it
// as they are; "rro" makes them all read-only.
func TestReadOnlyBindIsNotRecursive(t *testing.T) {
	e := newEnv(t)
	volume := t.TempDir()
	sub := filepath.Join(volume, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("husk-e2e-sub", sub, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(sub, unix.MNT_DETACH) })
	for _, tc := range []struct {
		option, want string
	}{{"ro", "top-refused sub-written\n"}, {"rro", "top-refused sub-refused\n"}} {
		b := e.bundle(func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/data", Type: "bind", Source: volume, Options: []string{"rbind", tc.option}})
		}, "sh", "-c", `(echo x > /data/top) 2>/dev/null && echo -n top-written || echo -n top-refused
echo -n ' '
(echo x > /data/sub/`+tc.option+`) 2>/dev/null && echo sub-written || echo sub-refused`)
		r := e.run("", "run", "--bundle", b, e.id())
		if r.status != 0 || r.stdout != tc.want {
			t.Errorf("rbind,%s: status %d, stdout %q, want %q; stderr %q", tc.option, r.status, r.stdout, tc.want, r.stderr)
		}
		_, err := os.Stat(filepath.Join(sub, tc.option))
		if written := err == nil; written != strings.Contains(tc.want, "sub-written") {
			t.Errorf("rbind,%s: the file in the host's submount exists: %v", tc.option, written)
		}
	}
}
