package oci

import (
	"fmt"
	"os"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestNetNSHolder(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root: the holder makes a network namespace")
	}
	own, err := NamespaceOf("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	newNS := &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace}}}}
	holder, err := StartNetNSHolder(newNS)
	if err != nil {
		t.Fatal(err)
	}
	held := fmt.Sprintf("/proc/%d/ns/net", holder.PID)
	if ns, err := NamespaceOf(held); err != nil || ns == own {
		t.Errorf("a spec asking for a new namespace: the holder's is %v (%v), this process's %v", ns, err, own)
	}

	// A spec naming that namespace gets a holder in it.
	named := &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace, Path: held}}}}
	second, err := StartNetNSHolder(named)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := NamespaceOf(held)
	b, err := NamespaceOf(fmt.Sprintf("/proc/%d/ns/net", second.PID))
	if err != nil || a != b {
		t.Errorf("a spec naming %s: the holder is in %v (%v), want %v", held, b, err, a)
	}
	StopNetNSHolder(second)
	StopNetNSHolder(holder)
	if holder.Alive() || second.Alive() {
		t.Error("a holder outlived StopNetNSHolder")
	}

	// A namespace that does not exist is an error naming it.
	missing := &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace, Path: "/nonexistent/netns"}}}}
	if _, err := StartNetNSHolder(missing); err == nil {
		t.Error("a holder for a namespace that does not exist started")
	}
	if !AsksNewNetNS(newNS) || AsksNewNetNS(named) || AsksNewNetNS(&specs.Spec{}) {
		t.Error("AsksNewNetNS")
	}
}
