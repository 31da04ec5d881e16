// Package e2e drives the real husk binary against real QEMU guests. The
// tests need root, QEMU, and the built kernel and initrd (make all); without
// them they skip and say why.
package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

var (
	buildDir = mustAbs("../../build")
	huskBin  = filepath.Join(buildDir, "husk")
	idSeq    atomic.Int64
)

func mustAbs(p string) string {
	abs, err := filepath.Abs(p)
	if err != nil {
		panic(err)
	}
	return abs
}

// skipUnlessRequired skips the test for a reason of the machine's (a
// missing tool, service or privilege). With HUSK_TEST_REQUIRE_ALL=1, as
// make test sets it after installing and starting everything, the test
// fails instead: a suite run that skipped a real client has not passed.
func skipUnlessRequired(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv("HUSK_TEST_REQUIRE_ALL") == "1" {
		t.Fatalf("HUSK_TEST_REQUIRE_ALL=1, but: "+format, args...)
	}
	t.Skipf(format, args...)
}

// requireGuest skips the test when this machine cannot boot husk guests.
func requireGuest(t *testing.T) {
	t.Helper()
	if os.Getuid() != 0 {
		skipUnlessRequired(t, "needs root: husk mounts and starts QEMU")
	}
	for _, f := range []string{huskBin, filepath.Join(buildDir, "vmlinux"), filepath.Join(buildDir, "husk-initrd.img")} {
		if _, err := os.Stat(f); err != nil {
			skipUnlessRequired(t, "needs %s (run make all): %v", f, err)
		}
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		skipUnlessRequired(t, "needs qemu-system-x86_64 (apt-get install qemu-system-x86)")
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		skipUnlessRequired(t, "needs /bin/busybox (apt-get install busybox-static)")
	}
}

// env is one test's husk: its own state root and a config file.
type env struct {
	t      *testing.T
	root   string
	config string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	requireGuest(t)
	e := &env{t: t, root: t.TempDir()}
	e.writeConfig("")
	t.Cleanup(e.checkNoLeaks)
	return e
}

// writeConfig writes the test's configuration file: the build tree's guest
// plus extra TOML.
func (e *env) writeConfig(extra string) {
	e.config = filepath.Join(e.root, "configuration.toml")
	body := fmt.Sprintf("[hypervisor]\nkernel = %q\ninitrd = %q\n%s", filepath.Join(buildDir, "vmlinux"),
		filepath.Join(buildDir, "husk-initrd.img"), extra)
	if err := os.WriteFile(e.config, []byte(body), 0o644); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) id() string {
	return fmt.Sprintf("e2e-%d-%d", os.Getpid(), idSeq.Add(1))
}

func (e *env) command(args ...string) *exec.Cmd {
	full := append([]string{"--root", filepath.Join(e.root, "state"), "--config", e.config}, args...)
	return exec.Command(huskBin, full...)
}

// result is a finished husk command.
type result struct {
	stdout, stderr string
	status         int
}

func (e *env) run(stdin string, args ...string) result {
	e.t.Helper()
	return runCommand(e.t, e.command(args...), stdin)
}

// runCommand runs cmd to the end with stdin and captures its output.
func runCommand(t *testing.T, cmd *exec.Cmd, stdin string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	err := cmd.Run()
	status := 0
	if err != nil {
		exitErr, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("%v: %v", cmd.Args, err)
		}
		status = exitErr.ExitCode()
	}
	return result{stdout.String(), stderr.String(), status}
}

// bundle makes a busybox bundle whose process is args, changed by edit.
func (e *env) bundle(edit func(*specs.Spec), args ...string) string {
	e.t.Helper()
	dir := filepath.Join(e.t.TempDir(), "bundle")
	out, err := exec.Command(filepath.Join(buildDir, "..", "scripts", "make-bundle.sh"), dir).CombinedOutput()
	if err != nil {
		e.t.Fatalf("make-bundle: %v: %s", err, out)
	}
	path := filepath.Join(dir, "config.json")
	data, err := os.ReadFile(path)
	if err != nil {
		e.t.Fatal(err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		e.t.Fatal(err)
	}
	spec.Process.Args = args
	spec.Process.Terminal = false
	if edit != nil {
		edit(&spec)
	}
	if data, err = json.MarshalIndent(&spec, "", "  "); err != nil {
		e.t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		e.t.Fatal(err)
	}
	return dir
}

// checkNoLeaks fails the test if anything of its sandboxes is left: a QEMU
// or daemon process, a state directory, a mount under its state root, or a
// tap or macvtap in the host's own network namespace (where husk must never
// make one). What a sandbox made in a test's namespace is checked by
// netFixture's clean-up; descriptors of the long-lived daemons (dockerd,
// containerd) by the load tests, where a leak would add up.
func (e *env) checkNoLeaks() {
	t := e.t
	deadline := time.Now().Add(5 * time.Second)
	var leaks []string
	for {
		leaks = leaks[:0]
		out, _ := exec.Command("ps", "-eo", "pid,args").Output()
		for _, line := range strings.Split(string(out), "\n") {
			if strings.Contains(line, e.root) && (strings.Contains(line, "qemu-system") || strings.Contains(line, "sandbox-daemon") || strings.Contains(line, "pool-daemon") || strings.Contains(line, " stand-in ")) {
				leaks = append(leaks, "process: "+strings.TrimSpace(line))
			}
		}
		if entries, err := os.ReadDir(filepath.Join(e.root, "state")); err == nil {
			for _, ent := range entries {
				leaks = append(leaks, "state directory: "+ent.Name())
			}
		}
		mounts, _ := os.ReadFile("/proc/self/mounts")
		for _, line := range strings.Split(string(mounts), "\n") {
			if strings.Contains(line, e.root) {
				leaks = append(leaks, "mount: "+line)
			}
		}
		if links, _ := exec.Command("ip", "-o", "link").Output(); strings.Contains(string(links), "husktap") {
			leaks = append(leaks, "a husk device in the host's network namespace:\n"+string(links))
		}
		if len(leaks) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, l := range leaks {
		t.Errorf("left behind: %s", l)
	}
}
