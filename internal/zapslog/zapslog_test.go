package zapslog_test

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"lpmos.dev/lpmos/internal/zapslog"
)

func TestLevelsRepeatsSkipAndFields(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil)).With("label", "dc1")
	z := zapslog.New(log, zapcore.WarnLevel, time.Hour, func(msg string) bool { return msg == "server closed" })
	z.Info("below the level")
	z.With(zap.String("member", "m1")).Warn("slow fdatasync", zap.Duration("took", 2*time.Second))
	z.Warn("slow fdatasync") // a repeat within the hour: dropped
	z.Error("server closed")
	z.Error("lost the leader")
	out := buf.String()
	for _, want := range []string{`level=WARN msg="slow fdatasync" label=dc1 member=m1 took=2s`, `level=ERROR msg="lost the leader" label=dc1`} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
	for _, not := range []string{"below the level", "server closed"} {
		if strings.Contains(out, not) {
			t.Errorf("%q logged:\n%s", not, out)
		}
	}
	if n := strings.Count(out, "slow fdatasync"); n != 1 {
		t.Errorf("a repeated message logged %d times:\n%s", n, out)
	}
}

// Without a repeat window every entry is written; the count of dropped repeats rides on
// the next one let through.
func TestRepeatCount(t *testing.T) {
	var buf bytes.Buffer
	z := zapslog.New(slog.New(slog.NewTextHandler(&buf, nil)), zapcore.WarnLevel, time.Minute, nil)
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	core := z.Core()
	for i, at := range []time.Time{t0, t0.Add(time.Second), t0.Add(2 * time.Second), t0.Add(2 * time.Minute)} {
		e := zapcore.Entry{Level: zapcore.WarnLevel, Time: at, Message: "retrying"}
		if ce := core.Check(e, nil); ce != nil {
			ce.Write()
		} else if i == 0 {
			t.Fatal("a warning was not let through")
		}
	}
	out := buf.String()
	if n := strings.Count(out, "retrying"); n != 2 || !strings.Contains(out, "repeated=2") {
		t.Fatalf("want 2 lines, the second with repeated=2:\n%s", out)
	}
}
