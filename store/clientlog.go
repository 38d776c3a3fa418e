package store

import (
	"log/slog"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"lpmos.dev/lpmos/internal/zapslog"
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
	return zapslog.New(log.With("component", "etcd-client"), zapcore.WarnLevel, clientLogRepeat, nil)
}
