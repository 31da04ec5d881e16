package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/spf13/cobra"

	"github.com/husk-runtime/husk/internal/oci"
	"github.com/husk-runtime/husk/internal/state"
	"github.com/husk-runtime/husk/internal/version"
)

// containerState is runc's JSON for `state` and `list --format json`.
type containerState struct {
	OCIVersion  string            `json:"ociVersion"`
	ID          string            `json:"id"`
	PID         int               `json:"pid"`
	Status      string            `json:"status"`
	Bundle      string            `json:"bundle"`
	Rootfs      string            `json:"rootfs"`
	Created     time.Time         `json:"created"`
	Owner       string            `json:"owner"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

func toContainerState(st *state.State) containerState {
	pid := 0
	if st.Status != state.Stopped && st.StandIn.Alive() {
		pid = st.StandIn.PID
	}
	return containerState{
		OCIVersion: specs.Version, ID: st.ID, PID: pid, Status: string(st.Status),
		Bundle: st.Bundle, Rootfs: st.Rootfs, Created: st.Created, Owner: st.Owner, Annotations: st.Annotations,
	}
}

// loadContainer reads a container's state, in runc's words when it is absent.
func loadContainer(g *globals, id string) (*state.State, error) {
	if err := oci.ValidateID(id); err != nil {
		return nil, err
	}
	st, err := g.store().Load(id)
	if errors.Is(err, state.ErrNotExist) {
		return nil, fmt.Errorf("container %s does not exist", id)
	}
	return st, err
}

func newStateCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "state ID",
		Short: "output the state of a container (runc's JSON)",
		Args:  oneID,
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := loadContainer(g, args[0])
			if err != nil {
				return err
			}
			data, err := json.MarshalIndent(toContainerState(st), "", "  ")
			if err != nil {
				return err
			}
			fmt.Println(string(data))
			return nil
		},
	}
}

func newListCommand(g *globals) *cobra.Command {
	var format string
	var quiet bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "list containers started by husk with the given root",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			all, err := g.store().List()
			if err != nil {
				return err
			}
			if quiet {
				for _, st := range all {
					fmt.Println(st.ID)
				}
				return nil
			}
			switch format {
			case "table":
				w := tabwriter.NewWriter(os.Stdout, 12, 1, 3, ' ', 0)
				fmt.Fprint(w, "ID\tPID\tSTATUS\tBUNDLE\tCREATED\tOWNER\n")
				for _, st := range all {
					cs := toContainerState(st)
					fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\t%s\n", cs.ID, cs.PID, cs.Status, cs.Bundle,
						cs.Created.Format(time.RFC3339Nano), cs.Owner)
				}
				return w.Flush()
			case "json":
				out := make([]containerState, 0, len(all))
				for _, st := range all {
					out = append(out, toContainerState(st))
				}
				return json.NewEncoder(os.Stdout).Encode(out)
			}
			return fmt.Errorf("invalid format option %q: want table or json", format)
		},
	}
	cmd.Flags().StringVarP(&format, "format", "f", "table", "table or json")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "display only container IDs")
	return cmd
}

func newDeleteCommand(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "delete [--force] ID",
		Short: "delete a container and its VM",
		Args:  oneID,
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			st, err := loadContainer(g, id)
			if err != nil {
				// As runc: --force removes what is left of a container
				// whose state cannot be read, and an absent one is no error.
				if force && oci.ValidateID(id) == nil {
					forceDelete(g, id)
					return nil
				}
				return err
			}
			if st.Daemon.Alive() && st.Status != state.Stopped && st.Status != state.Created && !force {
				return fmt.Errorf("cannot delete container %s that is not stopped: %s", id, st.Status)
			}
			// Without a daemon (crashed or killed) nothing can answer, so
			// what is left is removed directly, as with --force.
			if !st.Daemon.Alive() || force {
				forceDelete(g, id)
			} else if err := deleteSandbox(g, id, st.Status == state.Created); err != nil {
				return err
			}
			runHooksWarning(st, oci.Poststop, specs.StateStopped)
			return nil
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "forcibly delete the container if it is still running (uses SIGKILL)")
	return cmd
}

func newVersionCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "print husk's version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			fmt.Print(versionText())
			return nil
		},
	}
}

// versionText is what husk version and husk --version print, in runc's form.
func versionText() string {
	return fmt.Sprintf("husk version %s\nspec: %s\n", version.Version, specs.Version)
}
