package agent

import (
	"context"
	"errors"
	"fmt"
	"os"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/images"
)

// WriteImage is the installer: it streams the approved image (decompressed, sha256
// checked, written with several writes in flight, fsynced and read back) onto
// job.Target when one is given (a file in host mode, or a device), else onto the
// disk ChooseDisk picks from the inventory. Any failure leaves the task failed with
// the reason; the caller never reboots into a disk that did not verify.
func WriteImage(ctx context.Context, job Job, p *Progress) error {
	target := job.Target
	if target == "" {
		d, err := contract.ChooseDisk(job.Hardware.Disks, job.Disk, job.Image.Size, job.Hardware.BootDisk)
		if err != nil {
			return err
		}
		target = d.Path
		p.Update(ctx, contract.Progress{Stage: contract.StagePreparing, Message: "installing onto " + contract.DescribeDisk(d)}, true)
	}
	// O_DIRECT on block devices: the disk stays busy without page-cache throttling
	// and the read-back reads the disk, not the cache. Files (host mode, tmpfs) may
	// not support it.
	st, err := os.Stat(target)
	direct := err == nil && st.Mode()&os.ModeDevice != 0
	// Only an explicit --target that does not exist yet is created (host mode): a
	// disk the agent chose must already be there.
	create := job.Target != "" && errors.Is(err, os.ErrNotExist)
	dst, err := images.OpenTarget(target, images.TargetOptions{Direct: direct, Create: create})
	if err != nil {
		return fmt.Errorf("open %s: %w", target, err)
	}
	defer dst.Close()
	src := images.Source{URL: job.Image.URL, Format: images.Format(job.Image.Format), Size: job.Image.Size, SHA256: job.Image.SHA256}
	var lastStage contract.Stage
	res, err := images.Write(ctx, src, dst, images.Options{Progress: func(pr images.Progress) {
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
	return nil
}
