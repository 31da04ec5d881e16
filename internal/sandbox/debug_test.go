package sandbox

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/husk-runtime/husk/internal/initrd"
)

// TestDebugInitrdAddsBusybox: the debug console's guest image is the
// standard one, unchanged, followed by an archive that adds the host's
// static busybox; the standard image itself has no busybox.
func TestDebugInitrdAddsBusybox(t *testing.T) {
	busybox, err := os.ReadFile(DebugBusybox)
	if err != nil {
		t.Skipf("needs %s (apt-get install busybox-static): %v", DebugBusybox, err)
	}
	var base bytes.Buffer
	if err := initrd.Write(&base, initrd.Guest([]byte("\x7fELF agent"), "husk-agent test api=2")); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	basePath := filepath.Join(dir, "base.img")
	if err := os.WriteFile(basePath, base.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := initrd.ReadFile(base.Bytes(), "bin/busybox"); err == nil {
		t.Fatal("the standard image already has a busybox")
	}
	path, err := writeDebugInitrd(dir, basePath)
	if err != nil {
		t.Fatal(err)
	}
	image, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(image, base.Bytes()) {
		t.Fatal("the debug image does not begin with the standard image")
	}
	added, err := initrd.ReadFile(image[base.Len():], "bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(added, busybox) {
		t.Errorf("the debug image's busybox (%d bytes) is not %s (%d bytes)", len(added), DebugBusybox, len(busybox))
	}
}
