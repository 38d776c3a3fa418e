package control

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"lpmos.dev/lpmos/store"
)

// pageSize is how many rows a list shows: def without ?limit=, at most max (more is
// a 400, not a silent cut, so a script learns its page is not what it asked for).
type pageSize struct{ def, max int }

var (
	// uiPage: the pages' lists (tasks, unmatched reports, audit).
	uiPage = pageSize{def: 50, max: 200}
	// apiPage: the REST API's lists.
	apiPage = pageSize{def: 100, max: 500}
)

// page reads ?limit=, ?after= and (pages only) ?before=. The cursors are the store's
// to check: a malformed one, or one of another list or other filters, is a 400 there.
func (ps pageSize) page(q url.Values, before bool) (store.Page, error) {
	p := store.Page{Limit: ps.def, After: q.Get("after")}
	if before {
		p.Before = q.Get("before")
	} else if q.Has("before") {
		return p, &store.ValidationError{Field: "before", Message: "not supported here: follow next (?after=) from the first page"}
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > ps.max {
			return p, &store.ValidationError{Field: "limit", Message: fmt.Sprintf("%q is not 1-%d", v, ps.max)}
		}
		p.Limit = n
	}
	return p, nil
}

// pageLinks are a page's "newer" and "older" links: path with r's query (its filters
// and limit kept) and the cursor of the page beside it; "" where there is none. First
// links to the newest page when the page is not it.
type pageLinks struct{ Newer, Older, First string }

func linksFor(r *http.Request, path string, m store.PageMarks) pageLinks {
	with := func(key, cursor string) string {
		if cursor == "" && key != "" {
			return ""
		}
		q := r.URL.Query()
		q.Del("after")
		q.Del("before")
		q.Del("flash")
		if key != "" {
			q.Set(key, cursor)
		}
		if len(q) == 0 {
			return path
		}
		return path + "?" + q.Encode()
	}
	l := pageLinks{Newer: with("before", m.Prev), Older: with("after", m.Next)}
	if m.Prev != "" {
		l.First = with("", "")
	}
	return l
}
