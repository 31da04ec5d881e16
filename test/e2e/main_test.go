package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// keptLogDir is where husk keeps the console logs of guests that failed to
// boot or crashed (sandbox.KeptLogDir).
const keptLogDir = "/var/log/husk"

// defaultTemplateDir is hypervisor.template_dir's default, where the
// suite's sandboxes (and those Docker and containerd start) keep their
// templates, each holding tens of MiB of a tmpfs.
const defaultTemplateDir = "/run/husk-templates"

// noisyEnv, set to 1, runs the suite as on a busy host that has never run
// husk: a CPU-bound process competes for a core the whole time, and the
// templates in defaultTemplateDir are removed first, so that the first
// sandboxes boot and make them while others queue.
const noisyEnv = "HUSK_TEST_NOISY"

// TestMain removes what the suite's own sandboxes left on purpose, so that
// a test run leaves the machine as it found it: the console logs that its
// crashes and failed boots made husk keep, and the templates it made.
// What was there before is left alone.
func TestMain(m *testing.M) {
	stopNoise := func() {}
	if os.Getenv(noisyEnv) == "1" {
		var err error
		if stopNoise, err = startNoise(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: starting the noisy neighbour:", err)
			os.Exit(1)
		}
	}
	patterns := []string{filepath.Join(keptLogDir, "*.console.log"), filepath.Join(defaultTemplateDir, "*")}
	before := map[string]bool{}
	for _, pattern := range patterns {
		existing, _ := filepath.Glob(pattern)
		for _, f := range existing {
			before[f] = true
		}
	}
	code := m.Run()
	for _, pattern := range patterns {
		after, _ := filepath.Glob(pattern)
		for _, f := range after {
			if !before[f] {
				os.RemoveAll(f)
			}
		}
	}
	stopNoise()
	os.Exit(code)
}

// startNoise removes the host's templates and starts a shell that keeps a
// core busy until stop, or until this process ends.
func startNoise() (stop func(), err error) {
	templates, _ := filepath.Glob(filepath.Join(defaultTemplateDir, "*"))
	for _, t := range templates {
		if err := os.RemoveAll(t); err != nil {
			return nil, err
		}
	}
	cmd := exec.Command("sh", "-c", "while :; do :; done")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	fmt.Fprintf(os.Stderr, "e2e: a CPU-bound neighbour (pid %d) runs beside the tests; %d templates removed\n", cmd.Process.Pid, len(templates))
	return func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}, nil
}
