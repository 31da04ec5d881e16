package sandbox

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/husk-runtime/husk/internal/channel"
	"github.com/husk-runtime/husk/internal/config"
	"github.com/husk-runtime/husk/internal/qemu"
	"github.com/husk-runtime/husk/internal/version"
)

// A Template is a guest booted once and saved by QEMU while its agent waits
// for the host's hello: its RAM in the file templateMemory, QEMU's device
// state in templateState. Sandboxes of the same configuration restore it instead of
// booting. Each maps the RAM file copy-on-write, so the pages that no guest
// changed (the kernel, the agent, most of what the boot set up) are one set
// of host pages for all of them, and a restored guest skips the kernel's
// boot, which under TCG is also the translation of all the code it runs.
//
// A template holds nothing of any sandbox: the agent takes the host's clock
// and fresh entropy, mounts the sandbox's share and opens the channel only
// after the hello.
type Template struct {
	// Dir is the template's directory: TemplateDir/<fingerprint>.
	Dir string
}

const (
	templateMemory = "memory"
	templateState  = "state"
	// templateFailedSuffix marks a fingerprint whose template could not be
	// made, so that every create does not try again at once.
	templateFailedSuffix = ".failed"
	templateRetry        = time.Minute
	// templateLockSuffix names the lock file that serialises making,
	// discarding and removing a fingerprint's template.
	templateLockSuffix = ".lock"
)

func (t *Template) memoryFile() string { return filepath.Join(t.Dir, templateMemory) }
func (t *Template) stateFile() string  { return filepath.Join(t.Dir, templateState) }

// ready says whether the template is complete: its directory appears, by a
// rename, only once both files are written.
func (t *Template) ready() bool {
	_, err := os.Stat(t.stateFile())
	if err != nil {
		return false
	}
	// A memory file that is gone would be made anew by QEMU, empty: the
	// guest would resume on zeroed RAM.
	fi, err := os.Stat(t.memoryFile())
	return err == nil && fi.Size() > 0
}

// touch marks the template used now, for pruneTemplates.
func (t *Template) touch() {
	now := time.Now()
	_ = os.Chtimes(t.Dir, now, now)
}

// Discard removes the template, under its lock so that it cannot take one
// that another create has just made anew. Guests restored from it keep their
// mapping of its memory file.
func (t *Template) Discard(wait time.Duration) {
	unlock, err := lockFile(t.Dir+templateLockSuffix, wait)
	if err != nil {
		return
	}
	defer unlock()
	_ = os.RemoveAll(t.Dir)
}

// templateMisfit says why the sandbox cannot be restored from a template,
// or "" if it can. A macvtap's queue offers the guest other features than
// the tap a template is made with, and the debug console's guest image is
// made per sandbox.
func templateMisfit(opts VMOptions) string {
	switch {
	case !opts.Config.Hypervisor.Template:
		return "hypervisor.template is off"
	case len(opts.Taps) > 0 && opts.Config.Network.Mode != config.NetworkTC:
		return "the sandbox's network is joined in " + opts.Config.Network.Mode + " mode"
	case opts.Initrd != "":
		return "the sandbox has its own guest image (debug console)"
	}
	return ""
}

// placeholderMAC is the MAC address of a template's n-th network device,
// which every guest restored from it has until its agent gives the device
// the interface's own: QEMU restores the address with the device, whatever
// its command line says.
func placeholderMAC(n int) string { return fmt.Sprintf("02:68:75:73:6b:%02x", n) }

// withPlaceholderMACs is opts with its taps' addresses replaced by the
// template's, as a template is made and restored.
func withPlaceholderMACs(opts VMOptions) VMOptions {
	taps := make([]Tap, len(opts.Taps))
	for i, tap := range opts.Taps {
		taps[i] = Tap{File: tap.File, MAC: placeholderMAC(i)}
	}
	opts.Taps = taps
	return opts
}

// templatePaths are a template's QEMU paths while it is being made. QEMU
// runs in the template's directory and names its sockets relative to it,
// as a sandbox's does: a socket's path must fit in 108 bytes, and the
// template directory's may not.
func templatePaths(dir string) vmPaths {
	return vmPaths{
		console: filepath.Join(dir, ConsoleLog),
		qmp:     qmpSocket,
		agent:   agentSocket,
		shared:  filepath.Join(dir, SharedDir),
	}
}

// templateFingerprint names the template of a sandbox's VM: everything that
// shapes the saved guest. That is its family (see templateFamily, also
// returned), the QEMU, kernel and initrd files as they are now, this husk's
// version and agent API, and the host's kernel and CPU.
func templateFingerprint(opts VMOptions, accel qemu.Accel) (fingerprint, family string, err error) {
	qcfg, family, err := templateFamily(opts, accel)
	if err != nil {
		return "", "", err
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00%d\x00", family, version.Version, channel.APIVersion)
	// Under KVM the guest sees the host's CPU, which a new kernel or
	// microcode can change under a template kept on disk.
	var uts unix.Utsname
	if err := unix.Uname(&uts); err == nil {
		fmt.Fprintf(h, "%s\x00", unix.ByteSliceToString(uts.Release[:]))
	}
	fmt.Fprintf(h, "%s\x00", hostCPU())
	for _, path := range []string{qcfg.Binary, qcfg.Kernel, qcfg.Initrd} {
		fi, err := os.Stat(path)
		if err != nil {
			return "", "", err
		}
		fmt.Fprintf(h, "%s %d %d\x00", path, fi.Size(), fi.ModTime().UnixNano())
	}
	return hex.EncodeToString(h.Sum(nil))[:16], family, nil
}

// hostCPU is the first CPU's model, microcode and flags from /proc/cpuinfo.
func hostCPU() string {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	var cpu []string
	for _, line := range strings.Split(string(data), "\n") {
		if line == "" {
			break // the first CPU's block ends
		}
		key, _, _ := strings.Cut(line, ":")
		switch strings.TrimSpace(key) {
		case "model name", "microcode", "flags":
			cpu = append(cpu, line)
		}
	}
	return strings.Join(cpu, "\n")
}

// templateFamily hashes QEMU's arguments for the sandbox's VM, with its own
// paths left out: the machine, its size, its devices in order, the kernel
// command line. A new template replaces the older ones of its family (made
// from other files or by another husk), which no guest would restore again.
func templateFamily(opts VMOptions, accel qemu.Accel) (*qemu.Config, string, error) {
	qcfg := vmConfig(withPlaceholderMACs(opts), accel, vmPaths{console: "/console", qmp: "/qmp", agent: "/agent", shared: "/shared"})
	qcfg.Name = "template"
	// The TCG cache's size is the host's buffer, not the machine's: a
	// guest saved with one size restores under another, so pooled and
	// other sandboxes (whose sizes differ) share a template.
	machine := *qcfg
	machine.TBSizeMiB = 0
	args, err := machine.Args()
	if err != nil {
		return nil, "", fmt.Errorf("qemu configuration: %w", err)
	}
	h := sha256.New()
	_ = json.NewEncoder(h).Encode(args)
	return qcfg, hex.EncodeToString(h.Sum(nil))[:16], nil
}

// EnsureTemplate returns the sandbox's template, made now if there is none.
// Creates of the same configuration wait for the one that makes it.
func EnsureTemplate(opts VMOptions, accel qemu.Accel) (*Template, error) {
	fingerprint, family, err := templateFingerprint(opts, accel)
	if err != nil {
		return nil, err
	}
	root := opts.Config.Hypervisor.TemplateDir
	t := &Template{Dir: filepath.Join(root, fingerprint)}
	if err := checkTemplateRoot(root); err != nil {
		return nil, err
	}
	if t.ready() {
		t.touch()
		return t, nil
	}
	// A create waits for another making the same template no longer than a
	// boot would take, then boots.
	unlock, err := lockFile(t.Dir+templateLockSuffix, opts.Config.Agent.BootTimeout.Duration)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if t.ready() {
		return t, nil
	}
	// Under the lock, what is there of this fingerprint is a leftover: a
	// half-removed template, or one whose maker was killed.
	_ = os.RemoveAll(t.Dir)
	stale, _ := filepath.Glob(t.Dir + ".making-*")
	for _, dir := range stale {
		_ = os.RemoveAll(dir)
	}
	failed := filepath.Join(root, fingerprint+templateFailedSuffix)
	if fi, err := os.Stat(failed); err == nil && time.Since(fi.ModTime()) < templateRetry {
		why, _ := os.ReadFile(failed)
		return nil, fmt.Errorf("making the template failed %s ago: %s", time.Since(fi.ModTime()).Round(time.Second), strings.TrimSpace(string(why)))
	}
	log := opts.logger()
	turn, err := startTurn(opts)
	if err != nil {
		return nil, err
	}
	began := time.Now()
	err = makeTemplate(opts, accel, t, family)
	endTurn(log, turn)
	if err != nil {
		_ = os.WriteFile(failed, []byte(err.Error()+"\n"), 0o600)
		return nil, fmt.Errorf("making the template: %w", err)
	}
	_ = os.Remove(failed)
	log.Info("template made", "template", t.Dir, "took", time.Since(began).String())
	pruneTemplates(root, fingerprint)
	return t, nil
}

// checkTemplateRoot makes the template directory, or checks the one there:
// guests run what its files hold, so it must be root's alone, like the
// kernel and initrd.
func checkTemplateRoot(root string) error {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return fmt.Errorf("creating the template directory: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Stat(root, &st); err != nil {
		return fmt.Errorf("the template directory: %w", err)
	}
	if int(st.Uid) != os.Geteuid() || st.Mode&0o022 != 0 {
		return fmt.Errorf("the template directory %s is writable by others than its owner, or not owned by husk's user (mode %o, owner %d)", root, st.Mode&0o7777, st.Uid)
	}
	return nil
}

// lockFile takes an exclusive lock on path, waiting for it no longer than
// wait. A lock file may be removed by its holder (removeLockFile); a
// process that was waiting on the removed file finds, once it has the
// lock, that the path no longer names the file it locked, and locks the
// path's new file instead.
func lockFile(path string, wait time.Duration) (unlock func(), err error) {
	deadline := time.Now().Add(wait)
	for {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return nil, fmt.Errorf("opening %s: %w", path, err)
		}
		err = flockUntil(f, deadline, wait)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
		if lockedFileIsPath(f, path) {
			return func() { f.Close() }, nil
		}
		f.Close() // removed while we waited: lock the new one
	}
}

// flockUntil takes an exclusive lock on f, trying until deadline.
func flockUntil(f *os.File, deadline time.Time, wait time.Duration) error {
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("still held after %s", wait)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// lockedFileIsPath says whether path still names the open file f.
func lockedFileIsPath(f *os.File, path string) bool {
	locked, err := f.Stat()
	if err != nil {
		return false
	}
	current, err := os.Stat(path)
	return err == nil && os.SameFile(locked, current)
}

// removeLockFile removes a lock file that nobody holds, holding it while it
// does; a held one is left.
func removeLockFile(path string) {
	unlock, err := lockFile(path, 0)
	if err != nil {
		return
	}
	_ = os.Remove(path)
	unlock()
}

// familyFile holds a template's family (templateFamily).
const familyFile = "family"

// maxTemplates bounds the templates kept: each holds the RAM its guest wrote
// while it booted (tens of MiB, on a tmpfs), and every VM size (a container's
// memory limit or CPU quota changes it) and debug setting has its own.
const maxTemplates = 8

// pruneTemplates removes the other templates of keep's family, which no
// guest would restore again, and the least recently used beyond
// maxTemplates. It touches nothing but templates (a directory named by a
// fingerprint, holding a family file): the directory may be shared.
// Guests restored from a removed template keep their mappings.
func pruneTemplates(root, keep string) {
	family, err := os.ReadFile(filepath.Join(root, keep, familyFile))
	if err != nil {
		return
	}
	type kept struct {
		name string
		used time.Time
	}
	var others []kept
	entries, _ := os.ReadDir(root)
	for _, e := range entries {
		name := e.Name()
		// The lock of a fingerprint with no template (one that failed, or
		// was removed before locks were) goes too, unless held.
		if fp, isLock := strings.CutSuffix(name, templateLockSuffix); isLock && fp != keep && isFingerprint(fp) {
			if _, err := os.Stat(filepath.Join(root, fp)); errors.Is(err, fs.ErrNotExist) {
				removeLockFile(filepath.Join(root, name))
			}
			continue
		}
		// A failed attempt's marker counts for templateRetry only.
		if fp, isMarker := strings.CutSuffix(name, templateFailedSuffix); isMarker && fp != keep && isFingerprint(fp) {
			if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > templateRetry {
				_ = os.Remove(filepath.Join(root, name))
			}
			continue
		}
		if name == keep || !e.IsDir() || !isFingerprint(name) {
			continue
		}
		theirs, err := os.ReadFile(filepath.Join(root, name, familyFile))
		if err != nil {
			continue
		}
		if string(theirs) == string(family) {
			removeTemplate(root, name)
			continue
		}
		if info, err := e.Info(); err == nil {
			others = append(others, kept{name, info.ModTime()})
		}
	}
	sort.Slice(others, func(i, j int) bool { return others[i].used.After(others[j].used) })
	for i, o := range others {
		if i+1 >= maxTemplates { // keep counts as one
			removeTemplate(root, o.name)
		}
	}
}

// isFingerprint says whether name is one that templateFingerprint makes.
func isFingerprint(name string) bool {
	if len(name) != 16 {
		return false
	}
	_, err := hex.DecodeString(name)
	return err == nil
}

func removeTemplate(root, name string) {
	_ = os.RemoveAll(filepath.Join(root, name))
	_ = os.Remove(filepath.Join(root, name+templateFailedSuffix))
	removeLockFile(filepath.Join(root, name+templateLockSuffix))
}

// makeTemplate boots the guest with its RAM in a shared file, waits for the
// agent's ready token, and has QEMU save the machine's state beside the file.
// Only RAM that the guest wrote takes space in the file (it is sparse), and
// the state stream leaves the RAM out (QEMU's x-ignore-shared).
func makeTemplate(opts VMOptions, accel qemu.Accel, t *Template, family string) error {
	root := filepath.Dir(t.Dir)
	tmp, err := os.MkdirTemp(root, filepath.Base(t.Dir)+".making-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	paths := templatePaths(tmp)
	if err := os.Mkdir(paths.shared, 0o700); err != nil {
		return err
	}
	qcfg := vmConfig(withPlaceholderMACs(opts), accel, paths)
	qcfg.Name = "template-" + filepath.Base(t.Dir)
	for i, device := range qcfg.Devices {
		if nic, ok := device.(qemu.VirtioNetTap); ok {
			// QEMU makes the tap in its own, empty network namespace.
			nic.IfName = fmt.Sprintf("tap%d", i)
			qcfg.Devices[i] = nic
		}
	}
	qcfg.MemoryFile, qcfg.MemoryShared = filepath.Join(tmp, templateMemory), true
	args, err := qcfg.Args()
	if err != nil {
		return fmt.Errorf("qemu configuration: %w", err)
	}
	// husk reaches the same sockets through a short path of its own: the
	// directory's descriptor.
	dir, err := os.Open(tmp)
	if err != nil {
		return err
	}
	defer dir.Close()
	at := fmt.Sprintf("/proc/self/fd/%d/", dir.Fd())
	agentL, err := listenUnix(at + paths.agent)
	if err != nil {
		return err
	}
	defer agentL.Close()
	qmpL, err := listenUnix(at + paths.qmp)
	if err != nil {
		return err
	}
	defer qmpL.Close()
	logFile, err := os.Create(filepath.Join(tmp, QEMULog))
	if err != nil {
		return err
	}
	defer logFile.Close()

	vm := &VM{Accel: accel, exited: make(chan struct{})}
	if err := vm.start(qcfg.Binary, args, tmp, logFile, nil); err != nil {
		return err
	}
	defer vm.Kill()
	deadline := vm.Started.Add(opts.Config.Agent.BootTimeout.Duration)
	withLog := func(err error) error {
		out, _ := os.ReadFile(filepath.Join(tmp, QEMULog))
		if s := strings.TrimSpace(string(out)); s != "" {
			return fmt.Errorf("%w (qemu: %s)", err, s)
		}
		return err
	}
	qmpConn, err := vm.accept(qmpL, time.Until(deadline))
	if err != nil {
		return withLog(fmt.Errorf("qemu's monitor: %w", err))
	}
	if err := vm.openQMP(qmpConn, deadline); err != nil {
		return withLog(err)
	}
	agentConn, err := vm.accept(agentL, time.Until(deadline))
	if err != nil {
		return withLog(fmt.Errorf("qemu's agent channel: %w", err))
	}
	defer agentConn.Close()
	_ = agentConn.SetDeadline(deadline)
	if err := vm.awaitReady(agentConn); err != nil {
		return withLog(fmt.Errorf("booting the template's guest: %w", err))
	}
	if err := vm.save(filepath.Join(tmp, templateState), at+migrationSocket, deadline); err != nil {
		return withLog(err)
	}
	vm.Kill()
	if err := os.WriteFile(filepath.Join(tmp, familyFile), []byte(family), 0o600); err != nil {
		return err
	}
	for _, name := range []string{ConsoleLog, QEMULog, qmpSocket, agentSocket, SharedDir} {
		_ = os.Remove(filepath.Join(tmp, name))
	}
	if err := os.Rename(tmp, t.Dir); err != nil {
		return fmt.Errorf("putting the template in place: %w", err)
	}
	return nil
}

// migrationSocket is where the state stream crosses between QEMU and husk,
// in either direction. QEMU's seccomp filter forbids the exec: URIs, and
// QEMU 7.2 has no file: URI.
const migrationSocket = "migration.sock"

// ignoreShared makes QEMU leave RAM that is mapped from a file out of the
// state stream, on the saving and the restoring side alike: the file is
// the RAM.
var ignoreShared = map[string]any{"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": true}}}

// save stops the guest and writes QEMU's state, without its RAM, to path;
// the state crosses migrationSocket in QEMU's working directory, which is
// sock for husk.
func (vm *VM) save(path, sock string, deadline time.Time) error {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	if _, err := vm.qmp.Execute(ctx, "stop", nil); err != nil {
		return fmt.Errorf("pausing the guest: %w", err)
	}
	if _, err := vm.qmp.Execute(ctx, "migrate-set-capabilities", ignoreShared); err != nil {
		return fmt.Errorf("qemu cannot leave the RAM out of its state: %w", err)
	}
	l, err := listenUnix(sock)
	if err != nil {
		return err
	}
	defer l.Close()
	defer os.Remove(sock)
	if _, err := vm.qmp.Execute(ctx, "migrate", map[string]any{"uri": "unix:" + migrationSocket}); err != nil {
		return fmt.Errorf("saving the guest: %w", err)
	}
	conn, err := vm.accept(l, time.Until(deadline))
	if err != nil {
		return fmt.Errorf("saving the guest: %w", err)
	}
	defer conn.Close()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_ = conn.SetDeadline(deadline)
	if _, err := io.Copy(f, conn); err != nil {
		return fmt.Errorf("saving the guest: %w", err)
	}
	// QEMU closes the stream when it has written all; the migration's own
	// status says whether all went.
	status, err := vm.migrationStatus(ctx, "query-migrate", "completed", "failed", "cancelled")
	if err != nil {
		return fmt.Errorf("saving the guest: %w", err)
	}
	if status != "completed" {
		return fmt.Errorf("saving the guest: migration %s", status)
	}
	return f.Sync()
}

// RestoreError is a template that QEMU refused to restore.
type RestoreError struct{ Cause error }

func (e *RestoreError) Error() string { return "restoring the template: " + e.Cause.Error() }
func (e *RestoreError) Unwrap() error { return e.Cause }

// restore loads the template's state into QEMU, started with -incoming
// defer and the template's RAM file; QEMU runs the guest as soon as the
// state is in.
func (vm *VM) restore(t *Template, deadline time.Time) error {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	// Only QEMU's refusal of the state condemns the template; a restore that
	// ran out of time on a loaded host does not.
	fail := func(err error) error {
		if vm.exitedWithin(500 * time.Millisecond) { // QEMU says why in its log
			return &RestoreError{Cause: fmt.Errorf("%w: %v", err, vm.exitError())}
		}
		return fmt.Errorf("restoring the template: %w", err)
	}
	state, err := os.Open(t.stateFile())
	if err != nil {
		return fmt.Errorf("restoring the template: %w", err)
	}
	defer state.Close()
	if _, err := vm.qmp.Execute(ctx, "migrate-set-capabilities", ignoreShared); err != nil {
		return fail(err)
	}
	_ = os.Remove(migrationSocket)
	defer os.Remove(migrationSocket)
	if _, err := vm.qmp.Execute(ctx, "migrate-incoming", map[string]any{"uri": "unix:" + migrationSocket}); err != nil {
		return fail(err)
	}
	conn, err := net.DialTimeout("unix", migrationSocket, time.Until(deadline))
	if err != nil {
		return fail(err)
	}
	_ = conn.SetDeadline(deadline)
	_, err = io.Copy(conn, state)
	conn.Close()
	if err != nil {
		return fail(err)
	}
	// The template was saved paused, so its guest comes back paused.
	status, err := vm.migrationStatus(ctx, "query-status", "paused", "running", "internal-error", "shutdown")
	if err != nil {
		return fail(err)
	}
	switch status {
	case "paused":
		if _, err := vm.qmp.Execute(ctx, "cont", nil); err != nil {
			return fail(fmt.Errorf("running the restored guest: %w", err))
		}
	case "running":
	default:
		return &RestoreError{Cause: fmt.Errorf("the guest is %s after loading its state", status)}
	}
	return nil
}

// migrationStatus polls QEMU with query (query-migrate or query-status)
// until its status is one of final, and returns it.
func (vm *VM) migrationStatus(ctx context.Context, query string, final ...string) (string, error) {
	for {
		raw, err := vm.qmp.Execute(ctx, query, nil)
		if err != nil {
			return "", err
		}
		var reply struct {
			Status string `json:"status"`
		}
		if err := json.Unmarshal(raw, &reply); err != nil {
			return "", fmt.Errorf("%s: %w", query, err)
		}
		for _, f := range final {
			if reply.Status == f {
				return reply.Status, nil
			}
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("%s: still %q: %w", query, reply.Status, ctx.Err())
		case <-vm.exited:
			return "", vm.exitError()
		case <-time.After(2 * time.Millisecond):
		}
	}
}
