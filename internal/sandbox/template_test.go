package sandbox

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/husk-runtime/husk/internal/config"
	"github.com/husk-runtime/husk/internal/qemu"
)

// templateOpts is a sandbox's VM on real files, which the fingerprint reads.
func templateOpts(t *testing.T) VMOptions {
	dir := t.TempDir()
	cfg := config.Default()
	cfg.Hypervisor.Path = "/bin/sh"
	for _, f := range []*string{&cfg.Hypervisor.Kernel, &cfg.Hypervisor.Initrd} {
		*f = filepath.Join(dir, filepath.Base(*f))
		if err := os.WriteFile(*f, []byte("image"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return VMOptions{ID: "c1", Dir: "/run/husk/c1", Config: cfg}
}

func TestTemplateMisfit(t *testing.T) {
	opts := templateOpts(t)
	if why := templateMisfit(opts); why != "" {
		t.Errorf("a plain sandbox does not fit a template: %s", why)
	}
	for name, edit := range map[string]func(o *VMOptions){
		"template off": func(o *VMOptions) { c := *o.Config; c.Hypervisor.Template = false; o.Config = &c },
		"macvtap": func(o *VMOptions) {
			c := *o.Config
			c.Network.Mode = config.NetworkMacvtap
			o.Config = &c
			o.Taps = []Tap{{MAC: "02:00:00:00:00:01"}}
		},
		"debug console": func(o *VMOptions) { o.Initrd = "/run/husk/c1/debug-initrd.img" },
	} {
		o := opts
		edit(&o)
		if why := templateMisfit(o); why == "" {
			t.Errorf("%s: fits a template", name)
		}
	}
}

// The fingerprint follows everything that shapes the saved guest, and
// nothing that is the sandbox's own.
func TestTemplateFingerprint(t *testing.T) {
	opts := templateOpts(t)
	base, err := TemplateFingerprint(opts, qemu.AccelTCG)
	if err != nil {
		t.Fatal(err)
	}
	other := opts
	other.ID, other.Dir = "c2", "/run/husk/c2"
	if fp, _ := TemplateFingerprint(other, qemu.AccelTCG); fp != base {
		t.Errorf("another sandbox's id and directory changed the fingerprint: %s, %s", fp, base)
	}
	// A network device's address is the sandbox's own: the template's
	// devices have placeholders.
	withNIC := func(mac string) VMOptions {
		o := opts
		o.Taps = []Tap{{MAC: mac}}
		return o
	}
	a, _ := TemplateFingerprint(withNIC("02:00:00:00:00:01"), qemu.AccelTCG)
	b, _ := TemplateFingerprint(withNIC("02:00:00:00:00:02"), qemu.AccelTCG)
	if a != b || a == base {
		t.Errorf("fingerprints with a network device %s and %s, without %s: want the two equal, and other than the third", a, b, base)
	}
	changes := map[string]func(o *VMOptions){
		"memory":      func(o *VMOptions) { o.MemoryMiB = 512 },
		"vcpus":       func(o *VMOptions) { o.CPUs = 2 },
		"kernel args": func(o *VMOptions) { c := *o.Config; c.Runtime.Debug = true; o.Config = &c },
		"msize":       func(o *VMOptions) { c := *o.Config; c.SharedFS.MSize = 65536; o.Config = &c },
		"initrd file": func(o *VMOptions) {
			later := time.Now().Add(time.Hour)
			_ = os.Chtimes(o.Config.Hypervisor.Initrd, later, later)
		},
	}
	for name, change := range changes {
		o := opts
		change(&o)
		fp, err := TemplateFingerprint(o, qemu.AccelTCG)
		if err != nil {
			t.Fatal(err)
		}
		if fp == base {
			t.Errorf("%s changed, the fingerprint did not", name)
		}
	}
	if fp, _ := TemplateFingerprint(opts, qemu.AccelKVM); fp == base {
		t.Error("the accelerator changed, the fingerprint did not")
	}
}

// A new template removes the older ones of its family, and the least
// recently used beyond maxTemplates.
func TestPruneTemplates(t *testing.T) {
	root := t.TempDir()
	mkTemplate := func(name, family string) {
		dir := filepath.Join(root, name)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, familyFile), []byte(family), 0o600); err != nil {
			t.Fatal(err)
		}
		createFile(t, filepath.Join(root, name+".lock"))
	}
	mkTemplate("new", "a")
	mkTemplate("old", "a")
	mkTemplate("other", "b")
	making := filepath.Join(root, "new.making-123")
	if err := os.Mkdir(making, 0o700); err != nil {
		t.Fatal(err)
	}
	// maxTemplates-1 more of other families, used an hour ago and earlier.
	for i := range maxTemplates - 1 {
		name := fmt.Sprintf("lru%d", i)
		mkTemplate(name, name)
		used := time.Now().Add(-time.Duration(i+1) * time.Hour)
		if err := os.Chtimes(filepath.Join(root, name), used, used); err != nil {
			t.Fatal(err)
		}
	}
	pruneTemplates(root, "new")
	// "new" and "other" (used just now) and the newest maxTemplates-2 of
	// the others are kept.
	lruKept := fmt.Sprintf("lru%d", maxTemplates-3)
	lruGone := fmt.Sprintf("lru%d", maxTemplates-2)
	for path, want := range map[string]bool{"new": true, "new.lock": true, "old": false, "old.lock": false, "other": true, "new.making-123": true,
		lruKept: true, lruGone: false, lruGone + ".lock": false} {
		_, err := os.Stat(filepath.Join(root, path))
		if got := err == nil; got != want {
			t.Errorf("%s exists: %v, want %v", path, got, want)
		}
	}
}

func createFile(t *testing.T, path string) string {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
