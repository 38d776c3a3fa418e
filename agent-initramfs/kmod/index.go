package kmod

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// AliasFile is the name of the alias index inside a modules directory. Its format is
// depmod's: "alias PATTERN MODULE" lines.
const AliasFile = "modules.alias"

// ErrNotFound means a module is not in the modules directory.
var ErrNotFound = errors.New("module not found")

type aliasEntry struct {
	pattern, module string
}

// Index knows the modules of one directory: their files, aliases and dependencies.
// It is not safe for concurrent use.
type Index struct {
	Dir     string
	files   map[string]string // module name -> file path
	aliases []aliasEntry
	infos   map[string]Info
}

// Open indexes the module files under dir (any depth). Aliases come from
// dir/modules.alias when present, else from every module's .modinfo (slower, but the
// Debian package ships no alias file for its full tree).
func Open(dir string) (*Index, error) {
	ix := &Index{Dir: dir, files: map[string]string{}, infos: map[string]Info{}}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && isModuleFile(d.Name()) {
			ix.files[Normalize(d.Name())] = p
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("index modules in %s: %w", dir, err)
	}
	f, err := os.Open(filepath.Join(dir, AliasFile))
	switch {
	case err == nil:
		defer f.Close()
		if err := ix.readAliases(f); err != nil {
			return nil, fmt.Errorf("%s: %w", f.Name(), err)
		}
	case errors.Is(err, fs.ErrNotExist):
		for _, name := range ix.Modules() {
			info, err := ix.Info(name)
			if err != nil {
				return nil, err
			}
			for _, a := range info.Aliases {
				ix.aliases = append(ix.aliases, aliasEntry{a, name})
			}
		}
	default:
		return nil, err
	}
	return ix, nil
}

func (ix *Index) readAliases(r io.Reader) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 3 || f[0] != "alias" {
			continue // comments and blank lines, as depmod writes them
		}
		ix.aliases = append(ix.aliases, aliasEntry{f[1], Normalize(f[2])})
	}
	return sc.Err()
}

// Modules returns the names of all indexed modules, sorted.
func (ix *Index) Modules() []string {
	names := make([]string, 0, len(ix.files))
	for n := range ix.files {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Path returns the file of a module.
func (ix *Index) Path(name string) (string, error) {
	p, ok := ix.files[Normalize(name)]
	if !ok {
		return "", fmt.Errorf("%s: %w in %s", name, ErrNotFound, ix.Dir)
	}
	return p, nil
}

// Info returns (and caches) a module's .modinfo.
func (ix *Index) Info(name string) (Info, error) {
	name = Normalize(name)
	if info, ok := ix.infos[name]; ok {
		return info, nil
	}
	p, err := ix.Path(name)
	if err != nil {
		return Info{}, err
	}
	info, err := ReadInfo(p)
	if err != nil {
		return Info{}, fmt.Errorf("module %s: %w", name, err)
	}
	if info.Name == "" {
		info.Name = name
	}
	ix.infos[name] = info
	return info, nil
}

// Match returns the modules whose alias patterns match a device's modalias, in index
// order, each once. Only modules present in the directory are returned.
func (ix *Index) Match(modalias string) []string {
	var out []string
	seen := map[string]bool{}
	for _, a := range ix.aliases {
		if seen[a.module] {
			continue
		}
		if _, ok := ix.files[a.module]; !ok {
			continue
		}
		// Aliases are fnmatch patterns without '/', which is what path.Match implements.
		if ok, _ := path.Match(a.pattern, modalias); ok {
			seen[a.module] = true
			out = append(out, a.module)
		}
	}
	return out
}

// Closure returns names and everything they depend on, dependencies before their
// users. A missing hard dependency is an error; a missing soft dependency is skipped.
func (ix *Index) Closure(names ...string) ([]string, error) {
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name string, soft bool) error
	visit = func(name string, soft bool) error {
		name = Normalize(name)
		switch state[name] {
		case 1:
			return nil // a cycle only happens through softdeps; the kernel copes
		case 2:
			return nil
		}
		info, err := ix.Info(name)
		if err != nil {
			if soft && errors.Is(err, ErrNotFound) {
				return nil
			}
			return err
		}
		state[name] = 1
		for _, d := range info.SoftPre {
			if err := visit(d, true); err != nil {
				return err
			}
		}
		for _, d := range info.Depends {
			if err := visit(d, false); err != nil {
				return fmt.Errorf("%s depends on %w", name, err)
			}
		}
		state[name] = 2
		order = append(order, name)
		return nil
	}
	for _, n := range names {
		if err := visit(n, false); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// WriteAlias writes the aliases of the indexed modules in modules.alias format, sorted,
// so an image's alias file is reproducible.
func (ix *Index) WriteAlias(w io.Writer) error {
	lines := make([]string, 0, len(ix.aliases))
	for _, a := range ix.aliases {
		if _, ok := ix.files[a.module]; ok {
			lines = append(lines, "alias "+a.pattern+" "+a.module)
		}
	}
	sort.Strings(lines)
	bw := bufio.NewWriter(w)
	for _, l := range lines {
		bw.WriteString(l)
		bw.WriteByte('\n')
	}
	return bw.Flush()
}
