package cli

import (
	"github.com/spf13/cobra"

	"github.com/husk-runtime/husk/internal/control"
)

func newDebugConsoleCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "debug-console <container-id>",
		Short: "open a shell in a sandbox's guest, outside its containers (needs debug_console = true)",
		Long: `Opens a shell in the guest of a running sandbox, beside the agent and
outside every container: for looking at the guest's processes, mounts and
kernel. The sandbox must have been started with debug_console = true in
husk's configuration, which puts a static busybox in its guest image.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			if _, err := liveContainer(g, id); err != nil {
				return err
			}
			req := &control.Request{Op: control.OpDebugConsole}
			files, err := stdioRequest(req, true)
			if err != nil {
				return err
			}
			defer makeRaw()()
			// The reply comes when the shell has exited.
			_, err = call(g, id, req, files, 0)
			files[0].Close()
			return err
		},
	}
}
