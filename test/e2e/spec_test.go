package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// TestSpecFieldsInTheGuest: one container whose spec sets the process and
// linux fields a runtime must honour; each is read back from inside the
// container, where the guest's libcontainer applied it, and must read as
// it would under runc.
func TestSpecFieldsInTheGuest(t *testing.T) {
	e := newEnv(t)
	umask := uint32(0o027)
	oomScoreAdj := 500
	pids := int64(64)
	quota, period := int64(50000), uint64(100000)
	b := e.bundle(func(s *specs.Spec) {
		s.Process.User = specs.User{UID: 1000, GID: 1001, AdditionalGids: []uint32{2000, 3000}, Umask: &umask}
		s.Process.Rlimits = []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Soft: 1234, Hard: 2345}}
		caps := []string{"CAP_CHOWN", "CAP_KILL"}
		// For a user other than root, execve keeps only the ambient
		// capabilities in the effective set, under runc too.
		s.Process.Capabilities = &specs.LinuxCapabilities{Bounding: caps, Effective: caps, Permitted: caps, Inheritable: caps, Ambient: caps}
		s.Process.NoNewPrivileges = true
		s.Process.OOMScoreAdj = &oomScoreAdj
		s.Hostname = "husk-spec-host"
		s.Root.Readonly = true
		s.Linux.MaskedPaths = append(s.Linux.MaskedPaths, "/etc/secret")
		s.Linux.ReadonlyPaths = append(s.Linux.ReadonlyPaths, "/proc/sys")
		s.Linux.Sysctl = map[string]string{"kernel.domainname": "husk.test", "net.ipv4.ip_forward": "1"}
		s.Linux.Resources = &specs.LinuxResources{
			Pids: &specs.LinuxPids{Limit: &pids},
			CPU:  &specs.LinuxCPU{Quota: &quota, Period: &period},
		}
	}, "sh", "-c", `
grep -E '^(Uid|Gid|Groups|CapBnd|CapEff|NoNewPrivs):' /proc/self/status | tr -s '\t ' ' ' | sed 's/ *$//'
echo "umask $(umask)"
grep 'Max open files' /proc/self/limits | tr -s ' ' ' ' | sed 's/ *$//'
echo "oom_score_adj $(cat /proc/self/oom_score_adj)"
echo "hostname $(hostname)"
echo "domainname $(cat /proc/sys/kernel/domainname)"
echo "ip_forward $(cat /proc/sys/net/ipv4/ip_forward)"
echo "secret [$(cat /etc/secret)]"
awk '$5 == "/" || $5 == "/proc/sys" {split($6, o, ","); print "mount", $5, o[1]}' /proc/self/mountinfo
echo "pids.max $(cat /sys/fs/cgroup/pids.max)"
echo "cpu.max $(cat /sys/fs/cgroup/cpu.max)"
`)
	if err := os.WriteFile(filepath.Join(b, "rootfs", "etc", "secret"), []byte("do not read\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := e.run("", "run", "--bundle", b, e.id())
	if r.status != 0 {
		t.Fatalf("run: status %d, stdout %q, stderr %q", r.status, r.stdout, r.stderr)
	}
	for _, want := range []string{
		"Uid: 1000 1000 1000 1000",
		"Gid: 1001 1001 1001 1001",
		"Groups: 2000 3000",
		"CapBnd: 0000000000000021", // CAP_CHOWN (0) and CAP_KILL (5)
		"CapEff: 0000000000000021",
		"NoNewPrivs: 1",
		"umask 0027",
		"Max open files 1234 2345 files",
		"oom_score_adj 500",
		"hostname husk-spec-host",
		"domainname husk.test",
		"ip_forward 1",
		"secret []",
		"mount / ro",
		"mount /proc/sys ro",
		"pids.max 64",
		"cpu.max 50000 100000",
	} {
		if !strings.Contains(r.stdout, want+"\n") {
			t.Errorf("in the container: no %q in:\n%s", want, r.stdout)
		}
	}
}

// TestDockerSeccompInTheGuest: Docker's default seccomp profile reaches the
// guest and is enforced there (a filter on the container's process), and
// --security-opt seccomp=unconfined turns it off, as under runc.
func TestDockerSeccompInTheGuest(t *testing.T) {
	d := newDockerEnv(t)
	for _, c := range []struct {
		opts []string
		want string
	}{
		{nil, "Seccomp:\t2"},
		{[]string{"--security-opt", "seccomp=unconfined"}, "Seccomp:\t0"},
	} {
		args := append([]string{"run", "--rm", "--runtime", "husk"}, c.opts...)
		out := d.mustRun(append(args, "busybox:local", "grep", "^Seccomp:", "/proc/self/status")...)
		if out != c.want {
			t.Errorf("docker run %v: %q, want %q", c.opts, out, c.want)
		}
	}
	// A syscall the default profile refuses even to root: keyctl, which
	// busybox has no applet for; unshare(2) of a user namespace is refused
	// as well, and busybox's unshare makes one.
	r := d.run("", "run", "--rm", "--runtime", "husk", "busybox:local", "unshare", "-U", "true")
	if r.status == 0 {
		t.Errorf("unshare -U under Docker's default seccomp profile succeeded: %q %q", r.stdout, r.stderr)
	}
	if r := d.run("", "run", "--rm", "--runtime", "husk", "--security-opt", "seccomp=unconfined", "busybox:local", "unshare", "-U", "true"); r.status != 0 {
		t.Errorf("unshare -U without seccomp: status %d, stderr %q", r.status, r.stderr)
	}
}
