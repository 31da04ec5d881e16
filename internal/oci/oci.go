// Package oci reads and checks OCI bundles, writes the default spec (husk
// spec), and rewrites a container's spec for the guest.
package oci

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"unicode/utf8"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// ErrInvalidID is returned for a container id that cannot name a directory safely.
var ErrInvalidID = errors.New("invalid container id")

var idPattern = regexp.MustCompile(`^[\w+\-.]+$`)

// maxIDLength keeps ids usable as file names: an id names its state
// directory and, with this suffix, its kept console log, and a file name
// has at most 255 bytes (NAME_MAX).
const maxIDLength = 255 - len(".console.log")

// ValidateID accepts the ids runc accepts: letters, digits, '_', '+', '-', '.',
// never "." or "..".
func ValidateID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("%w: empty", ErrInvalidID)
	case len(id) > maxIDLength:
		return fmt.Errorf("%w: longer than %d bytes", ErrInvalidID, maxIDLength)
	case !utf8.ValidString(id) || !idPattern.MatchString(id) || id == "." || id == "..":
		return fmt.Errorf("%w: %q", ErrInvalidID, id)
	}
	return nil
}

// Bundle is a bundle directory with its parsed config.json.
type Bundle struct {
	Dir    string // absolute
	Spec   *specs.Spec
	Rootfs string // absolute host path of root.path
}

// LoadBundle reads and validates dir/config.json.
func LoadBundle(dir string) (*Bundle, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("bundle %s: %w", dir, err)
	}
	if fi, err := os.Stat(abs); err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("bundle %s: not a directory", abs)
	}
	data, err := os.ReadFile(filepath.Join(abs, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	spec, err := ParseSpec(data)
	if err != nil {
		return nil, fmt.Errorf("bundle %s: config.json: %w", abs, err)
	}
	return bundleOf(abs, spec)
}

// ReadSpec decodes dir/config.json without checking it: for callers that
// need a field or two before the bundle is loaded (annotations), or that
// adjust the spec before NewBundle checks it.
func ReadSpec(dir string) (*specs.Spec, error) {
	data, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		return nil, fmt.Errorf("bundle %s: config.json: malformed JSON: %w", dir, err)
	}
	return &spec, nil
}

// NewBundle checks a spec that the caller read (and perhaps adjusted) from
// the bundle at dir, and finds its rootfs there.
func NewBundle(dir string, spec *specs.Spec) (*Bundle, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("bundle %s: %w", dir, err)
	}
	if err := Validate(spec); err != nil {
		return nil, fmt.Errorf("bundle %s: config.json: %w", abs, err)
	}
	return bundleOf(abs, spec)
}

func bundleOf(abs string, spec *specs.Spec) (*Bundle, error) {
	rootfs := spec.Root.Path
	if !filepath.IsAbs(rootfs) {
		rootfs = filepath.Join(abs, rootfs)
	}
	if fi, err := os.Stat(rootfs); err != nil {
		return nil, fmt.Errorf("bundle %s: root.path: %w", abs, err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("bundle %s: root.path %s is not a directory", abs, rootfs)
	}
	return &Bundle{Dir: abs, Spec: spec, Rootfs: rootfs}, nil
}

// ParseSpec decodes config.json and checks what husk needs of it.
func ParseSpec(data []byte) (*specs.Spec, error) {
	var spec specs.Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		return nil, fmt.Errorf("malformed JSON: %w", err)
	}
	if err := Validate(&spec); err != nil {
		return nil, err
	}
	return &spec, nil
}

// Validate checks the fields without which no container can be made.
func Validate(spec *specs.Spec) error {
	switch {
	case spec.Version == "":
		return errors.New("ociVersion must be set")
	case spec.Root == nil || spec.Root.Path == "":
		return errors.New("root.path must be set")
	case spec.Process == nil:
		return errors.New("process must be set")
	case len(spec.Process.Args) == 0:
		return errors.New("process.args must not be empty")
	case spec.Process.Cwd == "" || !filepath.IsAbs(spec.Process.Cwd):
		return fmt.Errorf("process.cwd %q must be an absolute path", spec.Process.Cwd)
	case spec.Linux == nil:
		return errors.New("linux must be set")
	}
	for i, m := range spec.Mounts {
		if !filepath.IsAbs(m.Destination) {
			return fmt.Errorf("mounts[%d].destination %q must be an absolute path", i, m.Destination)
		}
	}
	// linux.devices need no check: the guest's libcontainer makes the
	// nodes, whose numbers name the guest kernel's devices, never the
	// host's (a privileged spec lists every host device; inside the VM
	// those that the guest lacks open as no device).
	if err := validateHooks(spec.Hooks); err != nil {
		return err
	}
	for _, ns := range spec.Linux.Namespaces {
		// Joining another container's namespace means joining its VM,
		// which husk cannot do yet; a new namespace instead would quietly
		// break what the caller asked for. A network namespace path is the
		// exception: the caller (Docker, CNI) made it for this container,
		// and the guest gives the container a network namespace of its own.
		if ns.Path != "" && ns.Type != specs.NetworkNamespace {
			return fmt.Errorf("linux.namespaces: joining the %s namespace at %s is not supported", ns.Type, ns.Path)
		}
	}
	return nil
}

// validateHooks refuses the hooks husk cannot run as the OCI spec says:
// createContainer and startContainer hooks run in the container's
// namespaces, which are inside the VM, away from the host's programs.
func validateHooks(h *specs.Hooks) error {
	if h == nil {
		return nil
	}
	if len(h.CreateContainer) > 0 {
		return errors.New("hooks.createContainer: not supported: these hooks run in the container's namespaces, which are inside husk's VM, where the host's programs are not")
	}
	if len(h.StartContainer) > 0 {
		return errors.New("hooks.startContainer: not supported: these hooks run in the container's namespaces, which are inside husk's VM, where the host's programs are not")
	}
	for _, list := range []struct {
		name  string
		hooks []specs.Hook
	}{{"prestart", Hooks(&specs.Spec{Hooks: h}, Prestart)}, {"createRuntime", h.CreateRuntime}, {"poststart", h.Poststart}, {"poststop", h.Poststop}} {
		for i, hook := range list.hooks {
			if !filepath.IsAbs(hook.Path) {
				return fmt.Errorf("hooks.%s[%d].path %q must be an absolute path", list.name, i, hook.Path)
			}
			if hook.Timeout != nil && *hook.Timeout <= 0 {
				return fmt.Errorf("hooks.%s[%d].timeout %d must be positive", list.name, i, *hook.Timeout)
			}
		}
	}
	return nil
}

// NetworkNamespacePath is the path of the network namespace a spec joins,
// "" if it makes a new one or has none.
func NetworkNamespacePath(spec *specs.Spec) string {
	if spec.Linux == nil {
		return ""
	}
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace {
			return ns.Path
		}
	}
	return ""
}

// IsBind says whether a mount takes its source from the host's filesystem.
func IsBind(m specs.Mount) bool {
	if m.Type == "bind" {
		return true
	}
	for _, o := range m.Options {
		if o == "bind" || o == "rbind" {
			return true
		}
	}
	return false
}

// GuestPaths are where a container's files are in the guest's share.
type GuestPaths struct {
	Root string
	// Sources[i] is spec.Mounts[i]'s source in the guest, for every bind
	// mount.
	Sources map[int]string
	// Submounts[i] lists the host's mounts below a recursive bind mount's
	// source that keep their own flags (paths relative to the source,
	// parents first): the guest mounts each again where it is, so that
	// the bind mount's own read-only flag does not reach them, as runc's
	// "ro" does not ("rro" does).
	Submounts map[int][]string
}

// GuestSpec returns the spec as the guest must see it: the root and every
// bind mount's source replaced by their paths in the shared directory
// (paths), with their submounts, host-side hooks removed, and namespace
// paths (host paths, meaningless in the guest) replaced by the guest paths
// in join, or dropped so that the guest makes new namespaces.
func GuestSpec(spec *specs.Spec, paths GuestPaths, join map[specs.LinuxNamespaceType]string) ([]byte, error) {
	out := *spec
	root := *spec.Root
	root.Path = paths.Root
	out.Root = &root
	out.Hooks = nil
	if spec.Process != nil {
		// The host's LSM profiles mean nothing to the guest kernel, which
		// has no AppArmor or SELinux; the VM is the boundary they stood for.
		proc := *spec.Process
		proc.ApparmorProfile = ""
		proc.SelinuxLabel = ""
		out.Process = &proc
	}
	out.Mounts = make([]specs.Mount, 0, len(spec.Mounts))
	for i, m := range spec.Mounts {
		if !IsBind(m) {
			out.Mounts = append(out.Mounts, m)
			continue
		}
		src, ok := paths.Sources[i]
		if !ok {
			return nil, fmt.Errorf("mounts[%d] (%s): no guest source", i, m.Destination)
		}
		m.Source = src
		out.Mounts = append(out.Mounts, m)
		for _, rel := range paths.Submounts[i] {
			out.Mounts = append(out.Mounts, specs.Mount{
				Destination: filepath.Join(m.Destination, rel), Type: "bind",
				Source: filepath.Join(src, rel), Options: []string{"bind"},
			})
		}
	}
	if spec.Linux != nil {
		linux := *spec.Linux
		linux.MountLabel = ""
		linux.CgroupsPath = guestCgroupsPath(spec.Linux.CgroupsPath)
		linux.Namespaces = nil
		for _, ns := range spec.Linux.Namespaces {
			ns.Path = join[ns.Type]
			linux.Namespaces = append(linux.Namespaces, ns)
		}
		out.Linux = &linux
	}
	return json.Marshal(&out)
}

// guestCgroupsPath turns a systemd-style cgroups path ("slice:prefix:name",
// given with --systemd-cgroup) into the plain path the guest's cgroupfs
// manager takes; a plain path stays as it is.
func guestCgroupsPath(p string) string {
	parts := strings.Split(p, ":")
	if len(parts) != 3 {
		return p
	}
	slice, prefix, name := parts[0], parts[1], parts[2]
	if slice == "" {
		slice = "system.slice"
	}
	if prefix != "" {
		name = prefix + "-" + name
	}
	return "/" + slice + "/" + name
}
