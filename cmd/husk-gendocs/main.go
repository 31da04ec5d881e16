// husk-gendocs writes husk's man pages and bash completion from the command
// definitions, so that they never drift from the flags: husk-gendocs -o DIR.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra/doc"

	"github.com/husk-runtime/husk/internal/cli"
)

func main() {
	out := flag.String("o", "build/docs", "output directory")
	flag.Parse()
	if err := generate(*out); err != nil {
		fmt.Fprintf(os.Stderr, "husk-gendocs: %v\n", err)
		os.Exit(1)
	}
}

func generate(out string) error {
	root := cli.Command()
	root.DisableAutoGenTag = true
	manDir := filepath.Join(out, "man")
	if err := os.MkdirAll(manDir, 0o755); err != nil {
		return err
	}
	header := &doc.GenManHeader{Title: "HUSK", Section: "8", Source: "husk"}
	if err := doc.GenManTree(root, header, manDir); err != nil {
		return fmt.Errorf("man pages: %w", err)
	}
	completion := filepath.Join(out, "husk.bash")
	if err := root.GenBashCompletionFileV2(completion, true); err != nil {
		return fmt.Errorf("bash completion: %w", err)
	}
	return nil
}
