// Package imagecmd is the lpmos-image command: it manages an appliance's images
// directory (add, list) and writes an image to a disk or file the way the agent does
// (write). cmd/lpmos-image is its thin main.
package imagecmd

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/images"
)

const usage = `usage:
  lpmos-image add   --dir DIR --os-type TYPE --os-version VERSION [--format raw|gz|zst|xz] FILE
  lpmos-image list  --dir DIR [--json]
  lpmos-image write --url URL --format F --size BYTES --sha256 HEX [--agent-token T] [--direct] [--no-readback] [--json] TARGET`

// Run runs lpmos-image with args (without the program name), writing results to stdout.
func Run(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return errors.New(usage)
	}
	switch args[0] {
	case "add":
		return add(ctx, args[1:], stdout)
	case "list":
		return list(args[1:], stdout)
	case "write":
		return write(ctx, args[1:], stdout)
	case "-h", "--help", "help":
		fmt.Fprintln(stdout, usage)
		return nil
	}
	return fmt.Errorf("unknown command %q\n%s", args[0], usage)
}

func add(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("add", flag.ContinueOnError)
	dir := fs.String("dir", "", "images directory (the appliance's --images-dir)")
	osType := fs.String("os-type", "", "OS type, e.g. ubuntu")
	osVersion := fs.String("os-version", "", "OS version, e.g. 22.04")
	format := fs.String("format", "", "raw, gz, zst or xz (default: from the file's extension)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" || *osType == "" || *osVersion == "" || fs.NArg() != 1 {
		return errors.New("add: --dir, --os-type, --os-version and one FILE are required")
	}
	file := fs.Arg(0)
	var err error
	if _, err := os.Stat(file); err != nil && !strings.ContainsRune(file, '/') {
		file = filepath.Join(*dir, file) // a name already in the images dir
	}
	f := images.FormatFromName(file)
	if isQcow2(file) { // official cloud images: converted to raw with qemu-img
		if file, err = convertQcow2(ctx, file, *dir); err != nil {
			return err
		}
		f = images.FormatRaw
	}
	if *format != "" {
		if f, err = images.ParseFormat(*format); err != nil {
			return fmt.Errorf("add: --format: %w", err)
		}
	}
	cat, err := images.OpenCatalog(*dir)
	if err != nil {
		return fmt.Errorf("add: %w", err)
	}
	e, err := cat.Add(ctx, contract.OSRef{OSType: *osType, OSVersion: *osVersion}, file, f)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "added %s %s: %s (%s, %d bytes, %d decompressed, sha256 %s)\n",
		e.OSType, e.OSVersion, e.File, e.Format, e.CompressedSize, e.Size, e.SHA256)
	return nil
}

func list(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("list", flag.ContinueOnError)
	dir := fs.String("dir", "", "images directory")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("list: --dir is required")
	}
	cat, err := images.OpenCatalog(*dir)
	if err != nil {
		return fmt.Errorf("list: %w", err)
	}
	entries := cat.List()
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(entries)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "OS TYPE\tVERSION\tFILE\tFORMAT\tSIZE\tDECOMPRESSED\tSHA256")
	for _, e := range entries {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%s\n", e.OSType, e.OSVersion, e.File, e.Format, e.CompressedSize, e.Size, e.SHA256)
	}
	return tw.Flush()
}

func write(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("write", flag.ContinueOnError)
	var src images.Source
	var format string
	fs.StringVar(&src.URL, "url", "", "image URL")
	fs.StringVar(&format, "format", "", "raw, gz, zst or xz")
	fs.Int64Var(&src.Size, "size", 0, "decompressed size in bytes")
	fs.StringVar(&src.SHA256, "sha256", "", "sha256 of the decompressed image")
	token := fs.String("agent-token", "", "sent as Authorization: Bearer: an appliance streams an image only to its approved task's agent (the approval's url, ?task=ID, and that task's agent token)")
	direct := fs.Bool("direct", false, "write with O_DIRECT")
	noReadBack := fs.Bool("no-readback", false, "skip the read-back verification")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("write: one TARGET (block device or file) is required")
	}
	f, err := images.ParseFormat(format)
	if err != nil {
		return fmt.Errorf("write: --format: %w", err)
	}
	src.Format = f
	// Files may be created; device nodes never are.
	create := !strings.HasPrefix(filepath.Clean(fs.Arg(0)), "/dev/")
	dst, err := images.OpenTarget(fs.Arg(0), images.TargetOptions{Direct: *direct, Create: create})
	if err != nil {
		return fmt.Errorf("write: %w", err)
	}
	defer dst.Close()
	opt := images.Options{NoReadBack: *noReadBack}
	if *token != "" {
		opt.Header = http.Header{"Authorization": {"Bearer " + *token}}
	}
	if !*asJSON {
		opt.Progress = func(p images.Progress) { fmt.Fprintln(stdout, p) }
	}
	res, err := images.Write(ctx, src, dst, opt)
	if err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(res)
	}
	fmt.Fprintf(stdout, "wrote %d bytes in %s (stream %s, sync %s, verify %s), sha256 %s\n",
		res.Bytes, res.Elapsed.Round(time.Millisecond), res.Stream.Round(time.Millisecond),
		res.Sync.Round(time.Millisecond), res.Verify.Round(time.Millisecond), res.SHA256)
	return nil
}
