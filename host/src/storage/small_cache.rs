//! Small blobs (manifests, image configs, tag-sized documents) kept in memory.
//!
//! A manifest GET is a few hundred bytes; reading it from disk costs more in thread hops than
//! the read itself. Blobs are content-addressed, so a cached entry never goes stale: it only has
//! to be dropped when the blob is removed. A reader that read from disk while a removal ran
//! must not put the removed blob back, hence the removal generation.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use quick_cache::Weighter;
use quick_cache::sync::Cache;

use crate::digest::Digest;

/// Blobs up to this size are cached.
pub const ENTRY_MAX: u64 = 256 * 1024;
/// Bytes cached in all.
const TOTAL: u64 = 16 << 20;

#[derive(Clone)]
struct ByLength;

impl Weighter<Digest, Bytes> for ByLength {
    fn weight(&self, _key: &Digest, value: &Bytes) -> u64 {
        value.len() as u64 + 64
    }
}

pub struct SmallCache {
    cache: Cache<Digest, Bytes, ByLength>,
    removals: AtomicU64,
}

/// What a reader saw before it went to disk; see [`SmallCache::insert_if_unchanged`].
#[derive(Clone, Copy)]
pub struct Generation(u64);

impl SmallCache {
    pub fn new() -> SmallCache {
        // ~1 KiB per manifest: the estimate only sizes the initial table.
        SmallCache { cache: Cache::with_weighter((TOTAL / 1024) as usize, TOTAL, ByLength), removals: AtomicU64::new(0) }
    }

    pub fn get(&self, digest: &Digest) -> Option<Bytes> {
        self.cache.get(digest)
    }

    pub fn generation(&self) -> Generation {
        Generation(self.removals.load(Ordering::Acquire))
    }

    /// Caches what was read from disk, unless a removal ran since `seen` was taken.
    pub fn insert_if_unchanged(&self, digest: &Digest, bytes: &Bytes, seen: Generation) {
        if bytes.len() as u64 <= ENTRY_MAX && self.removals.load(Ordering::Acquire) == seen.0 {
            self.cache.insert(digest.clone(), bytes.clone());
        }
    }

    /// Call after a blob file was removed.
    pub fn removed(&self, digest: &Digest) {
        self.removals.fetch_add(1, Ordering::AcqRel);
        self.cache.remove(digest);
    }

    /// Call after blob files were removed in bulk (garbage collection).
    pub fn clear(&self) {
        self.removals.fetch_add(1, Ordering::AcqRel);
        self.cache.clear();
    }
}

impl Default for SmallCache {
    fn default() -> Self {
        SmallCache::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        format!("sha256:{}", hex::encode([n; 32])).parse().expect("digest")
    }

    #[test]
    fn a_removal_during_a_read_keeps_the_blob_out() {
        let c = SmallCache::new();
        let seen = c.generation();
        c.removed(&digest(1));
        c.insert_if_unchanged(&digest(1), &Bytes::from_static(b"{}"), seen);
        assert!(c.get(&digest(1)).is_none());
        let seen = c.generation();
        c.insert_if_unchanged(&digest(1), &Bytes::from_static(b"{}"), seen);
        assert_eq!(c.get(&digest(1)).as_deref(), Some(&b"{}"[..]));
        c.clear();
        assert!(c.get(&digest(1)).is_none());
    }

    #[test]
    fn large_blobs_are_not_cached() {
        let c = SmallCache::new();
        let big = Bytes::from(vec![0u8; ENTRY_MAX as usize + 1]);
        c.insert_if_unchanged(&digest(2), &big, c.generation());
        assert!(c.get(&digest(2)).is_none());
    }
}
