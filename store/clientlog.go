package store

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// The etcd client logs through zap, as JSON on stderr: during a WAN cut that is a
// "retrying of unary invoker failed" line a second, without the process's [label]. Its
// warnings and errors go to the caller's slog logger instead (component=etcd-client),
// the same message at most once per clientLogRepeat (with how many were dropped).

const clientLogRepeat = 30 * time.Second

// clientLogger is the zap logger an etcd client of this package logs with.
func clientLogger(log *slog.Logger) *zap.Logger {
	if log == nil {
		log = slog.Default()
	}
	return zap.New(&slogCore{log: log.With("component", "etcd-client"), seen: &repeats{last: map[string]repeat{}}})
}

type repeat struct {
	at      time.Time
	dropped int
}

type repeats struct {
	mu   sync.Mutex
	last map[string]repeat
}

// admit says whether msg may be logged now, and how many of it were dropped since.
func (r *repeats) admit(msg string, now time.Time) (bool, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, ok := r.last[msg]
	if ok && now.Sub(p.at) < clientLogRepeat {
		p.dropped++
		r.last[msg] = p
		return false, 0
	}
	if len(r.last) > 256 { // messages are a fixed set; bound it anyway
		clear(r.last)
	}
	r.last[msg] = repeat{at: now}
	return true, p.dropped
}

type slogCore struct {
	log    *slog.Logger
	fields []zapcore.Field
	seen   *repeats
}

func (c *slogCore) Enabled(l zapcore.Level) bool { return l >= zapcore.WarnLevel }

func (c *slogCore) With(fs []zapcore.Field) zapcore.Core {
	return &slogCore{log: c.log, fields: append(slices.Clip(c.fields), fs...), seen: c.seen}
}

func (c *slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *slogCore) Write(e zapcore.Entry, fs []zapcore.Field) error {
	ok, dropped := c.seen.admit(e.Message, e.Time)
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
