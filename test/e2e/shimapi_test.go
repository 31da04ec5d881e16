package e2e

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/protobuf"
	// Registers the runtime spec's types with typeurl, as in containerd.
	_ "github.com/containerd/containerd/runtime"
	"github.com/containerd/containerd/runtime/v2/shim"
	"github.com/containerd/ttrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// TestShimErrorClasses: the shim's Task API, dialled as containerd dials
// it, names its processes on Connect and answers unknown ids, a second create of a running container, an
// unsupported checkpoint and an exec into a stopped task with errors of
// the errdefs class containerd acts on. ctr cannot send most of these: its
// own metadata store refuses them first.
func TestShimErrorClasses(t *testing.T) {
	c := newCtrEnv(t)
	id := c.id()
	c.mustRun(append(runFlags, "-d", ctrImage, id, "sleep", "600")...)
	defer c.remove(id)
	c.waitStatus(id, "RUNNING")

	bundle := filepath.Join("/run/containerd/io.containerd.runtime.v2.task", c.namespace, id)
	address, err := shim.ReadAddress(filepath.Join(bundle, "address"))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := shim.AnonDialer(address, 5*time.Second)
	if err != nil {
		t.Fatalf("dialling the shim at %s: %v", address, err)
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()
	tasks := taskapi.NewTaskClient(client)
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), c.namespace), time.Minute)
	defer cancel()

	// Connect names the shim and the task's process: its VM's QEMU.
	conn2, err := tasks.Connect(ctx, &taskapi.ConnectRequest{ID: id})
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	if shimPID, qemuPID := findProcess(t, "containerd-shim-husk-v2", id), findProcess(t, "qemu-system", id); int(conn2.ShimPid) != shimPID || int(conn2.TaskPid) != qemuPID {
		t.Errorf("connect: shim %d, task %d; want the shim %d and QEMU %d", conn2.ShimPid, conn2.TaskPid, shimPID, qemuPID)
	}

	execSpec, err := protobuf.MarshalAnyToProto(&specs.Process{Args: []string{"true"}, Cwd: "/"})
	if err != nil {
		t.Fatal(err)
	}
	check := func(what string, err error, class func(error) bool, want string) {
		t.Helper()
		if err = errdefs.FromGRPC(err); !class(err) {
			t.Errorf("%s: got %v, want an error of class %s", what, err, want)
		}
	}
	_, err = tasks.State(ctx, &taskapi.StateRequest{ID: "no-such-task"})
	check("state of an unknown id", err, errdefs.IsNotFound, "not found")
	_, err = tasks.Kill(ctx, &taskapi.KillRequest{ID: "no-such-task", Signal: 9})
	check("kill of an unknown id", err, errdefs.IsNotFound, "not found")
	_, err = tasks.Exec(ctx, &taskapi.ExecProcessRequest{ID: "no-such-task", ExecID: "e1", Spec: execSpec})
	check("exec into an unknown id", err, errdefs.IsNotFound, "not found")
	_, err = tasks.Create(ctx, &taskapi.CreateTaskRequest{ID: id, Bundle: bundle})
	check("a second create", err, errdefs.IsAlreadyExists, "already exists")
	_, err = tasks.Checkpoint(ctx, &taskapi.CheckpointTaskRequest{ID: id, Path: t.TempDir()})
	check("checkpoint", err, errdefs.IsNotImplemented, "not implemented")
	_, err = tasks.Delete(ctx, &taskapi.DeleteRequest{ID: id})
	check("delete of a running task", err, errdefs.IsFailedPrecondition, "failed precondition")

	c.mustRun("task", "kill", "-s", "SIGKILL", id)
	c.waitStatus(id, "STOPPED")
	_, err = tasks.Exec(ctx, &taskapi.ExecProcessRequest{ID: id, ExecID: "late", Spec: execSpec})
	check("exec into a stopped task", err, errdefs.IsFailedPrecondition, "failed precondition")
	// The shim still serves after all of it.
	if st, err := tasks.State(ctx, &taskapi.StateRequest{ID: id}); err != nil || st.ExitStatus != 137 {
		t.Errorf("state after the bad requests: %+v, %v; want exit status 137", st, err)
	}
}
