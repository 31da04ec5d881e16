package shim

import (
	"errors"
	"fmt"

	"github.com/containerd/containerd/errdefs"

	"github.com/husk-runtime/husk/internal/control"
)

// grpcError gives err the errdefs class containerd tells errors apart by,
// as the status code ttrpc carries.
func grpcError(err error) error {
	if err == nil {
		return nil
	}
	var ce *control.Error
	if errors.As(err, &ce) {
		var class error = errdefs.ErrUnknown
		switch ce.Code {
		case control.CodeNotFound:
			class = errdefs.ErrNotFound
		case control.CodeNotRunning:
			class = errdefs.ErrFailedPrecondition
		case control.CodeInvalid:
			class = errdefs.ErrInvalidArgument
		case control.CodeExists:
			class = errdefs.ErrAlreadyExists
		}
		err = fmt.Errorf("%s: %w", ce.Message, class)
	}
	return errdefs.ToGRPC(err)
}

// isNotRunning reports whether err says the process has exited.
func isNotRunning(err error) bool {
	return control.IsCode(err, control.CodeNotRunning)
}
