// Command bootinit is the guest's /init in TestBootKernel: it tells the host
// over a virtio-serial port that the guest is up and which entropy source it
// found, waits for the host's answer, then reboots, which QEMU's -no-reboot
// turns into QEMU exiting.
package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

const portName = "org.husk.test.0"

func main() {
	if err := run(); err != nil {
		// The console is the host's console log; the test prints it.
		fmt.Fprintf(os.Stderr, "bootinit: %v\n", err)
	}
	syscall.Reboot(syscall.LINUX_REBOOT_CMD_RESTART)
}

func run() error {
	if err := syscall.Mount("sysfs", "/sys", "sysfs", 0, ""); err != nil {
		return fmt.Errorf("mounting /sys: %w", err)
	}
	if err := syscall.Mount("devtmpfs", "/dev", "devtmpfs", 0, ""); err != nil {
		return fmt.Errorf("mounting /dev: %w", err)
	}
	device, err := findPort(portName)
	if err != nil {
		return err
	}
	port, err := os.OpenFile(device, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("opening port: %w", err)
	}
	defer port.Close()
	rng, err := os.ReadFile("/sys/class/misc/hw_random/rng_current")
	if err != nil {
		return fmt.Errorf("reading rng: %w", err)
	}
	if _, err := fmt.Fprintf(port, "guest up rng=%s\n", strings.TrimSpace(string(rng))); err != nil {
		return fmt.Errorf("writing port: %w", err)
	}
	// Rebooting before the host has read the line could lose it.
	if _, err := bufio.NewReader(port).ReadString('\n'); err != nil {
		return fmt.Errorf("reading host's answer: %w", err)
	}
	return nil
}

// findPort maps a port name to its device; without udev there are no
// /dev/virtio-ports/<name> links.
func findPort(name string) (string, error) {
	names, err := filepath.Glob("/sys/class/virtio-ports/*/name")
	if err != nil {
		return "", err
	}
	for _, path := range names {
		content, err := os.ReadFile(path)
		if err == nil && strings.TrimSpace(string(content)) == name {
			return "/dev/" + filepath.Base(filepath.Dir(path)), nil
		}
	}
	return "", fmt.Errorf("no virtio port named %s among %v", name, names)
}
