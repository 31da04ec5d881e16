package oci

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestValidateID(t *testing.T) {
	for _, ok := range []string{"a", "my-container_1.2+x", strings.Repeat("a", 243)} {
		if err := ValidateID(ok); err != nil {
			t.Errorf("ValidateID(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "..", "../x", "a/b", "/abs", "sp ace", "nul\x00", "\xff\xfe", strings.Repeat("a", 244), strings.Repeat("a", 1024)} {
		if err := ValidateID(bad); !errors.Is(err, ErrInvalidID) {
			t.Errorf("ValidateID(%q) = %v, want ErrInvalidID", bad, err)
		}
	}
}

func writeBundle(t *testing.T, spec any) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "rootfs"), 0o755); err != nil {
		t.Fatal(err)
	}
	var data []byte
	switch s := spec.(type) {
	case string:
		data = []byte(s)
	default:
		var err error
		if data, err = json.Marshal(s); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestLoadBundleDefaultSpec(t *testing.T) {
	dir := writeBundle(t, DefaultSpec())
	b, err := LoadBundle(dir)
	if err != nil {
		t.Fatal(err)
	}
	if b.Rootfs != filepath.Join(dir, "rootfs") || b.Spec.Process.Args[0] != "sh" {
		t.Fatalf("bundle = %+v", b)
	}
}

func TestLoadBundleRejectsBadInput(t *testing.T) {
	noArgs := DefaultSpec()
	noArgs.Process.Args = nil
	relCwd := DefaultSpec()
	relCwd.Process.Cwd = "tmp"
	missingRoot := DefaultSpec()
	missingRoot.Root.Path = "nowhere"
	joinsPID := DefaultSpec()
	joinsPID.Linux.Namespaces[0] = specs.LinuxNamespace{Type: specs.PIDNamespace, Path: "/proc/1/ns/pid"}
	for name, tc := range map[string]struct {
		spec any
		want string
	}{
		"malformed":    {"{not json", "malformed JSON"},
		"no version":   {`{"root":{"path":"rootfs"}}`, "ociVersion"},
		"no args":      {noArgs, "process.args"},
		"relative cwd": {relCwd, "process.cwd"},
		"missing root": {missingRoot, "root.path"},
		"joins pid ns": {joinsPID, "not supported"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := LoadBundle(writeBundle(t, tc.spec))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want mention of %q", err, tc.want)
			}
		})
	}
	if _, err := LoadBundle(filepath.Join(t.TempDir(), "absent")); err == nil {
		t.Fatal("missing bundle: no error")
	}
}

func TestGuestSpecRewritesHostPaths(t *testing.T) {
	spec := DefaultSpec()
	spec.Hooks = &specs.Hooks{CreateRuntime: []specs.Hook{{Path: "/usr/bin/hook"}}}
	spec.Mounts = append(spec.Mounts, specs.Mount{Destination: "/data", Type: "bind", Source: "/srv/data", Options: []string{"rbind", "ro"}})
	spec.Linux.Namespaces[1] = specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: "/var/run/netns/x"}
	last := len(spec.Mounts) - 1

	if _, err := GuestSpec(spec, GuestPaths{Root: "/run/husk/shared/c/rootfs"}, nil); err == nil {
		t.Fatal("bind mount without a guest source: no error")
	}
	data, err := GuestSpec(spec, GuestPaths{Root: "/run/husk/shared/c/rootfs", Sources: map[int]string{last: "/run/husk/shared/c/mounts/0"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got specs.Spec
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	if got.Root.Path != "/run/husk/shared/c/rootfs" || !got.Root.Readonly {
		t.Errorf("root = %+v", got.Root)
	}
	if got.Hooks != nil {
		t.Errorf("hooks kept: %+v", got.Hooks)
	}
	if got.Mounts[last].Source != "/run/husk/shared/c/mounts/0" || got.Mounts[0].Source != "proc" {
		t.Errorf("mounts = %+v", got.Mounts)
	}
	for _, ns := range got.Linux.Namespaces {
		if ns.Path != "" {
			t.Errorf("namespace path kept: %+v", ns)
		}
	}
	// The caller's spec is not modified.
	if spec.Root.Path != "rootfs" || spec.Mounts[last].Source != "/srv/data" || spec.Hooks == nil {
		t.Error("GuestSpec modified its input")
	}
}

func TestGuestSpecDropsHostLSMAndConvertsSystemdCgroups(t *testing.T) {
	spec := DefaultSpec()
	spec.Process.ApparmorProfile = "docker-default"
	spec.Process.SelinuxLabel = "system_u:system_r:container_t:s0"
	spec.Linux.CgroupsPath = "system.slice:docker:abc"
	data, err := GuestSpec(spec, GuestPaths{Root: "/r"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got specs.Spec
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	if got.Process.ApparmorProfile != "" || got.Process.SelinuxLabel != "" {
		t.Errorf("LSM labels kept: %+v", got.Process)
	}
	if got.Linux.CgroupsPath != "/system.slice/docker-abc" {
		t.Errorf("cgroups path = %q", got.Linux.CgroupsPath)
	}
	if spec.Process.ApparmorProfile != "docker-default" {
		t.Error("input modified")
	}
	if guestCgroupsPath("/docker/abc") != "/docker/abc" {
		t.Error("plain path changed")
	}
}

func TestGuestSpecJoinsNamespacesInTheGuest(t *testing.T) {
	spec := DefaultSpec()
	spec.Linux.Namespaces = []specs.LinuxNamespace{
		{Type: specs.PIDNamespace, Path: "/proc/4242/ns/pid"},
		{Type: specs.IPCNamespace, Path: "/proc/4242/ns/ipc"},
		{Type: specs.MountNamespace},
	}
	data, err := GuestSpec(spec, GuestPaths{Root: "/r"}, map[specs.LinuxNamespaceType]string{specs.IPCNamespace: "/proc/7/ns/ipc"})
	if err != nil {
		t.Fatal(err)
	}
	var got specs.Spec
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	want := map[specs.LinuxNamespaceType]string{specs.PIDNamespace: "", specs.IPCNamespace: "/proc/7/ns/ipc", specs.MountNamespace: ""}
	for _, ns := range got.Linux.Namespaces {
		if ns.Path != want[ns.Type] {
			t.Errorf("%s namespace path = %q, want %q", ns.Type, ns.Path, want[ns.Type])
		}
	}
	if len(got.Linux.Namespaces) != 3 {
		t.Errorf("namespaces = %+v", got.Linux.Namespaces)
	}
}

// A recursive read-only bind mount's host submounts are mounted again in
// the guest, after it and parents first, so that "ro" stays on the top
// mount as under runc.
func TestGuestSpecMountsSubmountsAgain(t *testing.T) {
	spec := DefaultSpec()
	spec.Mounts = append(spec.Mounts,
		specs.Mount{Destination: "/data", Type: "bind", Source: "/srv/data", Options: []string{"rbind", "ro"}},
		specs.Mount{Destination: "/after", Type: "tmpfs", Source: "tmpfs"})
	i := len(spec.Mounts) - 2
	data, err := GuestSpec(spec, GuestPaths{Root: "/r", Sources: map[int]string{i: "/s/mounts/0"},
		Submounts: map[int][]string{i: {"cache", "cache/deep"}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got specs.Spec
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	var dests []string
	for _, m := range got.Mounts[i:] {
		dests = append(dests, m.Destination+"<"+m.Source)
	}
	want := "/data</s/mounts/0 /data/cache</s/mounts/0/cache /data/cache/deep</s/mounts/0/cache/deep /after<tmpfs"
	if strings.Join(dests, " ") != want {
		t.Errorf("guest mounts %q, want %q", strings.Join(dests, " "), want)
	}
	if sub := got.Mounts[i+1]; sub.Type != "bind" || len(sub.Options) != 1 || sub.Options[0] != "bind" {
		t.Errorf("a submount's guest mount: %+v, want a plain bind", sub)
	}
}
