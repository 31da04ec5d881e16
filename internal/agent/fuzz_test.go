package agent

import (
	"encoding/json"
	"path/filepath"
	"testing"

	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// FuzzProcessDecoding feeds the agent's decoding of an exec request's
// process (what the host sends in ExecProcess) arbitrary JSON.
func FuzzProcessDecoding(f *testing.F) {
	f.Add([]byte(`{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0},"rlimits":[{"type":"RLIMIT_NOFILE","hard":1,"soft":1}]}`))
	f.Add([]byte(`{"args":[],"rlimits":[{"type":"RLIMIT_BOGUS"}]}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var p specs.Process
		if json.Unmarshal(data, &p) != nil {
			return
		}
		lp, err := libcontainerProcess(&p)
		if err == nil && len(lp.Args) == 0 {
			t.Fatal("accepted a process without args")
		}
	})
}

// FuzzParseCmdline: the kernel command line is the agent's first input.
func FuzzParseCmdline(f *testing.F) {
	f.Add("console=ttyS0 husk.msize=524288 husk.debug=1")
	f.Fuzz(func(t *testing.T, cmdline string) {
		p, err := ParseCmdline(cmdline)
		if err == nil && p.MSize < 4096 {
			t.Fatalf("accepted msize %d", p.MSize)
		}
	})
}

// FuzzContainerConfig feeds the agent's conversion of a CreateContainer
// request's spec (JSON from the host) to libcontainer's configuration
// arbitrary input: it must refuse or convert, never panic.
func FuzzContainerConfig(f *testing.F) {
	f.Add([]byte(`{"ociVersion":"1.2.0","process":{"args":["sh"],"cwd":"/"},"root":{"path":"/run/c/rootfs"},"linux":{"namespaces":[{"type":"pid"},{"type":"mount"}],"resources":{"memory":{"limit":1048576}},"maskedPaths":["/proc/kcore"]},"mounts":[{"destination":"/proc","type":"proc","source":"proc"}]}`))
	f.Add([]byte(`{"root":{"path":"r"},"linux":{"devices":[{"path":"/dev/x","type":"c","major":1,"minor":3}],"seccomp":{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW"}]}}}`))
	f.Add([]byte(`{"root":null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var spec specs.Spec
		if json.Unmarshal(data, &spec) != nil {
			return
		}
		// A spec that joins the agent's own network namespace has its
		// net.* sysctls written there, which here is the host's.
		if spec.Linux != nil {
			for i := range spec.Linux.Namespaces {
				if spec.Linux.Namespaces[i].Type == specs.NetworkNamespace {
					spec.Linux.Namespaces[i].Path = ""
				}
			}
		}
		cfg, err := newContainerConfig("fuzz", &spec)
		if err == nil && !filepath.IsAbs(cfg.Rootfs) {
			t.Fatalf("accepted a spec with rootfs %q", cfg.Rootfs)
		}
	})
}

// FuzzUpdateResources feeds an UpdateContainer request's resources (and the
// container's own) arbitrary JSON: the merge keeps every limit the update
// sets, and the cgroup conversion refuses or converts, never panics.
func FuzzUpdateResources(f *testing.F) {
	f.Add([]byte(`{"memory":{"limit":1048576},"pids":{"limit":10}}`), []byte(`{"memory":{"limit":2097152},"cpu":{"quota":50000,"period":100000}}`))
	f.Add([]byte(`null`), []byte(`{"unified":{"memory.high":"1M"}}`))
	f.Fuzz(func(t *testing.T, baseJSON, updateJSON []byte) {
		var base, update specs.LinuxResources
		if json.Unmarshal(baseJSON, &base) != nil || json.Unmarshal(updateJSON, &update) != nil {
			return
		}
		merged := mergeResources(&base, &update)
		if update.Memory != nil && update.Memory.Limit != nil && (merged.Memory == nil || merged.Memory.Limit != update.Memory.Limit) {
			t.Fatal("the update's memory limit was lost")
		}
		if update.Pids != nil && merged.Pids != update.Pids {
			t.Fatal("the update's pids limit was lost")
		}
		if update.Memory == nil && base.Memory != nil && merged.Memory != base.Memory {
			t.Fatal("a memory limit the update does not set changed")
		}
		spec := &specs.Spec{Root: &specs.Root{Path: "/r"}, Linux: &specs.Linux{Resources: merged}}
		_, _ = specconv.CreateCgroupConfig(&specconv.CreateOpts{CgroupName: "fuzz", Spec: spec}, nil)
	})
}
