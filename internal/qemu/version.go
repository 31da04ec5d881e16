package qemu

import (
	"fmt"
	"os/exec"
	"strings"
)

// Version runs `<binary> --version` and returns QEMU's version number, such
// as "7.2.19", so callers can log it and refuse versions they do not support.
func Version(binary string) (string, error) {
	out, err := exec.Command(binary, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("running %s --version: %w", binary, err)
	}
	version, err := parseVersion(string(out))
	if err != nil {
		return "", fmt.Errorf("%s --version: %w", binary, err)
	}
	return version, nil
}

// parseVersion takes the number from the first line of `qemu --version`,
// "QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u12)"; the package
// suffix in parentheses is the distribution's and varies.
func parseVersion(output string) (string, error) {
	const prefix = "QEMU emulator version "
	firstLine, _, _ := strings.Cut(output, "\n")
	firstLine = strings.TrimSpace(firstLine)
	_, rest, found := strings.Cut(firstLine, prefix)
	if !found {
		return "", fmt.Errorf("unrecognized version line %q", firstLine)
	}
	fields := strings.Fields(rest)
	if len(fields) == 0 || !isVersionNumber(fields[0]) {
		return "", fmt.Errorf("no version number in %q", firstLine)
	}
	return fields[0], nil
}

// isVersionNumber accepts dotted decimal numbers with at least two parts.
func isVersionNumber(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) < 2 {
		return false
	}
	for _, part := range parts {
		if part == "" || strings.Trim(part, "0123456789") != "" {
			return false
		}
	}
	return true
}
