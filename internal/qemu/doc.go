// Package qemu builds QEMU microvm command lines as data and talks QMP.
//
// A Config and the small Device types in it each return their own argv
// fragment, so a command line can be checked by table and golden-file tests
// without starting a VM. QMP is the client half of QEMU's machine protocol
// over a connection the caller has already accepted: QEMU is started as the
// client of the caller's sockets so nothing QEMU or the guest writes early is
// lost. ChooseAccel picks KVM or TCG for the host and says why.
package qemu
