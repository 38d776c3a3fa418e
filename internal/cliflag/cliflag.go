// Package cliflag holds what the project's admin subcommands share in parsing their
// command lines. It imports nothing of the project.
package cliflag

import "flag"

// ParseInterleaved parses flags that may come before, between or after the positional
// arguments (`users add NAME --role admin`, `approve ID --digest D`), and returns the
// positional ones.
func ParseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}
