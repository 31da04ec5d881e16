package qemu

import (
	"errors"
	"fmt"
	"net"
	"strings"
)

// Device is one piece of microvm hardware: it checks its own fields and
// returns its own arguments, so a Config needs no knowledge of device kinds.
type Device interface {
	// Args returns the device's QEMU arguments; call Valid first.
	Args() []string
	// Valid reports every field QEMU would reject or misparse.
	Valid() error
}

// maxMountTagLen is QEMU's limit on a virtio-9p mount_tag (checked against
// 7.2: longer tags fail at start-up with "longer than maximum (31 bytes)").
const maxMountTagLen = 31

// SerialConsoleToFile writes the microvm's ISA serial port, the guest
// kernel's console, to a file on the host.
type SerialConsoleToFile struct {
	Path string
}

// Valid implements Device.
func (d SerialConsoleToFile) Valid() error {
	return checkPath("SerialConsoleToFile.Path", d.Path)
}

// Args implements Device.
func (d SerialConsoleToFile) Args() []string {
	return []string{
		"-chardev", "file,id=console,path=" + escapeOptionValue(d.Path),
		"-serial", "chardev:console",
	}
}

// QMPClient makes QEMU connect its QMP monitor to a unix socket the caller
// already listens on. QEMU as the client means the caller never races QEMU's
// start-up to find a socket, and QEMU exits at once if nobody is listening.
type QMPClient struct {
	SocketPath string
}

// Valid implements Device.
func (d QMPClient) Valid() error {
	return checkPath("QMPClient.SocketPath", d.SocketPath)
}

// Args implements Device.
func (d QMPClient) Args() []string {
	return []string{
		"-chardev", "socket,id=qmp,path=" + escapeOptionValue(d.SocketPath),
		"-mon", "chardev=qmp,mode=control",
	}
}

// VirtioSerialPort is a named virtio-serial port, on a bus of its own, whose
// host end is a unix socket the caller already listens on. QEMU connects at
// start-up, before the guest runs, so no byte the guest writes is lost.
// The guest finds it as /dev/virtio-ports/<Name>.
type VirtioSerialPort struct {
	// ID names the chardev; the bus device is ID + "-bus".
	ID         string
	SocketPath string
	Name       string
}

// Valid implements Device.
func (d VirtioSerialPort) Valid() error {
	return errors.Join(
		checkID("VirtioSerialPort.ID", d.ID),
		checkPath("VirtioSerialPort.SocketPath", d.SocketPath),
		checkName("VirtioSerialPort.Name", d.Name),
	)
}

// Args implements Device.
func (d VirtioSerialPort) Args() []string {
	bus := d.ID + "-bus"
	return []string{
		"-device", "virtio-serial-device,id=" + bus,
		"-chardev", "socket,id=" + d.ID + ",path=" + escapeOptionValue(d.SocketPath),
		// The bus is named explicitly because QEMU otherwise puts every port
		// on the first virtio-serial bus it finds, not on this one.
		"-device", "virtserialport,chardev=" + d.ID + ",name=" + d.Name + ",bus=" + bus + ".0",
	}
}

// Virtio9P shares a host directory with the guest over virtio-9p, mounted by
// the guest with `mount -t 9p -o trans=virtio <Tag> <dir>`.
type Virtio9P struct {
	ID       string
	Path     string
	Tag      string
	ReadOnly bool
}

// Valid implements Device.
func (d Virtio9P) Valid() error {
	tagErr := checkName("Virtio9P.Tag", d.Tag)
	if tagErr == nil && len(d.Tag) > maxMountTagLen {
		tagErr = fmt.Errorf("Virtio9P.Tag %q: longer than %d bytes", d.Tag, maxMountTagLen)
	}
	return errors.Join(
		checkID("Virtio9P.ID", d.ID),
		checkPath("Virtio9P.Path", d.Path),
		tagErr,
	)
}

// Args implements Device.
func (d Virtio9P) Args() []string {
	// passthrough keeps the files' real owners and modes, which containers
	// need; multidevs=remap keeps inode numbers unique when the shared tree
	// spans several host filesystems (overlay mounts do).
	fsdev := "local,id=" + d.ID + ",path=" + escapeOptionValue(d.Path) +
		",security_model=passthrough,multidevs=remap"
	if d.ReadOnly {
		fsdev += ",readonly=on"
	}
	return []string{
		"-fsdev", fsdev,
		"-device", "virtio-9p-device,fsdev=" + d.ID + ",mount_tag=" + d.Tag,
	}
}

// VirtioRNG feeds the guest's entropy pool from the host's /dev/urandom, so
// the guest's early getrandom calls do not block.
type VirtioRNG struct {
	ID string
}

// Valid implements Device.
func (d VirtioRNG) Valid() error {
	return checkID("VirtioRNG.ID", d.ID)
}

// Args implements Device.
func (d VirtioRNG) Args() []string {
	return []string{
		"-object", "rng-random,id=" + d.ID + ",filename=/dev/urandom",
		"-device", "virtio-rng-device,rng=" + d.ID,
	}
}

// VirtioNetTap is a virtio-net device on a tap device that QEMU inherits
// as an open descriptor (the tap lives in another network namespace, where
// QEMU could not open it by name).
type VirtioNetTap struct {
	ID  string
	FD  int    // QEMU's descriptor number for the tap's queue
	MAC string // the guest's MAC address for the device
	// IfName, when set, has QEMU create a tap of that name itself, in its
	// own network namespace, instead of inheriting FD: a template's guest
	// gets its devices that way, as a tap with virtio-net headers, like
	// the ones later guests restored from it get.
	IfName string
}

// Valid implements Device.
func (d VirtioNetTap) Valid() error {
	var macErr error
	if _, err := net.ParseMAC(d.MAC); err != nil {
		macErr = fmt.Errorf("VirtioNetTap.MAC %q: %w", d.MAC, err)
	}
	var fdErr error
	if d.IfName != "" {
		fdErr = checkID("VirtioNetTap.IfName", d.IfName)
	} else if d.FD < 3 {
		fdErr = fmt.Errorf("VirtioNetTap.FD %d: must be an inherited descriptor (3 or more)", d.FD)
	}
	return errors.Join(checkID("VirtioNetTap.ID", d.ID), macErr, fdErr)
}

// Args implements Device.
func (d VirtioNetTap) Args() []string {
	netdev := fmt.Sprintf("tap,id=%s,fd=%d", d.ID, d.FD)
	if d.IfName != "" {
		netdev = fmt.Sprintf("tap,id=%s,ifname=%s,script=no,downscript=no,vnet_hdr=on", d.ID, d.IfName)
	}
	return []string{
		"-netdev", netdev,
		"-device", "virtio-net-device,netdev=" + d.ID + ",mac=" + d.MAC,
	}
}

// escapeOptionValue makes s safe as one value inside a QEMU option string
// ("key=value,key=value"), where a single comma ends the value and a doubled
// one stands for a literal comma.
func escapeOptionValue(s string) string {
	return strings.ReplaceAll(s, ",", ",,")
}

// checkPath rejects paths QEMU cannot be given: empty ones, and ones with a
// newline or NUL, which no option syntax can carry and which would corrupt
// the one-argument-per-line logs of the command line.
func checkPath(field, path string) error {
	if path == "" {
		return fmt.Errorf("%s: empty path", field)
	}
	if strings.ContainsAny(path, "\n\r\x00") {
		return fmt.Errorf("%s %q: contains a newline or NUL", field, path)
	}
	return nil
}

// checkID enforces QEMU's rule for object and device ids (a letter, then
// letters, digits, '-', '.' or '_'), so a bad id fails here with the field's
// name rather than at QEMU start-up.
func checkID(field, id string) error {
	if id == "" {
		return fmt.Errorf("%s: empty id", field)
	}
	if !isLetter(id[0]) || !isNameChars(id) {
		return fmt.Errorf("%s %q: must be a letter followed by letters, digits, '-', '.' or '_'", field, id)
	}
	return nil
}

// checkName accepts the characters that need no escaping in an option value
// and are safe in a guest path such as /dev/virtio-ports/<name>.
func checkName(field, name string) error {
	if name == "" {
		return fmt.Errorf("%s: empty name", field)
	}
	if !isNameChars(name) {
		return fmt.Errorf("%s %q: only letters, digits, '-', '.' and '_' are allowed", field, name)
	}
	return nil
}

func isNameChars(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !isLetter(c) && !('0' <= c && c <= '9') && c != '-' && c != '.' && c != '_' {
			return false
		}
	}
	return true
}

func isLetter(c byte) bool {
	return ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z')
}
