// Package cli is the husk command line: runc's commands and flags, each a
// thin action over the sandbox daemon, the state store and the OCI bundle.
package cli

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/husk-runtime/husk/internal/config"
	"github.com/husk-runtime/husk/internal/state"
	"github.com/husk-runtime/husk/internal/version"
)

// globals are runc's global flags, plus --config.
type globals struct {
	root          string
	logPath       string
	logFormat     string
	debug         bool
	systemdCgroup bool
	configPath    string
}

func (g *globals) store() state.Store { return state.Store{Root: g.root} }

func (g *globals) config() (*config.Config, error) {
	path, explicit := config.Path(g.configPath)
	cfg, err := config.Load(path, explicit)
	if err != nil {
		return nil, err
	}
	if g.debug {
		cfg.Runtime.Debug = true
	}
	return cfg, nil
}

// absolutePaths makes the state root and the configuration file's path
// absolute: husk hands both to the daemons and stand-ins it starts, which
// work in other directories. The root's symbolic links are resolved too
// (Docker's is under /var/run, a link to /run on most systems): a daemon
// compares the root with its working directory, which the kernel reports
// with no links in it.
func (g *globals) absolutePaths() error {
	root, err := filepath.Abs(g.root)
	if err != nil {
		return fmt.Errorf("--root %s: %w", g.root, err)
	}
	if g.root, err = resolveExisting(root); err != nil {
		return fmt.Errorf("--root %s: %w", root, err)
	}
	if path, explicit := config.Path(g.configPath); explicit {
		if g.configPath, err = filepath.Abs(path); err != nil {
			return fmt.Errorf("configuration file %s: %w", path, err)
		}
	}
	return nil
}

// resolveExisting resolves the symbolic links in the part of the absolute
// path that exists; the rest, which husk creates, is kept as it is.
func resolveExisting(path string) (string, error) {
	existing, rest := path, ""
	for {
		resolved, err := filepath.EvalSymlinks(existing)
		if err == nil {
			return filepath.Join(resolved, rest), nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
		parent := filepath.Dir(existing)
		if parent == existing {
			return path, nil
		}
		rest = filepath.Join(filepath.Base(existing), rest)
		existing = parent
	}
}

// ExitError ends the program with a status and no message: the container's
// own exit status, passed through.
type ExitError struct{ Status int }

func (e *ExitError) Error() string { return fmt.Sprintf("exit status %d", e.Status) }

// Main runs the command line and returns the process's exit status.
func Main(args []string) int {
	g := &globals{}
	// Until the flags are parsed, log nothing: errors go to stderr below.
	logrus.SetOutput(io.Discard)
	root := newRoot(g)
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return 0
	}
	var exit *ExitError
	if errors.As(err, &exit) {
		return exit.Status
	}
	// Callers (containerd's runc shim, conmon) read the last error from the
	// --log file; people read stderr.
	logrus.Error(err)
	fmt.Fprintf(os.Stderr, "husk: %v\n", err)
	return 1
}

// Command is husk's command tree, for generating its documentation.
func Command() *cobra.Command { return newRoot(&globals{}) }

func newRoot(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:           "husk",
		Short:         "Run OCI containers, each inside its own lightweight virtual machine",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			if err := g.absolutePaths(); err != nil {
				return err
			}
			return setupLogging(g)
		},
		// husk --version, as runc --version: Docker and others run it.
		Version: version.Version,
	}
	root.SetVersionTemplate(versionText())
	f := root.PersistentFlags()
	f.StringVar(&g.root, "root", "/run/husk", "root directory for storage of container state")
	f.StringVar(&g.logPath, "log", "", "write log to this file (default: stderr)")
	f.StringVar(&g.logFormat, "log-format", "text", "log format: text or json")
	f.BoolVar(&g.debug, "debug", false, "enable debug logging")
	f.BoolVar(&g.systemdCgroup, "systemd-cgroup", false, "accepted for compatibility; cgroups are applied inside the guest")
	f.StringVar(&g.configPath, "config", "", "configuration file (default $"+config.EnvPath+" or "+config.DefaultPath+")")

	root.AddCommand(
		newSpecCommand(),
		newRunCommand(g),
		newStateCommand(g),
		newListCommand(g),
		newDeleteCommand(g),
		newVersionCommand(g),
		newCheckCommand(g),
		newDebugConsoleCommand(g),
		newPoolCommand(g),
		newPoolDaemonCommand(g),
		newDaemonCommand(g),
		newStandInCommand(g),
		newCreateCommand(g),
		newStartCommand(g),
		newKillCommand(g),
		newExecCommand(g),
		newPsCommand(g),
		newPauseCommand(g, true),
		newPauseCommand(g, false),
		newUpdateCommand(g),
		newEventsCommand(g),
		newFeaturesCommand(),
		newEnvCommand(g),
	)
	return root
}

func setupLogging(g *globals) error {
	switch g.logFormat {
	case "text":
		logrus.SetFormatter(&logrus.TextFormatter{DisableColors: true})
	case "json":
		logrus.SetFormatter(&logrus.JSONFormatter{})
	default:
		return fmt.Errorf("unknown log-format %q: want text or json", g.logFormat)
	}
	logrus.SetLevel(logrus.WarnLevel)
	if g.debug {
		logrus.SetLevel(logrus.DebugLevel)
	}
	if g.logPath == "" {
		// Errors go to stderr by Main; without a log file, nothing else.
		logrus.SetOutput(io.Discard)
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(g.logPath), 0o755); err != nil {
		return fmt.Errorf("log: %w", err)
	}
	f, err := os.OpenFile(g.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("log: %w", err)
	}
	logrus.SetOutput(f)
	return nil
}

// oneID checks that exactly one container id was given.
func oneID(cmd *cobra.Command, args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("%s: requires exactly one argument, the container id", cmd.Name())
	}
	return nil
}
