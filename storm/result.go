package storm

import (
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Result is what a storm measured.
type Result struct {
	mu         sync.Mutex
	Machines   int
	Finished   int
	Failed     int
	Errors     map[string]int // failed attempts by stage:kind (retried ones included)
	Stages     map[string][]time.Duration
	Bytes      map[string]int64
	Wall       time.Duration
	CPUSeconds float64 // the appliance's user+system CPU time during the storm
	PeakRSSMB  float64 // the appliance's VmHWM
}

func newResult(n int) *Result {
	return &Result{Machines: n, Errors: map[string]int{}, Stages: map[string][]time.Duration{}, Bytes: map[string]int64{}}
}

func (r *Result) finish() { r.mu.Lock(); r.Finished++; r.mu.Unlock() }

func (r *Result) record(stage string, d time.Duration) {
	r.mu.Lock()
	r.Stages[stage] = append(r.Stages[stage], d)
	r.mu.Unlock()
}

func (r *Result) countError(kind string) { r.mu.Lock(); r.Errors[kind]++; r.mu.Unlock() }

func (r *Result) addBytes(stage string, n int64) { r.mu.Lock(); r.Bytes[stage] += n; r.mu.Unlock() }

// ErrorCount is every failed attempt, retried or not.
func (r *Result) ErrorCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, c := range r.Errors {
		n += c
	}
	return n
}

// Quantile is stage's q-quantile (nearest rank), 0 without samples.
func (r *Result) Quantile(stage string, q float64) time.Duration {
	r.mu.Lock()
	d := slices.Clone(r.Stages[stage])
	r.mu.Unlock()
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	k := int(math.Ceil(q*float64(len(d)))) - 1
	return d[max(0, min(k, len(d)-1))]
}

// Summary is the final line.
func (r *Result) Summary() string {
	return fmt.Sprintf("storm: machines=%d finished=%d errors=%d p99_report_s=%.3f p99_total_s=%.3f cpu_s=%.2f rss_mb=%.0f",
		r.Machines, r.Finished, r.ErrorCount(), r.Quantile("report", .99).Seconds(), r.Quantile("total", .99).Seconds(), r.CPUSeconds, r.PeakRSSMB)
}

// Print writes the stage table, the errors by kind and the summary line.
func (r *Result) Print(w io.Writer) {
	fmt.Fprintf(w, "%-12s %6s %9s %9s %9s %9s %10s\n", "stage", "n", "p50_s", "p95_s", "p99_s", "max_s", "MB")
	for _, st := range Stages {
		r.mu.Lock()
		n, b := len(r.Stages[st]), r.Bytes[st]
		r.mu.Unlock()
		if n == 0 {
			continue
		}
		fmt.Fprintf(w, "%-12s %6d %9.3f %9.3f %9.3f %9.3f %10.1f\n", st, n, r.Quantile(st, .5).Seconds(), r.Quantile(st, .95).Seconds(),
			r.Quantile(st, .99).Seconds(), r.Quantile(st, 1).Seconds(), float64(b)/1e6)
	}
	r.mu.Lock()
	kinds := make([]string, 0, len(r.Errors))
	for k := range r.Errors {
		kinds = append(kinds, k)
	}
	slices.Sort(kinds)
	for _, k := range kinds {
		fmt.Fprintf(w, "error %-24s %d\n", k, r.Errors[k])
	}
	fmt.Fprintf(w, "wall %.2fs, failed %d\n", r.Wall.Seconds(), r.Failed)
	r.mu.Unlock()
	fmt.Fprintln(w, r.Summary())
}

// procCPU is a process's user+system CPU seconds (/proc/PID/stat, clock ticks of
// 1/100 s, Linux's USER_HZ).
func procCPU(pid int) (float64, error) {
	if pid <= 0 {
		return 0, fmt.Errorf("no pid")
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:]) // after the command name: state is f[0], utime f[11], stime f[12]
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	u, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	return (u + st) / 100, nil
}

// procPeakRSSMB is a process's peak resident set (VmHWM) in MiB.
func procPeakRSSMB(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, err := strconv.ParseFloat(f[1], 64)
			return kb / 1024, err
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmHWM", pid)
}
