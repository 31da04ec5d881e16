// Package network connects a sandbox's VM to the network namespace that the
// container's caller made (Docker, CNI, the CRI, or an administrator with
// `ip netns`): for each interface in it, a tap device in the same namespace
// is joined to the interface with tc ingress redirects in both directions,
// and QEMU gets the tap. The guest then recreates the interface (name, MAC,
// MTU, addresses) and the namespace's routes, so the container sees the
// network it would see under runc, behind the VM boundary.
package network
