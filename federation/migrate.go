package federation

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	"lpmos.dev/lpmos/store"
)

// Migration moves one region from the shared cluster (the control plane's own etcd,
// Home) to its own cluster (Target), in four steps an operator runs one by one
// (lpmos-control regions migrate copy|verify|register|finish; docs/federation.md):
//
//	Copy    every key of the region at one revision of Home into Target (which must
//	        hold none), then the migration's record in Home: revisions, count, hash
//	Verify  Home's keys of the region unchanged since the copy (count and hash), and
//	        Target at the copy's revision holding exactly them
//	Register  Verify, then register Target as the region's cluster: the control plane
//	        reads and writes the region there from then on
//	Finish  Verify, then delete the region's keys from Home, and the record
//
// Nothing is ever deleted from Home that Target does not hold: a write in Home after
// the copy (an appliance still running against it) stops every later step.
type Migration struct {
	Home, Target *store.Store
	Region       string
	Out          io.Writer // one line per thing done or found
}

func (m Migration) say(format string, args ...any) {
	if m.Out != nil {
		fmt.Fprintf(m.Out, format+"\n", args...)
	}
}

// Copy copies the region into to's cluster (m.Target, dialled with to). force replaces
// keys of the region the target holds already (a copy that stopped half-way, or a
// fresh one after the shared keys changed) and copies even while the region's
// appliance still has a heartbeat in Home.
func (m Migration) Copy(ctx context.Context, to store.RegionCluster, force bool) (store.RegionMigration, error) {
	if to.Region != m.Region {
		return store.RegionMigration{}, fmt.Errorf("migrate %s: the target is registered for region %q", m.Region, to.Region)
	}
	if err := to.Validate(); err != nil {
		return store.RegionMigration{}, err
	}
	if c, ok, err := registered(ctx, m.Home, m.Region); err != nil {
		return store.RegionMigration{}, err
	} else if ok {
		return store.RegionMigration{}, fmt.Errorf("migrate %s: the region is registered on its own cluster already (%s): nothing to copy from the shared etcd",
			m.Region, strings.Join(c.Endpoints, ","))
	}
	src, err := m.Home.ReadRegionKeys(ctx, m.Region, 0)
	if err != nil {
		return store.RegionMigration{}, fmt.Errorf("migrate %s: read the shared etcd: %w", m.Region, err)
	}
	if src.Count() == 0 {
		return store.RegionMigration{}, fmt.Errorf("migrate %s: the shared etcd holds no key of region %s: nothing to copy (a new region needs only regions add %s --etcd URL)",
			m.Region, m.Region, m.Region)
	}
	if len(src.Leased) > 0 && !force {
		return store.RegionMigration{}, fmt.Errorf("migrate %s: region %s's appliance is alive (%s in the shared etcd): stop it before the copy, "+
			"or what it writes after the copy is lost (--force copies anyway)", m.Region, m.Region, src.Leased[0])
	}
	dst, err := m.Target.ReadRegionKeys(ctx, m.Region, 0)
	if err != nil {
		return store.RegionMigration{}, fmt.Errorf("migrate %s: read the target: %w", m.Region, err)
	}
	// Another cluster with the same keys written at the same revisions does not
	// happen: etcd's cluster ids do not tell (every single-member etcd started with the
	// defaults has the same one), the revisions do.
	if dst.Count() > 0 && slices.Equal(dst.KVs, src.KVs) {
		return store.RegionMigration{}, fmt.Errorf("migrate %s: %s is the control plane's own etcd (it holds region %s's keys at the same revisions), not another cluster",
			m.Region, strings.Join(to.Endpoints, ","), m.Region)
	}
	if len(dst.Leased) > 0 {
		return store.RegionMigration{}, fmt.Errorf("migrate %s: region %s's appliance runs on the target already (%s there): "+
			"a copy would overwrite what it wrote; stop it first", m.Region, m.Region, dst.Leased[0])
	}
	if n := dst.Count(); n > 0 {
		if !force {
			first := dst.KVs[0].Key
			return store.RegionMigration{}, fmt.Errorf("migrate %s: the target holds %d key(s) of region %s already (%s ...): "+
				"--force replaces them with the shared etcd's", m.Region, n, m.Region, first)
		}
		deleted, err := m.Target.DeleteRegionKeys(ctx, dst.KVs)
		if err != nil {
			return store.RegionMigration{}, fmt.Errorf("migrate %s: clear the target (%d of %d keys deleted): %w", m.Region, deleted, dst.Count(), err)
		}
		m.say("target: deleted %d key(s) of region %s left there before (--force)", deleted, m.Region)
	}
	rev, err := m.Target.WriteRegionKeys(ctx, src.KVs)
	if err != nil {
		return store.RegionMigration{}, fmt.Errorf("migrate %s: copy (the target may hold part of it: copy again with --force): %w", m.Region, err)
	}
	rec := store.RegionMigration{Region: m.Region, Target: to, SourceRevision: src.Revision, TargetRevision: rev,
		Keys: src.Count(), SHA256: src.Hash(), CopiedAt: time.Now().UTC()}
	// The copy as written, and the source now: both still what was read.
	if err := m.checkTarget(ctx, rec, src, false); err != nil {
		return store.RegionMigration{}, err
	}
	if _, err := m.checkSource(ctx, rec, force); err != nil {
		return store.RegionMigration{}, fmt.Errorf("%w (the target holds the stale copy: stop the appliance, copy again with --force)", err)
	}
	if err := m.Home.PutRegionMigration(ctx, rec); err != nil {
		return store.RegionMigration{}, err
	}
	m.audit(ctx, "copy", rec)
	m.say("copied %d key(s) of region %s (%s) from the shared etcd at revision %d to %s (revision %d), sha256 %s",
		rec.Keys, m.Region, kinds(src), src.Revision, strings.Join(to.Endpoints, ","), rev, rec.SHA256)
	if len(src.Leased) > 0 {
		m.say("not copied: %s (on an etcd lease: the appliance writes its own there)", strings.Join(src.Leased, ", "))
	}
	return rec, nil
}

// Verify checks the migration recorded in Home: the region's keys in Home unchanged
// since the copy, and the target at the copy's revision holding exactly them. It says
// what the target holds now (once the appliance runs there, it writes there).
func (m Migration) Verify(ctx context.Context) (store.RegionMigration, error) {
	rec, _, err := m.verify(ctx)
	return rec, err
}

func (m Migration) verify(ctx context.Context) (store.RegionMigration, store.RegionKeys, error) {
	rec, err := m.Home.GetRegionMigration(ctx, m.Region)
	if err != nil {
		return rec, store.RegionKeys{}, fmt.Errorf("migrate %s: %w (start with regions migrate copy)", m.Region, err)
	}
	src, err := m.checkSource(ctx, rec, false)
	if err != nil {
		return rec, src, err
	}
	if err := m.checkTarget(ctx, rec, src, true); err != nil {
		return rec, src, err
	}
	return rec, src, nil
}

// checkSource reads the region in Home now and refuses when it is not what was
// copied: a key written or deleted since, or (unless alive is allowed) an appliance
// alive against Home.
func (m Migration) checkSource(ctx context.Context, rec store.RegionMigration, alive bool) (store.RegionKeys, error) {
	src, err := m.Home.ReadRegionKeys(ctx, m.Region, 0)
	if err != nil {
		return src, fmt.Errorf("migrate %s: read the shared etcd: %w", m.Region, err)
	}
	changed, n := src.ChangedSince(rec.SourceRevision, 3)
	switch {
	case rec.Finishing && n == 0 && src.Count() <= rec.Keys:
		// A finish that stopped half-way: what is left is unchanged since the copy.
		m.say("shared etcd: %d of the %d copied key(s) left to delete, none changed since the copy", src.Count(), rec.Keys)
	case !rec.Finishing && src.Count() == rec.Keys && src.Hash() == rec.SHA256:
		m.say("shared etcd: %d key(s) of region %s, unchanged since the copy at revision %d (sha256 %s)", src.Count(), m.Region, rec.SourceRevision, rec.SHA256)
	default:
		what := fmt.Sprintf("%d key(s) then, %d now", rec.Keys, src.Count())
		if n > 0 {
			what += fmt.Sprintf("; %d written since, e.g. %s", n, strings.Join(changed, ", "))
		}
		return src, fmt.Errorf("migrate %s: region %s's keys in the shared etcd changed since the copy at revision %d (%s): "+
			"something still writes there (its appliance?), and the target lacks those changes; nothing deleted. "+
			"Stop what writes, then regions migrate copy %s --force (before the appliance runs on its own etcd; after that, compare by hand)",
			m.Region, m.Region, rec.SourceRevision, what, m.Region)
	}
	if len(src.Leased) > 0 && !alive {
		return src, fmt.Errorf("migrate %s: region %s's appliance is alive against the shared etcd (%s): stop it, or point it at its own etcd",
			m.Region, m.Region, src.Leased[0])
	}
	return src, nil
}

// checkTarget reads the target at the copy's revision: exactly the copied keys. When
// that revision is compacted (an etcd keeps about an hour of history), it compares the
// target now with src (the shared etcd's keys, checked unchanged since the copy) key
// by key instead: each one there with the same value or written after the copy (by
// the appliance, once it runs there); one missing is counted (the appliance deletes
// keys too: a completed task's MAC index entry, a matched report).
func (m Migration) checkTarget(ctx context.Context, rec store.RegionMigration, src store.RegionKeys, now bool) error {
	at, err := m.Target.ReadRegionKeys(ctx, m.Region, rec.TargetRevision)
	compacted := errors.Is(err, store.ErrRevisionCompacted)
	switch {
	case compacted:
		m.say("target: its history at the copy's revision %d is compacted: comparing the target now with the shared etcd", rec.TargetRevision)
	case err != nil:
		return fmt.Errorf("migrate %s: read the target: %w", m.Region, err)
	case at.Count() != rec.Keys || at.Hash() != rec.SHA256:
		return fmt.Errorf("migrate %s: the target at the copy's revision %d holds %d key(s) of region %s (sha256 %s), not the %d copied (sha256 %s): "+
			"something else wrote there during the copy; copy again with --force", m.Region, rec.TargetRevision, at.Count(), m.Region, at.Hash(), rec.Keys, rec.SHA256)
	default:
		m.say("target: %d key(s) of region %s at the copy's revision %d, identical (sha256 %s)", at.Count(), m.Region, rec.TargetRevision, rec.SHA256)
	}
	if !now {
		return nil
	}
	cur, err := m.Target.ReadRegionKeys(ctx, m.Region, 0)
	if err != nil {
		return fmt.Errorf("migrate %s: read the target: %w", m.Region, err)
	}
	_, written := cur.ChangedSince(rec.TargetRevision, 0)
	if !compacted {
		if cur.Hash() == rec.SHA256 {
			m.say("target now: %d key(s), as copied", cur.Count())
		} else {
			m.say("target now: %d key(s), %d written since the copy (its appliance runs there)", cur.Count(), written)
		}
		return nil
	}
	have := make(map[string]store.RegionKV, cur.Count())
	for _, kv := range cur.KVs {
		have[kv.Key] = kv
	}
	same, missing := 0, 0
	for _, kv := range src.KVs {
		t, ok := have[kv.Key]
		switch {
		case !ok:
			missing++
		case t.Value == kv.Value:
			same++
		case t.ModRevision <= rec.TargetRevision:
			return fmt.Errorf("migrate %s: the target holds %s with another value than the shared etcd, written by the copy or before it: copy again with --force",
				m.Region, kv.Key)
		}
	}
	m.say("target now: %d key(s): %d of the %d copied as they were, %d written since the copy, %d gone since (deleted there after the copy)",
		cur.Count(), same, src.Count(), written, missing)
	return nil
}

// Register verifies, then registers the target as the region's cluster (audited): the
// control plane follows the registration and serves the region from there.
func (m Migration) Register(ctx context.Context) error {
	rec, _, err := m.verify(ctx)
	if err != nil {
		return err
	}
	if err := m.Home.PutRegionCluster(ctx, rec.Target); err != nil {
		return err
	}
	m.audit(ctx, "register", rec)
	m.say("registered %s as region %s's etcd: the control plane reads and writes region %s there from now on",
		strings.Join(rec.Target.Endpoints, ","), m.Region, m.Region)
	return nil
}

// Finish verifies, then deletes the region's keys (and its task index entries) from
// the shared etcd, each guarded on being unchanged since the check, and ends the
// migration. The target must be registered as the region's cluster first (Register),
// unless static: the control plane names it in its --regions-file or --region flags.
func (m Migration) Finish(ctx context.Context, static bool) error {
	rec, src, err := m.verify(ctx)
	if err != nil {
		return err
	}
	c, ok, err := registered(ctx, m.Home, m.Region)
	if err != nil {
		return err
	}
	if !static && (!ok || !slices.Equal(c.Endpoints, rec.Target.Endpoints)) {
		return fmt.Errorf("migrate %s: the target %s is not registered as region %s's cluster yet: regions migrate register %s first "+
			"(the control plane still reads the region in the shared etcd)", m.Region, strings.Join(rec.Target.Endpoints, ","), m.Region, m.Region)
	}
	rec.Finishing = true
	if err := m.Home.PutRegionMigration(ctx, rec); err != nil {
		return err
	}
	deleted, err := m.Home.DeleteRegionKeys(ctx, src.KVs)
	if err != nil {
		return fmt.Errorf("migrate %s: %d of %d key(s) deleted from the shared etcd, then: %w (finish again)", m.Region, deleted, src.Count(), err)
	}
	if err := m.Home.DeleteRegionMigration(ctx, m.Region); err != nil {
		return err
	}
	m.audit(ctx, "finish", rec)
	m.say("deleted %d key(s) of region %s (%s) from the shared etcd: the migration is done", deleted, m.Region, kinds(src))
	return nil
}

// Abort ends a migration that is not registered: its record goes, the target's copy
// stays (a later copy needs --force), the shared etcd is untouched.
func (m Migration) Abort(ctx context.Context) error {
	rec, err := m.Home.GetRegionMigration(ctx, m.Region)
	if err != nil {
		return fmt.Errorf("migrate %s: %w", m.Region, err)
	}
	if c, ok, err := registered(ctx, m.Home, m.Region); err != nil {
		return err
	} else if ok {
		return fmt.Errorf("migrate %s: the region is registered on %s: the control plane serves it from there; "+
			"regions remove %s first (what was written there since is not in the shared etcd)", m.Region, strings.Join(c.Endpoints, ","), m.Region)
	}
	if err := m.Home.DeleteRegionMigration(ctx, m.Region); err != nil {
		return err
	}
	m.audit(ctx, "abort", rec)
	m.say("migration of region %s aborted: the shared etcd still holds the region; the copy on %s is left as it is",
		m.Region, strings.Join(rec.Target.Endpoints, ","))
	return nil
}

// audit records a step in the control plane's audit trail (its control scope: the
// region's own keys are what the migration compares).
func (m Migration) audit(ctx context.Context, step string, rec store.RegionMigration) {
	_ = m.Home.Audit(ctx, store.AuditRegionMigrate, "", m.Region, map[string]string{
		"step": step, "keys": fmt.Sprint(rec.Keys), "sha256": rec.SHA256,
		"endpoints": strings.Join(rec.Target.Endpoints, ","), "source_revision": fmt.Sprint(rec.SourceRevision)})
}

// registered is region's registration in home, if any.
func registered(ctx context.Context, home *store.Store, region string) (store.RegionCluster, bool, error) {
	cs, _, _, err := home.RegionClusters(ctx)
	if err != nil {
		return store.RegionCluster{}, false, err
	}
	for _, c := range cs {
		if c.Region == region {
			return c, true, nil
		}
	}
	return store.RegionCluster{}, false, nil
}

// kinds is "12 tasks, 3 audit, ..." in a stable order.
func kinds(k store.RegionKeys) string {
	counts := k.Kinds()
	names := make([]string, 0, len(counts))
	for n := range counts {
		names = append(names, n)
	}
	sort.Strings(names)
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = fmt.Sprintf("%d %s", counts[n], n)
	}
	return strings.Join(parts, ", ")
}
