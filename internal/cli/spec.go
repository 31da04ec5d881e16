package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/husk-runtime/husk/internal/oci"
)

func newSpecCommand() *cobra.Command {
	var bundle string
	cmd := &cobra.Command{
		Use:   "spec",
		Short: "create a new specification file (config.json), as runc spec does",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			path := filepath.Join(bundle, "config.json")
			if _, err := os.Stat(path); err == nil {
				return fmt.Errorf("file %s exists: remove it first", path)
			} else if !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			data, err := json.MarshalIndent(oci.DefaultSpec(), "", "\t")
			if err != nil {
				return err
			}
			return os.WriteFile(path, append(data, '\n'), 0o644)
		},
	}
	cmd.Flags().StringVarP(&bundle, "bundle", "b", ".", "path to the root of the bundle directory")
	return cmd
}
