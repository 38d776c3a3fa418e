package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"lpmos.dev/lpmos/appliance/regionapi"
)

// DownloadToFile is host mode's installer: a plain HTTP download of the image file into
// job.Target, checked against the catalog's sha256 when it has one. (Decompression,
// resume and block devices are the images package's streaming writer.)
func DownloadToFile(ctx context.Context, job Job, p *Progress) error {
	if job.Target == "" {
		return errors.New("no --target file to install into")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, job.Image.URL, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("download %s: %w", job.Image.URL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("download %s: HTTP %d", job.Image.URL, resp.StatusCode)
	}
	total := resp.ContentLength
	f, err := os.OpenFile(job.Target, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	start := time.Now()
	var done int64
	buf := make([]byte, 1<<20)
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if _, err := f.Write(buf[:n]); err != nil {
				return fmt.Errorf("write %s: %w", job.Target, err)
			}
			h.Write(buf[:n])
			done += int64(n)
			p.Update(ctx, progressOf("downloading", done, total, start), false)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return fmt.Errorf("download %s: %w", job.Image.URL, rerr)
		}
	}
	if total > 0 && done != total {
		return fmt.Errorf("short download: %d of %d bytes", done, total)
	}
	p.Update(ctx, progressOf("writing", done, total, start), true)
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", job.Target, err)
	}
	p.Update(ctx, regionapi.ProgressRequest{Stage: "verifying", Percentage: 100, BytesDone: done, BytesTotal: done, Message: "checking sha256"}, true)
	if want := job.Image.SHA256; want != "" {
		if got := hex.EncodeToString(h.Sum(nil)); got != want {
			return fmt.Errorf("sha256 mismatch: got %s, catalog says %s", got, want)
		}
	}
	return f.Close()
}

func progressOf(stage string, done, total int64, start time.Time) regionapi.ProgressRequest {
	r := regionapi.ProgressRequest{Stage: stage, BytesDone: done, BytesTotal: total}
	if el := time.Since(start).Seconds(); el > 0 {
		r.RateBps = float64(done) / el
	}
	if total > 0 {
		r.Percentage = float64(done) * 100 / float64(total)
		if r.RateBps > 0 {
			r.ETASeconds = float64(total-done) / r.RateBps
		}
	}
	r.Message = fmt.Sprintf("%d / %d MiB", done>>20, total>>20)
	return r
}
