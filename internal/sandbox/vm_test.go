package sandbox

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/husk-runtime/husk/internal/config"
	"github.com/husk-runtime/husk/internal/qemu"
)

func TestKernelArgs(t *testing.T) {
	cfg := config.Default()
	cfg.SharedFS.MSize = 65536
	cfg.Hypervisor.KernelParams = "foo=bar"
	args := kernelArgs(cfg, qemu.AccelTCG)
	for _, want := range []string{"console=ttyS0", "reboot=t", "panic=-1", "husk.msize=65536", "quiet", "foo=bar", "noapictimer"} {
		if !strings.Contains(" "+args+" ", " "+want+" ") {
			t.Errorf("kernel args %q lack %q", args, want)
		}
	}
	if args := kernelArgs(cfg, qemu.AccelKVM); strings.Contains(args, "noapictimer") {
		t.Errorf("KVM guest's kernel args %q turn off the APIC timer", args)
	}
	cfg.Runtime.Debug = true
	if args := kernelArgs(cfg, qemu.AccelTCG); strings.Contains(args, "quiet") || !strings.Contains(args, "husk.debug=1") {
		t.Errorf("debug kernel args %q", args)
	}
}

func TestVMConfigIsValid(t *testing.T) {
	cfg := config.Default()
	cfg.Hypervisor.Kernel = "/k"
	cfg.Hypervisor.Initrd = "/i"
	qcfg := vmConfig(VMOptions{ID: "c1", Dir: "/run/husk/c1", Config: cfg}, qemu.AccelTCG, sandboxPaths("/run/husk/c1"))
	args, err := qcfg.Args()
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(args, " ")
	for _, want := range []string{"-name sandbox-c1", "name=agent.channel.0", "mount_tag=husk-shared", "path=/run/husk/c1/console.log"} {
		if !strings.Contains(joined, want) {
			t.Errorf("qemu args lack %q:\n%s", want, joined)
		}
	}
}

// BenchmarkBoot measures QEMU start to agent ready for a guest that boots,
// and the guest's own part of it, on the built kernel and initrd (make all).
func BenchmarkBoot(b *testing.B) {
	cfg := benchConfig(b)
	cfg.Hypervisor.Template = false
	total, guest := startVMs(b, cfg)
	b.ReportMetric(float64(median(total).Milliseconds()), "ms-qemu-to-agent-median")
	b.ReportMetric(float64(median(guest).Milliseconds()), "ms-guest-kernel-to-agent-median")
}

// BenchmarkRestore measures QEMU start to agent ready for a guest restored
// from a template (made before the timing starts, in a directory of its own).
func BenchmarkRestore(b *testing.B) {
	cfg := benchConfig(b)
	cfg.Hypervisor.TemplateDir = b.TempDir()
	startVMs(b, cfg) // the template is made once, untimed
	b.ResetTimer()
	total, _ := startVMs(b, cfg)
	b.ReportMetric(float64(median(total).Milliseconds()), "ms-qemu-to-agent-median")
}

func benchConfig(b *testing.B) *config.Config {
	build, _ := filepath.Abs("../../build")
	cfg := config.Default()
	cfg.Hypervisor.Kernel = filepath.Join(build, "vmlinux")
	cfg.Hypervisor.Initrd = filepath.Join(build, "husk-initrd.img")
	if os.Getuid() != 0 {
		b.Skip("needs root")
	}
	if err := cfg.CheckAssets(); err != nil {
		b.Skipf("needs the built guest: %v", err)
	}
	return cfg
}

// startVMs starts b.N guests one after another, each stopped before the
// next, and returns QEMU start to agent ready and the agent's own ready
// time for each.
func startVMs(b *testing.B, cfg *config.Config) (total, guest []time.Duration) {
	wd, _ := os.Getwd()
	defer os.Chdir(wd)
	for i := 0; i < b.N; i++ {
		dir := b.TempDir()
		if err := os.Chdir(dir); err != nil {
			b.Fatal(err)
		}
		vm, err := StartVM(VMOptions{ID: "bench", Dir: dir, Config: cfg})
		if err != nil {
			b.Fatal(err)
		}
		if cfg.Hypervisor.Template != vm.Restored {
			b.Fatalf("restored = %v with template = %v", vm.Restored, cfg.Hypervisor.Template)
		}
		total = append(total, vm.Ready.Sub(vm.Started))
		guest = append(guest, time.Duration(vm.Guest.GetReadyNs()))
		vm.Stop(stopTimeout)
	}
	return total, guest
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func TestHighestCPU(t *testing.T) {
	for list, want := range map[string]int{"0": 0, "0-1": 1, " 3,0-1 ": 3, "0,2-5,4": 5, "0-1,": 1, "0-1 ,3\n": 3, "0,,1": 1, "0-7:2/4": 7} {
		if got, ok := highestCPU(list); !ok || got != want {
			t.Errorf("%q: %d, %v; want %d", list, got, ok, want)
		}
	}
	for _, bad := range []string{"", ",", "x", "1-0", "-1", "0-", "N"} {
		if got, ok := highestCPU(bad); ok {
			t.Errorf("%q: %d, want refused", bad, got)
		}
	}
}

func TestVMSizeFollowsResources(t *testing.T) {
	cfg := config.Default()
	limit := int64(300 << 20)
	quota, period := int64(150000), uint64(100000)
	for _, tc := range []struct {
		name         string
		res          *specs.LinuxResources
		cpus, memory int
	}{
		{"none", nil, 1, 256},
		{"memory limit", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}}, 1, 556},
		{"cpu quota", &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: &quota, Period: &period}}, min(2, maxVCPUs()), 256},
		{"cpuset 0-1", &specs.LinuxResources{CPU: &specs.LinuxCPU{Cpus: "0-1"}}, min(2, maxVCPUs()), 256},
		{"cpuset 0", &specs.LinuxResources{CPU: &specs.LinuxCPU{Cpus: "0"}}, 1, 256},
		{"cpuset past the host's", &specs.LinuxResources{CPU: &specs.LinuxCPU{Cpus: "0,1000"}}, maxVCPUs(), 256},
		{"not a cpuset", &specs.LinuxResources{CPU: &specs.LinuxCPU{Cpus: "1-0"}}, 1, 256},
	} {
		cpus, memory := VMSize(cfg, tc.res)
		if cpus != tc.cpus || memory != tc.memory {
			t.Errorf("%s: %d vCPUs, %d MiB; want %d, %d", tc.name, cpus, memory, tc.cpus, tc.memory)
		}
	}
}

func TestSubmountsIn(t *testing.T) {
	mountinfo := `22 1 0:21 / / rw - ext4 /dev/vda1 rw
30 22 0:30 / /srv/data rw - ext4 /dev/vdb rw
31 30 0:31 / /srv/data/cache rw - tmpfs tmpfs rw
32 31 0:32 / /srv/data/cache/deep ro - tmpfs tmpfs rw
33 30 0:33 / /srv/data/with\040space rw - tmpfs tmpfs rw
34 30 0:34 / /srv/data/cache rw - tmpfs tmpfs rw
35 22 0:35 / /srv/database rw - tmpfs tmpfs rw
`
	got := submountsIn(mountinfo, "/srv/data")
	want := []string{"cache", "cache/deep", "with space"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("submounts of /srv/data: %q, want %q", got, want)
	}
	if got := submountsIn(mountinfo, "/srv/database"); len(got) != 0 {
		t.Errorf("submounts of /srv/database: %q, want none", got)
	}
}
