package shim

import (
	"errors"
	"testing"

	"github.com/containerd/containerd/errdefs"

	"github.com/husk-runtime/husk/internal/control"
)

func TestGRPCErrorKeepsTheClass(t *testing.T) {
	for code, is := range map[string]func(error) bool{
		control.CodeNotFound:   errdefs.IsNotFound,
		control.CodeNotRunning: errdefs.IsFailedPrecondition,
		control.CodeInvalid:    errdefs.IsInvalidArgument,
		control.CodeExists:     errdefs.IsAlreadyExists,
	} {
		err := errdefs.FromGRPC(grpcError(&control.Error{Code: code, Message: "container c1"}))
		if !is(err) {
			t.Errorf("%s: class lost: %v", code, err)
		}
	}
	if grpcError(nil) != nil {
		t.Error("nil became an error")
	}
	err := errdefs.FromGRPC(grpcError(errors.New("boom")))
	if err == nil || errdefs.IsNotFound(err) {
		t.Errorf("plain error = %v", err)
	}
}
