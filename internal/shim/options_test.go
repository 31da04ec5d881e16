package shim

import (
	"testing"

	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/errdefs"
	runtimeoptions "github.com/containerd/containerd/pkg/runtimeoptions/v1"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/husk-runtime/husk/internal/config"
)

func TestConfigPathFromRuntimeOptions(t *testing.T) {
	t.Setenv(config.EnvPath, "")
	marshal := func(v any) typeurl.Any {
		a, err := typeurl.MarshalAny(v)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	for _, tc := range []struct {
		name     string
		options  typeurl.Any
		path     string
		explicit bool
	}{
		{"none", nil, config.DefaultPath, false},
		{"a nil request field", (*anypb.Any)(nil), config.DefaultPath, false},
		{"no ConfigPath", marshal(&runtimeoptions.Options{}), config.DefaultPath, false},
		{"ConfigPath", marshal(&runtimeoptions.Options{ConfigPath: "/etc/husk/slow.toml"}), "/etc/husk/slow.toml", true},
	} {
		path, explicit, err := configPath(tc.options)
		if err != nil || path != tc.path || explicit != tc.explicit {
			t.Errorf("%s: got %q, %v, %v; want %q, %v", tc.name, path, explicit, err, tc.path, tc.explicit)
		}
	}
	// runc's options mean nothing to husk: refused, not ignored.
	if _, _, err := configPath(marshal(&runcoptions.Options{BinaryName: "runc"})); !errdefs.IsInvalidArgument(err) {
		t.Errorf("runc's options: got %v, want an invalid argument", err)
	}
}
