package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Moving a region from the shared cluster to its own (docs/federation.md, "Moving a
// region to its own etcd"): read every key of the region at one revision, write them
// into the other cluster, compare both sides by count and hash, delete them from the
// shared cluster. The steps and their checks are federation.Migration's; here are the
// key-level operations and the migration's record, kept beside the registrations in
// the control plane's etcd at /os/federation/migrations/{region}.

const migrationRoot = "/os/federation/migrations/"

func migrationKey(region string) string { return migrationRoot + region }

// AuditRegionMigrate is the audit action of each step of a region's migration.
const AuditRegionMigrate = "region.migrate"

// RegionKV is one key of a region as read.
type RegionKV struct {
	Key, Value  string
	ModRevision int64
}

// RegionKeys is every key of one region in one cluster at one revision: its
// RegionPrefixes (tasks, region keys, unmatched reports, leases, indexes, audit) and
// the task index entries (/os/index/task/{id}) whose value is the region, sorted by key.
// Keys on an etcd lease (the heartbeat) are not in KVs: they vanish with their writer
// and must not outlive it in another cluster; Leased names them.
type RegionKeys struct {
	Region   string
	Revision int64
	KVs      []RegionKV
	Leased   []string
}

// Count is the number of keys (leased ones left out).
func (k RegionKeys) Count() int { return len(k.KVs) }

// Hash is the sha256 of every key and value in key order: equal hashes, equal keys.
func (k RegionKeys) Hash() string {
	h := sha256.New()
	for _, kv := range k.KVs {
		h.Write([]byte(kv.Key))
		h.Write([]byte{0})
		h.Write([]byte(kv.Value))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// ChangedSince names the keys written after rev (at most n), for saying what changed.
func (k RegionKeys) ChangedSince(rev int64, n int) (keys []string, total int) {
	for _, kv := range k.KVs {
		if kv.ModRevision > rev {
			if len(keys) < n {
				keys = append(keys, kv.Key)
			}
			total++
		}
	}
	return keys, total
}

// Kinds counts the keys by what they are ("tasks", "audit", "task index", ...), for
// a copy's account of itself.
func (k RegionKeys) Kinds() map[string]int {
	kinds := []struct{ name, prefix string }{
		{"tasks", regionTaskPrefix(k.Region)}, {"region", regionDir(k.Region)},
		{"unmatched reports", unmatchedPrefix(k.Region)}, {"dhcp leases", leasePrefix(k.Region)},
		{"mac index", openMACIndexPrefix(k.Region)}, {"mac index", lastMACIndexPrefix(k.Region)},
		{"unmatched index", unmatchedIndexPrefix(k.Region)}, {"status index", statusIndexPrefix(k.Region)},
		{"audit", auditPrefix(k.Region)}, {"task index", indexRoot + "task/"},
	}
	out := map[string]int{}
	for _, kv := range k.KVs {
		for _, c := range kinds {
			if strings.HasPrefix(kv.Key, c.prefix) {
				out[c.name]++
				break
			}
		}
	}
	return out
}

// ErrRevisionCompacted: the revision asked for is older than the cluster's history.
var ErrRevisionCompacted = errors.New("revision compacted")

// ReadRegionKeys reads every key of region at revision rev (0: now), in one
// transaction: one consistent view.
func (s *Store) ReadRegionKeys(ctx context.Context, region string, rev int64) (RegionKeys, error) {
	if err := ValidateRegion(region); err != nil {
		return RegionKeys{}, err
	}
	prefixes := append(RegionPrefixes(region), indexRoot+"task/")
	ops := make([]clientv3.Op, len(prefixes))
	for i, p := range prefixes {
		ops[i] = clientv3.OpGet(p, clientv3.WithPrefix(), clientv3.WithRev(rev))
	}
	resp, err := s.c.Txn(ctx).Then(ops...).Commit()
	if errors.Is(err, rpctypes.ErrCompacted) {
		return RegionKeys{}, fmt.Errorf("read region %s at revision %d: %w", region, rev, ErrRevisionCompacted)
	}
	if err != nil {
		return RegionKeys{}, fmt.Errorf("read region %s: %w", region, err)
	}
	k := RegionKeys{Region: region, Revision: resp.Header.Revision}
	if rev != 0 {
		k.Revision = rev
	}
	taskIndex := len(prefixes) - 1
	for i, r := range resp.Responses {
		for _, kv := range r.GetResponseRange().Kvs {
			if i == taskIndex && string(kv.Value) != region {
				continue // another region's task
			}
			if kv.Lease != 0 {
				k.Leased = append(k.Leased, string(kv.Key))
				continue
			}
			k.KVs = append(k.KVs, RegionKV{Key: string(kv.Key), Value: string(kv.Value), ModRevision: kv.ModRevision})
		}
	}
	sort.Slice(k.KVs, func(i, j int) bool { return k.KVs[i].Key < k.KVs[j].Key })
	return k, nil
}

// WriteRegionKeys writes kvs (another cluster's, as read) into this cluster, in
// transactions of at most 128 operations (etcd's default limit), each guarded on its
// keys being absent: a key some other writer put first stops the copy with
// ErrConflict. It returns the revision of the last write. On error some batches may be
// stored: the caller says so.
func (s *Store) WriteRegionKeys(ctx context.Context, kvs []RegionKV) (int64, error) {
	var rev int64
	for len(kvs) > 0 {
		batch := kvs[:min(len(kvs), maxTxnOps)]
		kvs = kvs[len(batch):]
		cmps := make([]clientv3.Cmp, len(batch))
		ops := make([]clientv3.Op, len(batch))
		for i, kv := range batch {
			cmps[i] = clientv3.Compare(clientv3.CreateRevision(kv.Key), "=", 0)
			ops[i] = clientv3.OpPut(kv.Key, kv.Value)
		}
		resp, err := s.c.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return 0, fmt.Errorf("write region keys: %w", err)
		}
		if !resp.Succeeded {
			return 0, fmt.Errorf("%w: write region keys: a key from %s to %s exists already (another writer?)", ErrConflict, batch[0].Key, batch[len(batch)-1].Key)
		}
		rev = resp.Header.Revision
	}
	return rev, nil
}

// DeleteRegionKeys deletes kvs (as this cluster's ReadRegionKeys read them), in
// transactions of at most 128, each guarded on its keys being unchanged since that
// read: a key written since stops the deletion with ErrConflict. It returns how many
// were deleted (on error, the batches before the one refused).
func (s *Store) DeleteRegionKeys(ctx context.Context, kvs []RegionKV) (int, error) {
	deleted := 0
	for len(kvs) > 0 {
		batch := kvs[:min(len(kvs), maxTxnOps)]
		kvs = kvs[len(batch):]
		cmps := make([]clientv3.Cmp, len(batch))
		ops := make([]clientv3.Op, len(batch))
		for i, kv := range batch {
			cmps[i] = clientv3.Compare(clientv3.ModRevision(kv.Key), "=", kv.ModRevision)
			ops[i] = clientv3.OpDelete(kv.Key)
		}
		resp, err := s.c.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return deleted, fmt.Errorf("delete region keys: %w", err)
		}
		if !resp.Succeeded {
			return deleted, fmt.Errorf("%w: delete region keys: a key from %s to %s changed since it was read", ErrConflict, batch[0].Key, batch[len(batch)-1].Key)
		}
		deleted += len(batch)
	}
	return deleted, nil
}

// RegionMigration is the record of a region's move to its own cluster, from the copy
// to the deletion of its keys in the control plane's etcd: what was copied (at which
// revision of each side, how many keys, their hash) and where to.
type RegionMigration struct {
	Region         string        `json:"region"`
	Target         RegionCluster `json:"target"`
	SourceRevision int64         `json:"source_revision"` // the control plane's etcd, read at
	TargetRevision int64         `json:"target_revision"` // the target, after the copy's last write
	Keys           int           `json:"keys"`
	SHA256         string        `json:"sha256"`
	CopiedAt       time.Time     `json:"copied_at"`
	// Finishing: the deletion in the control plane's etcd has begun (a finish that
	// stopped half-way is resumed, checking the keys left instead of the hash).
	Finishing bool `json:"finishing,omitempty"`
}

// PutRegionMigration stores m (replacing the region's record).
func (s *Store) PutRegionMigration(ctx context.Context, m RegionMigration) error {
	if err := m.Target.Validate(); err != nil {
		return err
	}
	if m.Region != m.Target.Region {
		return invalid("region", "migration of %s to a cluster registered for %s", m.Region, m.Target.Region)
	}
	b, _ := json.Marshal(m)
	if _, err := s.c.Put(ctx, migrationKey(m.Region), string(b)); err != nil {
		return fmt.Errorf("record region %s's migration: %w", m.Region, err)
	}
	return nil
}

// GetRegionMigration reads region's migration record; ErrNotFound when none.
func (s *Store) GetRegionMigration(ctx context.Context, region string) (RegionMigration, error) {
	if err := ValidateRegion(region); err != nil {
		return RegionMigration{}, err
	}
	resp, err := s.c.Get(ctx, migrationKey(region))
	if err != nil {
		return RegionMigration{}, fmt.Errorf("read region %s's migration: %w", region, err)
	}
	if len(resp.Kvs) == 0 {
		return RegionMigration{}, fmt.Errorf("%w: no migration of region %s in progress", ErrNotFound, region)
	}
	var m RegionMigration
	if err := json.Unmarshal(resp.Kvs[0].Value, &m); err != nil || m.Region != region {
		return RegionMigration{}, fmt.Errorf("region %s's migration record %s does not parse: %v", region, migrationKey(region), err)
	}
	return m, nil
}

// RegionMigrations lists the migrations in progress by region.
func (s *Store) RegionMigrations(ctx context.Context) ([]RegionMigration, error) {
	resp, err := s.c.Get(ctx, migrationRoot, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list region migrations: %w", err)
	}
	var out []RegionMigration
	for _, kv := range resp.Kvs {
		var m RegionMigration
		if json.Unmarshal(kv.Value, &m) == nil {
			out = append(out, m)
		}
	}
	return out, nil
}

// DeleteRegionMigration removes region's migration record (the migration is over).
func (s *Store) DeleteRegionMigration(ctx context.Context, region string) error {
	if err := ValidateRegion(region); err != nil {
		return err
	}
	if _, err := s.c.Delete(ctx, migrationKey(region)); err != nil {
		return fmt.Errorf("remove region %s's migration record: %w", region, err)
	}
	return nil
}
