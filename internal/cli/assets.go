package cli

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/husk-runtime/husk/internal/initrd"
)

// kernelRelease reads the release ("6.1.192") from the banner an
// uncompressed kernel image carries ("Linux version 6.1.192 (...)").
func kernelRelease(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	const banner = "Linux version "
	i := bytes.Index(data, []byte(banner))
	if i < 0 {
		return "", fmt.Errorf("%s: no kernel version banner", path)
	}
	rest := data[i+len(banner):]
	if end := bytes.IndexAny(rest, " \x00\n"); end > 0 {
		return string(rest[:end]), nil
	}
	return "", fmt.Errorf("%s: malformed kernel version banner", path)
}

// agentRelease reads which husk built a guest image, and the agent API it
// speaks, from its release file ("husk-agent VERSION api=N").
func agentRelease(path string) (version string, api int, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", 0, err
	}
	release, err := initrd.ReadFile(data, initrd.ReleaseFile)
	if err != nil {
		return "", 0, fmt.Errorf("%s: %w (built by a husk older than its release file?)", path, err)
	}
	if _, err := fmt.Sscanf(strings.TrimSpace(string(release)), "husk-agent %s api=%d", &version, &api); err != nil {
		return "", 0, errors.New(path + ": malformed release file")
	}
	return version, api, nil
}
