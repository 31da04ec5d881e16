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
	base, err := fingerprintOf(opts, qemu.AccelTCG)
	if err != nil {
		t.Fatal(err)
	}
	other := opts
	other.ID, other.Dir = "c2", "/run/husk/c2"
	if !isFingerprint(base) {
		t.Errorf("fingerprint %q: want 16 hex digits, which pruning looks for", base)
	}
	if fp, err := fingerprintOf(other, qemu.AccelTCG); err != nil || fp != base {
		t.Errorf("another sandbox's id and directory changed the fingerprint: %s (%v), %s", fp, err, base)
	}
	// A network device's address is the sandbox's own: the template's
	// devices have placeholders.
	withNIC := func(mac string) VMOptions {
		o := opts
		o.Taps = []Tap{{MAC: mac}}
		return o
	}
	a, errA := fingerprintOf(withNIC("02:00:00:00:00:01"), qemu.AccelTCG)
	b, errB := fingerprintOf(withNIC("02:00:00:00:00:02"), qemu.AccelTCG)
	if errA != nil || errB != nil {
		t.Fatal(errA, errB)
	}
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
		fp, err := fingerprintOf(o, qemu.AccelTCG)
		if err != nil {
			t.Fatal(err)
		}
		if fp == base {
			t.Errorf("%s changed, the fingerprint did not", name)
		}
	}
	if fp, err := fingerprintOf(opts, qemu.AccelKVM); err != nil || fp == base {
		t.Errorf("the accelerator changed: fingerprint %q (%v), was %q", fp, err, base)
	}
	// The TCG cache is QEMU's on the host, not the guest's: a pooled
	// sandbox, with a larger one, restores the others' template.
	pooled := opts
	pooled.Config = opts.Config.ForPool()
	if pooled.Config.Hypervisor.TCGTBSizeMiB == opts.Config.Hypervisor.TCGTBSizeMiB {
		t.Fatalf("the pool's TCG cache size %d is the hypervisor's: the test compares nothing", pooled.Config.Hypervisor.TCGTBSizeMiB)
	}
	plain, errPlain := fingerprintOf(opts, qemu.AccelTCG) // the initrd's time changed above
	if fp, err := fingerprintOf(pooled, qemu.AccelTCG); err != nil || errPlain != nil || fp != plain {
		t.Errorf("the TCG cache's size changed the fingerprint: %q (%v), was %q (%v)", fp, err, plain, errPlain)
	}
}

// A new template removes the older ones of its family, and the least
// recently used beyond maxTemplates; nothing else in the directory.
func TestPruneTemplates(t *testing.T) {
	root := t.TempDir()
	name := func(n int) string { return fmt.Sprintf("%016x", n) }
	mkTemplate := func(name, family string, used time.Time) {
		dir := filepath.Join(root, name)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if family != "" {
			if err := os.WriteFile(filepath.Join(dir, familyFile), []byte(family), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		createFile(t, filepath.Join(root, name+".lock"))
		if err := os.Chtimes(dir, used, used); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	keep, old, other := name(1), name(2), name(3)
	mkTemplate(keep, "a", now)
	mkTemplate(old, "a", now)
	mkTemplate(other, "b", now)
	// maxTemplates-1 more of other families, used an hour ago and earlier:
	// with keep and other, one too many.
	for i := range maxTemplates - 1 {
		mkTemplate(name(100+i), name(100+i), now.Add(-time.Duration(i+1)*time.Hour))
	}
	// Not templates, and older than all: a directory of another program
	// and one named like a template without a family.
	mkTemplate("someone-elses", "", now.Add(-48*time.Hour))
	mkTemplate(name(999), "", now.Add(-48*time.Hour))
	making := filepath.Join(root, keep+".making-123")
	if err := os.Mkdir(making, 0o700); err != nil {
		t.Fatal(err)
	}
	// Locks of fingerprints with no template: a free one goes, a held one
	// stays.
	orphan, heldOrphan := name(500), name(501)
	createFile(t, filepath.Join(root, orphan+".lock"))
	unlock, err := lockFile(filepath.Join(root, heldOrphan+".lock"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	// Markers of failed attempts: an old one goes, a recent one stays.
	oldFailure, newFailure := name(600), name(601)
	createFile(t, filepath.Join(root, oldFailure+templateFailedSuffix))
	longAgo := now.Add(-2 * templateRetry)
	if err := os.Chtimes(filepath.Join(root, oldFailure+templateFailedSuffix), longAgo, longAgo); err != nil {
		t.Fatal(err)
	}
	createFile(t, filepath.Join(root, newFailure+templateFailedSuffix))
	pruneTemplates(root, keep)
	lruKept, lruGone := name(100+maxTemplates-3), name(100+maxTemplates-2)
	for path, want := range map[string]bool{
		keep: true, keep + ".lock": true, keep + ".making-123": true,
		old: false, old + ".lock": false,
		other: true, lruKept: true, lruGone: false, lruGone + ".lock": false,
		"someone-elses": true, "someone-elses.lock": true, name(999): true, name(999) + ".lock": true,
		orphan + ".lock": false, heldOrphan + ".lock": true,
		oldFailure + templateFailedSuffix: false, newFailure + templateFailedSuffix: true,
	} {
		_, err := os.Stat(filepath.Join(root, path))
		if got := err == nil; got != want {
			t.Errorf("%s exists: %v, want %v", path, got, want)
		}
	}
}

// The template directory must be husk's user's alone.
func TestCheckTemplateRoot(t *testing.T) {
	root := filepath.Join(t.TempDir(), "templates")
	if err := checkTemplateRoot(root); err != nil {
		t.Fatalf("a new directory: %v", err)
	}
	if fi, err := os.Stat(root); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("made %v (%v), want mode 0700", fi, err)
	}
	if err := os.Chmod(root, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := checkTemplateRoot(root); err == nil {
		t.Error("a world-writable template directory was accepted")
	}
}

// A lock held elsewhere is waited for only as long as asked.
func TestLockFileWaitsBounded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.lock")
	unlock, err := lockFile(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	if _, err := lockFile(path, 200*time.Millisecond); err == nil {
		t.Fatal("a held lock was taken again")
	}
	if waited := time.Since(began); waited < 200*time.Millisecond || waited > 5*time.Second {
		t.Errorf("waited %s for a held lock, asked 200ms", waited)
	}
	unlock()
	unlock2, err := lockFile(path, time.Second)
	if err != nil {
		t.Fatalf("after unlock: %v", err)
	}
	unlock2()
}

// A process that waited on a lock file its holder then removed ends up
// holding the lock of the file the path names now, not of the removed one:
// nobody else can take the path's lock meanwhile.
func TestLockFileFollowsRemoval(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.lock")
	unlockFirst, err := lockFile(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		unlock func()
		err    error
	}
	waiter := make(chan result)
	go func() {
		unlock, err := lockFile(path, 10*time.Second)
		waiter <- result{unlock, err}
	}()
	time.Sleep(100 * time.Millisecond) // let the waiter open the first file
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	unlockFirst()
	got := <-waiter
	if got.err != nil {
		t.Fatalf("waiter: %v", got.err)
	}
	defer got.unlock()
	if _, err := lockFile(path, 0); err == nil {
		t.Error("the path's lock was free while the waiter held a lock: it held the removed file's")
	}
}

func createFile(t *testing.T, path string) string {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func fingerprintOf(opts VMOptions, accel qemu.Accel) (string, error) {
	fp, _, err := templateFingerprint(opts, accel)
	return fp, err
}
