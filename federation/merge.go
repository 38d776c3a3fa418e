package federation

import (
	"context"
	"encoding/base64"
	"slices"
	"sort"
	"strings"
	"sync"

	"lpmos.dev/lpmos/store"
)

// A list across regions (tasks, unmatched reports, the audit trail of every region)
// merges one list per source (home, and each region cluster live or from its
// mirror), newest first by id. Its cursor is one place in the merged order (the id
// and region of a row), from which each source's own cursor is made (store's
// *PageCursor), so every page asks each source for the rows beyond that place: a walk
// sees every row exactly once, however the rows are spread over the clusters.

// pos is a place in a merged list: newest first by id, then label (the region).
type pos struct{ id, label string }

func (a pos) newerThan(b pos) bool { return a.id > b.id || (a.id == b.id && a.label > b.label) }

// source is one list of a merge.
type source[T any] struct {
	region string // the region cluster's; "" for home
	// page reads one page of this list; stale says it came from a mirror.
	page func(ctx context.Context, p store.Page) (items []T, m store.PageMarks, stale bool, err error)
	// cursor is this list's cursor at p (After it: the rows older than p).
	cursor func(p pos) string
	// keep filters rows (home's rows of a region registered elsewhere: leftovers).
	keep func(T) bool
}

const cursorPrefix = "fleet."

func encodeCursor(scope string, p pos) string {
	return cursorPrefix + base64.RawURLEncoding.EncodeToString([]byte(scope+"\x00"+p.id+"\x00"+p.label))
}

var errOtherList = "the cursor belongs to another list or other filters: start again from the first page"

func decodeCursor(field, scope, c string) (pos, error) {
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(c, cursorPrefix))
	parts := strings.Split(string(b), "\x00")
	if !strings.HasPrefix(c, cursorPrefix) && err == nil && len(parts) == 3 {
		return pos{}, &store.ValidationError{Field: field, Message: errOtherList} // one region's list's
	}
	if !strings.HasPrefix(c, cursorPrefix) || err != nil || len(c) > 1024 || len(parts) != 3 {
		return pos{}, &store.ValidationError{Field: field, Message: "not a cursor of this list (use the next or prev value a list returned)"}
	}
	if parts[0] != scope {
		return pos{}, &store.ValidationError{Field: field, Message: errOtherList}
	}
	if parts[1] == "" || strings.ContainsAny(parts[1], "/\x00") {
		return pos{}, &store.ValidationError{Field: field, Message: "the cursor names no place in this list"}
	}
	return pos{id: parts[1], label: parts[2]}, nil
}

// merged is a merged page and the regions served from memory.
type merged[T any] struct {
	items []T
	marks store.PageMarks
	stale []string
}

// mergePage reads page p of the merged list of srcs (scope names the list and its
// filters, for the cursor), with the store's paging semantics: After the older rows,
// Before the newer ones (the first page when fewer than a page are newer).
func mergePage[T any](ctx context.Context, scope string, srcs []source[T], key func(T) pos, p store.Page) (merged[T], error) {
	if p.Limit < 1 || p.Limit > store.MaxPageLimit {
		return merged[T]{}, &store.ValidationError{Field: "limit", Message: "not 1-5000"}
	}
	if p.After != "" && p.Before != "" {
		return merged[T]{}, &store.ValidationError{Field: "before", Message: "give after or before, not both"}
	}
	var at *pos
	newer := p.Before != ""
	if field, c := "after", p.After; c != "" || newer {
		if newer {
			field, c = "before", p.Before
		}
		a, err := decodeCursor(field, scope, c)
		if err != nil {
			return merged[T]{}, err
		}
		at = &a
	}
	n := p.Limit + 1
	results := make([][]T, len(srcs))
	stale := make([]bool, len(srcs))
	errs := make([]error, len(srcs))
	var wg sync.WaitGroup
	for i, s := range srcs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if newer {
				results[i], stale[i], errs[i] = s.newer(ctx, *at, n, key)
			} else {
				results[i], stale[i], errs[i] = s.older(ctx, at, n)
			}
		}()
	}
	wg.Wait()
	var out merged[T]
	var all []T
	for i := range srcs {
		if errs[i] != nil {
			return merged[T]{}, errs[i]
		}
		all = append(all, results[i]...)
		if stale[i] && !slices.Contains(out.stale, srcs[i].region) {
			out.stale = append(out.stale, srcs[i].region)
		}
	}
	sort.Strings(out.stale)
	if newer {
		// Oldest first: the rows closest to the cursor.
		sort.Slice(all, func(i, j int) bool { return key(all[j]).newerThan(key(all[i])) })
		if len(all) <= p.Limit {
			// Nothing newer than a page: it is the first page, and a first page is full.
			return mergePage(ctx, scope, srcs, key, store.Page{Limit: p.Limit})
		}
		all = all[:p.Limit]
		slices.Reverse(all)
		out.items = all
		out.marks = store.PageMarks{Prev: encodeCursor(scope, key(all[0])), Next: encodeCursor(scope, key(all[len(all)-1]))}
		return out, nil
	}
	sort.Slice(all, func(i, j int) bool { return key(all[i]).newerThan(key(all[j])) })
	if len(all) > p.Limit {
		all = all[:p.Limit]
		out.marks.Next = encodeCursor(scope, key(all[len(all)-1]))
	}
	if at != nil {
		out.marks.Prev = encodeCursor(scope, *at)
		if len(all) > 0 {
			out.marks.Prev = encodeCursor(scope, key(all[0]))
		}
	}
	out.items = all
	return out, nil
}

// older reads up to n kept rows older than at (nil: the newest), newest first.
func (s source[T]) older(ctx context.Context, at *pos, n int) ([]T, bool, error) {
	var out []T
	c, stale := "", false
	if at != nil {
		c = s.cursor(*at)
	}
	for {
		items, m, st, err := s.page(ctx, store.Page{Limit: n, After: c})
		if err != nil {
			return nil, false, err
		}
		stale = stale || st
		for _, it := range items {
			if s.keep == nil || s.keep(it) {
				out = append(out, it)
			}
		}
		if len(out) >= n || m.Next == "" {
			return out, stale, nil
		}
		c = m.Next // rows were left out: read on
	}
}

// newer reads up to n kept rows newer than at and closest to it (any order).
func (s source[T]) newer(ctx context.Context, at pos, n int, key func(T) pos) ([]T, bool, error) {
	var out []T
	c, stale := s.cursor(at), false
	for {
		items, m, st, err := s.page(ctx, store.Page{Limit: n, Before: c})
		if err != nil {
			return nil, false, err
		}
		stale = stale || st
		for _, it := range items {
			if key(it).newerThan(at) && (s.keep == nil || s.keep(it)) {
				out = append(out, it)
			}
		}
		// Prev is "" when the list answered with its first page: nothing newer is left.
		if m.Prev == "" || len(out) >= n {
			return out, stale, nil
		}
		c = m.Prev
	}
}

// regionPage checks a one-region page request: the region's name, and a cursor of that
// region's list (not of the merged one).
func regionPage(region string, p store.Page) error {
	if err := store.ValidateRegion(region); err != nil {
		return err
	}
	return storeCursors(p)
}

// storeCursors refuses a merged list's cursor on one region's list (whose cursors are
// the store's), with the store's words.
func storeCursors(p store.Page) error {
	for field, c := range map[string]string{"after": p.After, "before": p.Before} {
		if strings.HasPrefix(c, cursorPrefix) {
			return &store.ValidationError{Field: field, Message: errOtherList}
		}
	}
	return nil
}
