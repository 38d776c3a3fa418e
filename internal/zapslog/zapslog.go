// Package zapslog hands the etcd libraries' zap logging to log/slog: the process's
// own logger (the appliance's [label], a component name), its levels, and a cap on a
// message repeated while a link is down. It imports nothing of the project.
package zapslog

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// New is a zap logger writing entries at min or above to log, the same message at most
// once per repeat (0: every one), with how many were dropped in between. skip (may be
// nil) drops an entry by its message (an embedded etcd's "server closed" on a clean stop).
func New(log *slog.Logger, min zapcore.Level, repeat time.Duration, skip func(msg string) bool) *zap.Logger {
	if log == nil {
		log = slog.Default()
	}
	return zap.New(&slogCore{log: log, min: min, repeat: repeat, skip: skip, seen: &repeats{last: map[string]lastSeen{}}})
}

type lastSeen struct {
	at      time.Time
	dropped int
}

type repeats struct {
	mu   sync.Mutex
	last map[string]lastSeen
}

// admit says whether msg may be logged now, and how many of it were dropped since.
func (r *repeats) admit(msg string, now time.Time, every time.Duration) (bool, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, ok := r.last[msg]
	if ok && now.Sub(p.at) < every {
		p.dropped++
		r.last[msg] = p
		return false, 0
	}
	if len(r.last) > 256 { // messages are a fixed set; bound it anyway
		clear(r.last)
	}
	r.last[msg] = lastSeen{at: now}
	return true, p.dropped
}

type slogCore struct {
	log    *slog.Logger
	min    zapcore.Level
	repeat time.Duration
	skip   func(string) bool
	fields []zapcore.Field
	seen   *repeats
}

func (c *slogCore) Enabled(l zapcore.Level) bool { return l >= c.min }

func (c *slogCore) With(fs []zapcore.Field) zapcore.Core {
	n := *c
	n.fields = append(slices.Clip(c.fields), fs...)
	return &n
}

func (c *slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *slogCore) Write(e zapcore.Entry, fs []zapcore.Field) error {
	if c.skip != nil && c.skip(e.Message) {
		return nil
	}
	ok, dropped := c.seen.admit(e.Message, e.Time, c.repeat)
	if !ok {
		return nil
	}
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range c.fields {
		f.AddTo(enc)
	}
	for _, f := range fs {
		f.AddTo(enc)
	}
	keys := make([]string, 0, len(enc.Fields))
	for k := range enc.Fields {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	attrs := make([]slog.Attr, 0, len(keys)+1)
	for _, k := range keys {
		attrs = append(attrs, slog.Any(k, enc.Fields[k]))
	}
	if dropped > 0 {
		attrs = append(attrs, slog.Int("repeated", dropped))
	}
	level := slog.LevelWarn
	if e.Level >= zapcore.ErrorLevel {
		level = slog.LevelError
	}
	c.log.LogAttrs(context.Background(), level, e.Message, attrs...)
	return nil
}

func (c *slogCore) Sync() error { return nil }
