package e2e

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestEnvReportsVersions: husk env names the configuration it uses and the
// versions of husk, QEMU, the guest kernel and the agent in the initrd, as
// JSON and as TOML, each checked against the thing itself.
func TestEnvReportsVersions(t *testing.T) {
	e := newEnv(t)
	r := e.run("", "env", "--format", "json")
	if r.status != 0 {
		t.Fatalf("env: status %d, stderr %q", r.status, r.stderr)
	}
	var got struct {
		Config struct {
			Hypervisor struct{ Kernel, Initrd string }
			Source     string
		}
		Versions map[string]string
	}
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("env --format json: %v\n%s", err, r.stdout)
	}
	if got.Config.Source != e.config || got.Config.Hypervisor.Kernel != filepath.Join(buildDir, "vmlinux") {
		t.Errorf("env names configuration %q with kernel %q; want %q and the build's kernel", got.Config.Source, got.Config.Hypervisor.Kernel, e.config)
	}
	v := got.Versions
	qemuVersion, _ := exec.Command("qemu-system-x86_64", "--version").Output()
	if v["qemu"] == "" || !strings.Contains(string(qemuVersion), "version "+v["qemu"]) {
		t.Errorf("qemu version %q, but QEMU says %q", v["qemu"], qemuVersion)
	}
	if !regexp.MustCompile(`^6\.1\.\d+`).MatchString(v["kernel"]) {
		t.Errorf("kernel version %q, want the guest's Linux 6.1", v["kernel"])
	}
	huskVersion := e.run("", "--version").stdout
	if v["husk"] == "" || !strings.Contains(huskVersion, "husk version "+v["husk"]+"\n") {
		t.Errorf("husk version %q, but husk --version says %q", v["husk"], huskVersion)
	}
	if !strings.Contains(v["agent"], "agent API") {
		t.Errorf("agent version %q names no agent API", v["agent"])
	}
	for file, key := range map[string]string{"husk-initrd.img": "initrd_sha256", "vmlinux": "kernel_sha256"} {
		data, err := os.ReadFile(filepath.Join(buildDir, file))
		if err != nil {
			t.Fatal(err)
		}
		if sum := sha256.Sum256(data); v[key] != hex.EncodeToString(sum[:]) {
			t.Errorf("%s %q is not the SHA-256 of %s", key, v[key], file)
		}
	}
	toml := e.run("", "env")
	if toml.status != 0 || !strings.Contains(toml.stdout, "[versions]") || !strings.Contains(toml.stdout, `qemu = "`+v["qemu"]+`"`) {
		t.Errorf("env as TOML: status %d:\n%s", toml.status, toml.stdout)
	}
}

// TestCheckOnThisHost: husk check passes here, says which accelerator it
// will use, and warns of TCG exactly when the CPU offers no hardware
// virtualization; a missing kernel fails it with exit status 1.
func TestCheckOnThisHost(t *testing.T) {
	e := newEnv(t)
	r := e.run("", "check")
	if r.status != 0 {
		t.Fatalf("check: status %d\n%s%s", r.status, r.stdout, r.stderr)
	}
	for _, item := range []string{"qemu", "accelerator", "kernel", "initrd", "tun", "cgroups"} {
		if !regexp.MustCompile(`(?m)^ok +` + item + ` `).MatchString(r.stdout) {
			t.Errorf("check has no ok line for %s:\n%s", item, r.stdout)
		}
	}
	// KVM is used where the CPU shows vmx or svm and /dev/kvm opens.
	cpuinfo, _ := os.ReadFile("/proc/cpuinfo")
	hardware := regexp.MustCompile(`(?m)^flags\s*:.*\b(vmx|svm)\b`).Match(cpuinfo)
	if kvm, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err == nil {
		kvm.Close()
	} else {
		hardware = false
	}
	if warned := strings.Contains(r.stdout, "warn hardware virt"); warned == hardware {
		t.Errorf("KVM usable: %v, but check warns of TCG: %v\n%s", hardware, warned, r.stdout)
	}
	// KSM is reported as the host has it, never changed.
	ksmLine := "ok   ksm            off:"
	if run, err := os.ReadFile("/sys/kernel/mm/ksm/run"); err != nil {
		ksmLine = "ok   ksm            none"
	} else if strings.TrimSpace(string(run)) == "1" {
		ksmLine = "ok   ksm            on:"
	}
	if !strings.Contains(r.stdout, ksmLine) {
		t.Errorf("check has no %q line for this host's KSM:\n%s", ksmLine, r.stdout)
	}
	noKernel := filepath.Join(t.TempDir(), "no-kernel.toml")
	if err := os.WriteFile(noKernel, []byte("[hypervisor]\nkernel = \"/nonexistent/vmlinux\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r = runCommand(t, exec.Command(huskBin, "--config", noKernel, "check"), "")
	if r.status != 1 || !strings.Contains(r.stdout, "FAIL kernel") || !strings.Contains(r.stderr, "check(s) failed") {
		t.Errorf("check without a kernel: status %d\n%s%s", r.status, r.stdout, r.stderr)
	}
}

// TestLogFormatJSON: --log with --log-format json gets a command's error as
// one JSON record, as runc writes it for its callers.
func TestLogFormatJSON(t *testing.T) {
	e := newEnv(t)
	logFile := filepath.Join(t.TempDir(), "husk.log")
	r := e.run("", "--log", logFile, "--log-format", "json", "state", "no-such-container")
	if r.status != 1 {
		t.Fatalf("state of an unknown container: status %d", r.status)
	}
	data, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	var rec struct{ Level, Msg string }
	line := strings.TrimSpace(string(data))
	if err := json.Unmarshal([]byte(line), &rec); err != nil || rec.Level != "error" || !strings.Contains(rec.Msg, "does not exist") {
		t.Errorf("log %q: %+v %v; want one JSON error record", line, rec, err)
	}
}

// runTrueToEnd runs `true` detached with the global flags given and waits
// until it has stopped; its state directory stays until the test ends.
func (e *env) runTrueToEnd(flags ...string) (id string) {
	e.t.Helper()
	id = e.id()
	args := append(flags, "run", "-d", "--bundle", e.bundle(nil, "true"), id)
	if r := e.run("", args...); r.status != 0 {
		e.t.Fatalf("run -d: status %d, stderr %q", r.status, r.stderr)
	}
	e.t.Cleanup(func() { e.run("", "delete", "--force", id) })
	e.waitStopped(id)
	return id
}

// TestDaemonLogFields: a sandbox daemon logs in the format --log-format
// names, with the sandbox's and the container's ids, and its requests at
// debug level with --debug.
func TestDaemonLogFields(t *testing.T) {
	e := newEnv(t)
	id := e.runTrueToEnd("--log-format", "json", "--debug")
	f, err := os.Open(filepath.Join(e.root, "state", id, "daemon.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	seen := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Errorf("daemon.log line is not JSON: %q", sc.Text())
			continue
		}
		if rec["sandbox"] != id {
			t.Errorf("daemon.log line without sandbox=%s: %q", id, sc.Text())
		}
		if rec["container"] == id {
			seen[rec["msg"].(string)] = true
		}
		if rec["level"] == "DEBUG" && rec["msg"] == "request" {
			seen["debug request"] = true
		}
	}
	for _, want := range []string{"container created", "process exited", "debug request"} {
		if !seen[want] {
			t.Errorf("daemon.log has no %q record with container=%s; saw %v", want, id, seen)
		}
	}
}

// TestDebugLogsContainerSetup: with debug = true the console log holds the
// agent's log and libcontainer's, step by step, for a container's setup.
func TestDebugLogsContainerSetup(t *testing.T) {
	e := newEnv(t)
	e.writeConfig("[runtime]\ndebug = true\n")
	id := e.runTrueToEnd()
	console, err := os.ReadFile(filepath.Join(e.root, "state", id, "console.log"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"husk-agent: ready", "nsexec container setup", "about to wait on exec fifo"} {
		if !strings.Contains(string(console), want) {
			t.Errorf("the debug console log lacks %q", want)
		}
	}
}
