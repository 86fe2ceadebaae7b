//! Cache limits of remote repositories: what was pulled least recently goes first until the
//! repository is within its size budget, and what nobody pulled for `max_age_days` goes too.
//!
//! Blobs are shared by content, so a blob another repository also needs stays on disk: evicting
//! it would free nothing. An evicted blob is simply gone from the store; the plugin finds it
//! missing on the next request and fetches it from upstream again, as after any collection.

use std::time::SystemTime;

use super::live::LiveSet;
use super::run::{Counters, Run};
use super::sweep::remove_unless_touched;
use crate::digest::Digest;
use crate::repos::CacheLimits;
use crate::storage::BlobStore;
use crate::storage::access::AccessLog;

/// What the eviction of one repository found and did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Evicted {
    pub removed: Vec<Digest>,
    pub bytes: u64,
    /// cached bytes left, shared blobs included
    pub left: u64,
}

struct Cached {
    digest: Digest,
    size: u64,
    last_pulled: u64,
}

/// `needed_elsewhere`: digests another repository's plugin listed as live.
// One call per repository from the run, each argument a different piece of the run's state.
#[allow(clippy::too_many_arguments)]
pub fn evict(
    store: &BlobStore,
    access: &AccessLog,
    repo: &str,
    live: &LiveSet,
    needed_elsewhere: &LiveSet,
    limits: CacheLimits,
    now: u64,
    run: &Run,
) -> std::io::Result<Evicted> {
    let pulled = access.of_repository(repo).map_err(std::io::Error::other)?;
    let mut cached: Vec<Cached> = Vec::with_capacity(live.len());
    for digest in live.iter() {
        let (size, modified) = match std::fs::metadata(store.path(&digest)) {
            Ok(meta) => (meta.len(), meta.modified().unwrap_or(SystemTime::now())),
            // Not a local file (object storage): its size from the backend.
            Err(_) => match store.stat(&digest) {
                Ok(Some(size)) => (size, SystemTime::now()),
                _ => continue,
            },
        };
        // Pulled before access times were recorded: the blob's own time stands in.
        let fallback = modified.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let last_pulled = pulled.get(&digest).copied().unwrap_or(fallback);
        cached.push(Cached { digest, size, last_pulled });
    }
    cached.sort_by_key(|c| c.last_pulled);
    let mut out = Evicted { left: cached.iter().map(|c| c.size).sum(), ..Evicted::default() };
    let too_old = limits.max_age_days.map(|d| now.saturating_sub(d.saturating_mul(86_400)));
    for c in cached {
        let expired = too_old.is_some_and(|cutoff| c.last_pulled < cutoff);
        let over = limits.max_bytes.is_some_and(|max| out.left > max);
        if !expired && !over {
            // sorted oldest first: nothing after this one is older or needed to get under budget
            break;
        }
        if needed_elsewhere.contains(&c.digest) {
            continue;
        }
        if remove_unless_touched(store, &c.digest)? {
            out.left -= c.size;
            out.bytes += c.size;
            Counters::add(&run.counters.evicted, 1);
            Counters::add(&run.counters.evicted_bytes, c.size);
            out.removed.push(c.digest);
        }
    }
    access.forget(repo, &out.removed).map_err(std::io::Error::other)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gc::run::Trigger;
    use crate::storage::{Layout, MetaStore};
    use std::time::Duration;

    const DAY: u64 = 86_400;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: BlobStore,
        access: AccessLog,
        run: Run,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(Layout::new(dir.path())).unwrap();
        let access = AccessLog::new(MetaStore::open(&dir.path().join("m.redb")).unwrap());
        store.touches().begin_collecting();
        Fixture { _dir: dir, store, access, run: Run::new(1, Trigger::Api, Duration::ZERO) }
    }

    fn blob(f: &Fixture, size: usize, seed: u8, pulled: u64) -> Digest {
        let d = f.store.write_small(&vec![seed; size], None).unwrap();
        f.access.record("r", &d, pulled);
        d
    }

    #[test]
    fn least_recently_pulled_go_first_until_within_budget() {
        let f = fixture();
        let now = 100 * DAY;
        let (old, mid, new) = (blob(&f, 400, 1, now - 30), blob(&f, 400, 2, now - 20), blob(&f, 400, 3, now - 10));
        f.store.touches().end_collecting();
        f.store.touches().begin_collecting(); // the writes above were references; this run starts after them
        let live: LiveSet = [old.clone(), mid.clone(), new.clone()].into_iter().collect();
        let limits = CacheLimits { max_bytes: Some(900), max_age_days: None };
        let out = evict(&f.store, &f.access, "r", &live, &LiveSet::default(), limits, now, &f.run).unwrap();
        assert_eq!(out.removed, vec![old.clone()]);
        assert_eq!((out.bytes, out.left), (400, 800));
        assert!(f.store.stat(&old).unwrap().is_none() && f.store.stat(&mid).unwrap().is_some());
        assert!(!f.access.of_repository("r").unwrap().contains_key(&old));
    }

    #[test]
    fn old_content_goes_and_shared_or_referenced_blobs_stay() {
        let f = fixture();
        let now = 100 * DAY;
        let stale = blob(&f, 10, 1, now - 40 * DAY);
        let shared = blob(&f, 10, 2, now - 40 * DAY);
        let touched = blob(&f, 10, 3, now - 40 * DAY);
        let fresh = blob(&f, 10, 4, now - DAY);
        f.store.touches().end_collecting();
        f.store.touches().begin_collecting();
        f.store.touches().touch(&touched).unwrap(); // pulled while the run goes on
        let live: LiveSet = [stale.clone(), shared.clone(), touched.clone(), fresh.clone()].into_iter().collect();
        let limits = CacheLimits { max_bytes: None, max_age_days: Some(30) };
        let out = evict(&f.store, &f.access, "r", &live, &[shared.clone()].into_iter().collect(), limits, now, &f.run).unwrap();
        assert_eq!(out.removed, vec![stale]);
        for kept in [shared, touched, fresh] {
            assert!(f.store.stat(&kept).unwrap().is_some());
        }
    }
}
