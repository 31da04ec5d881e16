package shim

import (
	"fmt"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/husk-runtime/husk/internal/sandbox"
)

// The annotations the CRI plugin puts on a pod's containers.
const (
	annotationContainerType = "io.kubernetes.cri.container-type"
	annotationSandboxID     = "io.kubernetes.cri.sandbox-id"
	containerTypeSandbox    = "sandbox"
	containerTypeContainer  = "container"
)

// podRole says where a container belongs: sandboxID is the id of the
// sandbox (VM) it runs in, which is its own id unless it is a pod's
// non-sandbox container.
type podRole struct {
	sandboxID string
	// inPod: the container joins a sandbox that another container made.
	inPod bool
}

func roleOf(id string, annotations map[string]string) podRole {
	if annotations[annotationContainerType] == containerTypeContainer {
		if sb := annotations[annotationSandboxID]; sb != "" && sb != id {
			return podRole{sandboxID: sb, inPod: true}
		}
	}
	return podRole{sandboxID: id}
}

// podNamespaces finds the namespaces a pod's container shares with its
// sandbox container: on the host they are paths into the sandbox
// container's process (/proc/PID/ns/TYPE, PID being the one this shim
// reported for it) or, for the network, also the pod's namespace file. Those
// paths are cleared in spec and returned as namespaces to join in the guest.
// Other paths are left for validation to refuse.
func podNamespaces(spec *specs.Spec, sandboxContainer string, sandboxPID int, sandboxNetNS string) map[specs.LinuxNamespaceType]string {
	if spec.Linux == nil {
		return nil
	}
	join := map[specs.LinuxNamespaceType]string{}
	for i, ns := range spec.Linux.Namespaces {
		if ns.Path == "" {
			continue
		}
		file, ok := sandbox.NamespaceFile(ns.Type)
		shared := ok && ns.Path == fmt.Sprintf("/proc/%d/ns/%s", sandboxPID, file)
		if ns.Type == specs.NetworkNamespace && sandboxNetNS != "" && ns.Path == sandboxNetNS {
			shared = true
		}
		if shared {
			join[ns.Type] = sandboxContainer
			spec.Linux.Namespaces[i].Path = ""
		}
	}
	return join
}
