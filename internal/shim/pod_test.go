package shim

import (
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestRoleOf(t *testing.T) {
	for _, tc := range []struct {
		name        string
		annotations map[string]string
		want        podRole
	}{
		{"plain container", nil, podRole{sandboxID: "c1"}},
		{"pod sandbox", map[string]string{annotationContainerType: containerTypeSandbox, annotationSandboxID: "c1"}, podRole{sandboxID: "c1"}},
		{"pod container", map[string]string{annotationContainerType: containerTypeContainer, annotationSandboxID: "pod"}, podRole{sandboxID: "pod", inPod: true}},
		{"container without sandbox id", map[string]string{annotationContainerType: containerTypeContainer}, podRole{sandboxID: "c1"}},
	} {
		if got := roleOf("c1", tc.annotations); got != tc.want {
			t.Errorf("%s: roleOf = %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func TestPodNamespaces(t *testing.T) {
	spec := &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{
		{Type: specs.PIDNamespace, Path: "/proc/100/ns/pid"},
		{Type: specs.IPCNamespace, Path: "/proc/100/ns/ipc"},
		{Type: specs.UTSNamespace, Path: "/proc/999/ns/uts"}, // some other process: not the pod's
		{Type: specs.NetworkNamespace, Path: "/var/run/netns/cni-1"},
		{Type: specs.MountNamespace},
	}}}
	join := podNamespaces(spec, "pod", 100, "/var/run/netns/cni-1")
	want := map[specs.LinuxNamespaceType]string{specs.PIDNamespace: "pod", specs.IPCNamespace: "pod", specs.NetworkNamespace: "pod"}
	if len(join) != len(want) {
		t.Fatalf("join = %v, want %v", join, want)
	}
	for typ, id := range want {
		if join[typ] != id {
			t.Errorf("join[%s] = %q, want %q", typ, join[typ], id)
		}
	}
	for _, ns := range spec.Linux.Namespaces {
		kept := ns.Type == specs.UTSNamespace
		if (ns.Path != "") != kept {
			t.Errorf("%s: path %q", ns.Type, ns.Path)
		}
	}
	viaProc := &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace, Path: "/proc/100/ns/net"}}}}
	if j := podNamespaces(viaProc, "pod", 100, "/var/run/netns/cni-1"); j[specs.NetworkNamespace] != "pod" {
		t.Errorf("the sandbox's network by its /proc path not joined: %v", j)
	}
	other := &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace, Path: "/var/run/netns/x"}}}}
	if j := podNamespaces(other, "pod", 100, "/var/run/netns/cni-1"); len(j) != 0 {
		t.Errorf("another pod's network joined: %v", j)
	}
}
