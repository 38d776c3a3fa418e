package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/images"
	"lpmos.dev/lpmos/images/seed"
)

// WriteImage is the installer: it streams the approved image (decompressed, sha256
// checked against the plan's, written with several writes in flight, fsynced and read
// back) onto job.Target, the approved disk (or, in host mode, the file standing in for
// it). Any failure leaves the task failed with the reason; the caller never reboots
// into a disk that did not verify.
func WriteImage(ctx context.Context, job Job, p *Progress) error {
	target := job.Target
	p.Update(ctx, contract.Progress{Stage: contract.StagePreparing, Message: "installing onto " + contract.DescribeDisk(job.Disk)}, true)
	// O_DIRECT on block devices: the disk stays busy without page-cache throttling
	// and the read-back reads the disk, not the cache. Files (host mode, tmpfs) may
	// not support it.
	st, err := os.Stat(target)
	direct := err == nil && st.Mode()&os.ModeDevice != 0
	// Only a host-mode --target that does not exist yet is created: the approved
	// disk itself must already be there.
	create := target != job.Disk.Path && errors.Is(err, os.ErrNotExist)
	dst, err := images.OpenTarget(target, images.TargetOptions{Direct: direct, Create: create})
	if err != nil {
		return fmt.Errorf("open %s: %w", target, err)
	}
	defer dst.Close()
	// The plan's sha256, not the offer's: checkApproval made them equal, and the plan
	// is what a person approved.
	src := images.Source{URL: job.Image.URL, Format: images.Format(job.Image.Format), Size: job.Plan.Image.Size, SHA256: job.Plan.Image.SHA256}
	var lastStage contract.Stage
	res, err := images.Write(ctx, src, dst, images.Options{Header: imageAuth(job.Image.URL, p.api), Progress: func(pr images.Progress) {
		stage := map[images.Stage]contract.Stage{images.StageDownloading: contract.StageDownloading, images.StageSyncing: contract.StageWriting, images.StageVerifying: contract.StageVerifying}[pr.Stage]
		if stage == "" {
			return
		}
		r := contract.Progress{Stage: stage, Percentage: pr.Percent(), BytesDone: pr.Done, BytesTotal: pr.Total, RateBps: pr.Rate, ETASeconds: pr.ETA.Seconds(),
			Message: fmt.Sprintf("%s: %d / %d MiB onto %s", stage, pr.Done>>20, pr.Total>>20, target)}
		p.Update(ctx, r, stage != lastStage)
		lastStage = stage
	}})
	if err != nil {
		// The stable code first ("checksum_mismatch: ..."): operators filter failed
		// tasks by it; the rest says what happened.
		return fmt.Errorf("%s: write %s onto %s: %w", images.Reason(err), job.Image.URL, target, err)
	}
	if err := dst.Close(); err != nil {
		return fmt.Errorf("close %s: %w", target, err)
	}
	p.log.Info("image written and verified", "target", target, "bytes", res.Bytes, "sha256", res.SHA256, "elapsed", res.Elapsed, "retries", res.Retries)
	if s := job.Plan.Seed; s != nil {
		p.Update(ctx, contract.Progress{Stage: contract.StageVerifying, Percentage: 100,
			Message: fmt.Sprintf("writing the cloud-init seed: %s partition %d at %d MiB", s.Table, s.Partition, s.StartBytes>>20)}, true)
		// In host mode the file stands for the approved disk: give it the disk's
		// size, so the seed lands where it would on the disk.
		if st, err := os.Stat(target); err == nil && target != job.Disk.Path && st.Mode().IsRegular() && st.Size() < job.Disk.SizeBytes {
			if err := os.Truncate(target, job.Disk.SizeBytes); err != nil {
				return fmt.Errorf("seed_failed: size %s like the disk: %w", target, err)
			}
		}
		if err := seed.Write(target, *s, job.Seed); err != nil {
			return fmt.Errorf("seed_failed: %w", err)
		}
		p.log.Info("cloud-init seed written", "target", target, "table", s.Table, "partition", s.Partition, "start_bytes", s.StartBytes)
	}
	return nil
}

// imageAuth is the agent token header for the image download: the appliance streams
// images only to the agent of an approved task. Only to the regional API's own origin
// (the URL the approval hands out): a token never goes to another host.
func imageAuth(imageURL string, api *contract.Client) http.Header {
	img, err1 := url.Parse(imageURL)
	base, err2 := url.Parse(api.BaseURL)
	if api.Token == "" || err1 != nil || err2 != nil || img.Scheme != base.Scheme || img.Host != base.Host {
		return nil
	}
	return http.Header{"Authorization": {"Bearer " + api.Token}}
}
