// Package shim is husk's containerd front door: containerd-shim-husk-v2,
// which speaks containerd's shim v2 Task API over ttrpc. One shim process
// serves one sandbox — one VM — and every container of a Kubernetes pod
// runs in it: `start` hands the pod's later containers the address of the
// shim that already serves the pod.
package shim
