//! When each blob was last pulled through each remote repository: what cache eviction goes by
//! (least recently used first, and an age limit for what nobody pulled).
//!
//! Recorded in memory on every blob served or fetched, and written to the metadata database
//! in one transaction per batch (`flush`: every minute, and before a collection reads it).
//! With the shared store the records go to its `binaryrepo_access` table, where each node's
//! batch only ever moves a time forward. Times are in whole seconds: an LRU needs no more, and a blob pulled many times a second
//! costs one map update each.

use std::collections::HashMap;
use std::sync::Mutex;

use redb::TableDefinition;

use crate::digest::Digest;
use crate::storage::DigestMap;
use crate::storage::meta::{MetaError, MetaStore};

/// `<repository>\0<digest>` → unix seconds of the last pull.
const ACCESS: TableDefinition<&str, u64> = TableDefinition::new("access");
const SEP: char = '\u{0}';
/// Past this many unwritten records the next record writes the batch at once: memory stays
/// bounded whatever the request rate.
const PENDING_MAX: usize = 50_000;

fn db_err<E: Into<redb::Error>>(e: E) -> MetaError {
    MetaError::Store(Box::new(e.into()))
}

pub struct AccessLog {
    /// Its table lives in the metadata store's database, which is reopened after a failed write.
    meta: MetaStore,
    pending: Mutex<Pending>,
}

/// Unwritten records by repository, then blob: a blob pulled again updates its time in place,
/// without a copy of its names.
#[derive(Default)]
struct Pending {
    by_repo: HashMap<String, DigestMap<u64>, foldhash::fast::RandomState>,
    len: usize,
}

impl AccessLog {
    pub fn new(meta: MetaStore) -> AccessLog {
        AccessLog { meta, pending: Mutex::default() }
    }

    pub fn record(&self, repo: &str, digest: &Digest, now: u64) {
        let full = {
            let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let added = match p.by_repo.get_mut(repo) {
                Some(blobs) => match blobs.get_mut(digest) {
                    Some(at) => {
                        *at = now;
                        false
                    }
                    None => blobs.insert(digest.clone(), now).is_none(),
                },
                None => {
                    p.by_repo.insert(repo.to_owned(), DigestMap::from_iter([(digest.clone(), now)]));
                    true
                }
            };
            p.len += usize::from(added);
            p.len >= PENDING_MAX
        };
        if full && let Err(e) = self.flush() {
            tracing::warn!(error = %e, "blob access times not recorded");
        }
    }

    /// Writes what was recorded since the last flush.
    pub fn flush(&self) -> Result<usize, MetaError> {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if pending.len == 0 {
            return Ok(0);
        }
        let batch: Vec<((String, Digest), u64)> =
            pending.by_repo.into_iter().flat_map(|(repo, blobs)| blobs.into_iter().map(move |(d, at)| ((repo.clone(), d), at))).collect();
        if let Some(pg) = self.meta.shared() {
            let rows: Vec<_> = batch.iter().map(|((repo, digest), at)| (repo.clone(), digest.to_string(), *at)).collect();
            pg.record_access(&rows)?;
            return Ok(rows.len());
        }
        let txn = self.meta.database()?.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(ACCESS).map_err(db_err)?;
            for ((repo, digest), at) in &batch {
                let key = format!("{repo}{SEP}{digest}");
                table.insert(key.as_str(), *at).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)?;
        Ok(batch.len())
    }

    /// Last pull of every blob of `repo` that has one recorded.
    pub fn of_repository(&self, repo: &str) -> Result<HashMap<Digest, u64>, MetaError> {
        self.flush()?;
        if let Some(pg) = self.meta.shared() {
            return Ok(pg.access_of(repo)?.into_iter().filter_map(|(d, at)| Some((d.parse::<Digest>().ok()?, at))).collect());
        }
        let txn = self.meta.database()?.begin_read().map_err(db_err)?;
        let table = match txn.open_table(ACCESS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(HashMap::new()),
            Err(e) => return Err(db_err(e)),
        };
        let start = format!("{repo}{SEP}");
        let mut out = HashMap::new();
        for entry in table.range(start.as_str()..).map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            let Some(d) = k.value().strip_prefix(start.as_str()) else { break };
            if let Ok(d) = d.parse::<Digest>() {
                out.insert(d, v.value());
            }
        }
        Ok(out)
    }

    /// Drops the records of blobs evicted from `repo`.
    pub fn forget(&self, repo: &str, digests: &[Digest]) -> Result<(), MetaError> {
        if digests.is_empty() {
            return Ok(());
        }
        if let Some(pg) = self.meta.shared() {
            let digests: Vec<String> = digests.iter().map(ToString::to_string).collect();
            return pg.forget_access(repo, &digests);
        }
        let txn = self.meta.database()?.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(ACCESS).map_err(db_err)?;
            for d in digests {
                table.remove(format!("{repo}{SEP}{d}").as_str()).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Algorithm;

    #[test]
    fn recorded_flushed_and_scoped() {
        let dir = tempfile::tempdir().unwrap();
        let mut stores = vec![(crate::storage::MetaStore::open(&dir.path().join("m.redb")).unwrap(), String::new())];
        if let Some(url) = crate::storage::meta::tests::postgres_url() {
            stores.push((crate::storage::MetaStore::connect(&url, 2).unwrap(), format!("t{}-", uuid::Uuid::new_v4().simple())));
        }
        for (meta, p) in stores {
            let (r, rr) = (format!("{p}r"), format!("{p}rr"));
            let log = AccessLog::new(meta.clone());
            let a = Digest::of(Algorithm::Sha256, b"a");
            assert!(log.of_repository(&r).unwrap().is_empty());
            log.record(&r, &a, 10);
            log.record(&r, &a, 20);
            log.record(&rr, &a, 30);
            let seen = log.of_repository(&r).unwrap();
            assert_eq!(seen.get(&a), Some(&20));
            assert_eq!(seen.len(), 1);
            if meta.shared().is_some() {
                // Another node's older record does not move the time back.
                log.record(&r, &a, 15);
                assert_eq!(log.of_repository(&r).unwrap().get(&a), Some(&20));
            }
            log.forget(&r, std::slice::from_ref(&a)).unwrap();
            assert!(log.of_repository(&r).unwrap().is_empty());
            assert_eq!(log.of_repository(&rr).unwrap().get(&a), Some(&30));
        }
    }
}
