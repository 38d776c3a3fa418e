// Command modbundle copies the kernel modules listed in a file, with their
// dependencies, into a flat directory with a modules.alias: the modules part of the
// initramfs (scripts/build-initramfs.sh).
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"strings"

	"lpmos.dev/lpmos/agent-initramfs/kmod"
)

func main() {
	src := flag.String("src", "", "kernel modules directory (lib/modules/<release>)")
	dst := flag.String("dst", "", "output directory")
	list := flag.String("list", "", "file naming the modules to ship, one per line, # comments")
	flag.Parse()
	if err := run(*src, *dst, *list); err != nil {
		fmt.Fprintln(os.Stderr, "modbundle:", err)
		os.Exit(1)
	}
}

func run(src, dst, list string) error {
	if src == "" || dst == "" || list == "" {
		return fmt.Errorf("-src, -dst and -list are required")
	}
	names, err := readList(list)
	if err != nil {
		return err
	}
	order, err := kmod.Bundle(src, dst, names)
	if err != nil {
		return err
	}
	var total int64
	entries, err := os.ReadDir(dst)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if info, err := e.Info(); err == nil {
			total += info.Size()
		}
	}
	fmt.Printf("modbundle: %d modules (%d listed + dependencies), %.1f MiB uncompressed: %s\n",
		len(order), len(names), float64(total)/(1<<20), strings.Join(order, " "))
	return nil
}

func readList(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var names []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		names = append(names, strings.Fields(line)...)
	}
	return names, sc.Err()
}
