//! The live set of a collection, compact: a store of a million blobs is a million digests
//! to keep while the sweep runs. sha256 digests (all but a few) are kept as their 32 raw bytes
//! in a sorted vector, about 32 bytes each instead of about 100 for a parsed digest in a hash
//! set; any other algorithm as it is. Also the guard on the walk that gathers it (`Cursors`): a
//! plugin's `live-blobs-page` walk must end.

use std::collections::{BTreeSet, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};

use crate::digest::{Algorithm, Digest};

#[derive(Debug, Default, Clone)]
pub struct LiveSet {
    sha256: Vec<[u8; 32]>,
    other: BTreeSet<Digest>,
    /// How much of `sha256` is sorted and free of repeats (the rest was added since).
    sealed: usize,
}

fn raw(d: &Digest) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    (d.algorithm() == Algorithm::Sha256 && hex::decode_to_slice(d.hex(), &mut out).is_ok()).then_some(out)
}

impl LiveSet {
    pub fn insert(&mut self, d: &Digest) {
        match raw(d) {
            Some(r) => self.sha256.push(r),
            None => {
                self.other.insert(d.clone());
            }
        }
    }

    /// Between pages: sorts and drops repeats (a layer in many manifests) once what was added
    /// since the last time is as large as what was kept, so the work stays n log n overall.
    pub fn compact(&mut self) {
        if self.sha256.len() - self.sealed > self.sealed.max(64 * 1024) {
            self.seal();
        }
    }

    /// Sorts what was added and drops repeats; `contains` needs it.
    fn seal(&mut self) {
        if self.sealed == self.sha256.len() {
            return;
        }
        self.sha256.sort_unstable();
        self.sha256.dedup();
        self.sealed = self.sha256.len();
    }

    /// Seals and gives back spare capacity: the set is complete.
    pub fn finish(&mut self) {
        self.seal();
        self.sha256.shrink_to_fit();
    }

    pub fn contains(&self, d: &Digest) -> bool {
        match raw(d) {
            Some(r) => self.sha256[..self.sealed].binary_search(&r).is_ok(),
            None => self.other.contains(d),
        }
    }

    pub fn len(&self) -> usize {
        self.sha256.len() + self.other.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every digest of the set (sealed first).
    pub fn iter(&self) -> impl Iterator<Item = Digest> + '_ {
        self.sha256.iter().map(|r| Digest::from_bytes(Algorithm::Sha256, r)).chain(self.other.iter().cloned())
    }

    /// The union of `sets`, sealed.
    pub fn union<'a>(sets: impl Iterator<Item = &'a LiveSet>) -> LiveSet {
        let mut all = LiveSet::default();
        for s in sets {
            all.sha256.extend_from_slice(&s.sha256);
            all.other.extend(s.other.iter().cloned());
        }
        all.finish();
        all
    }
}

impl FromIterator<Digest> for LiveSet {
    fn from_iter<I: IntoIterator<Item = Digest>>(iter: I) -> LiveSet {
        let mut s = LiveSet::default();
        for d in iter {
            s.insert(&d);
        }
        s.finish();
        s
    }
}

/// Pages any walk may take before it is held to the repository's size.
pub const FREE_PAGES: u64 = 64;

/// Keeps a plugin's `live-blobs-page` walk to one that ends. The cursor is the plugin's own and
/// opaque to the host, so the host cannot tell whether it moved forward; but a walk that comes
/// back to a cursor it was at (the same one at once, or A → B → A) goes round for ever, and one
/// that never repeats must still read at least one metadata key a page, so it cannot take more
/// pages than the repository has keys. Cursors are remembered by a 64-bit hash: a few bytes a
/// page, and a repository of a million keys takes about a thousand pages.
#[derive(Default)]
pub struct Cursors {
    seen: HashSet<u64>,
    pages: u64,
    /// most pages, once the walk has taken `FREE_PAGES` (from the repository's key count)
    bound: Option<u64>,
}

/// Why a walk was stopped: the plugin's fault, said in words for the run's error.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    #[error("live-blobs-page came back to cursor {0:?}: its walk goes round in a cycle")]
    Cycle(String),
    #[error("live-blobs-page took {pages} pages without finishing, over a repository of {keys} metadata keys")]
    TooLong { pages: u64, keys: u64 },
}

fn hash(cursor: &str) -> u64 {
    let mut h = DefaultHasher::new();
    cursor.hash(&mut h);
    h.finish()
}

impl Cursors {
    /// Whether the walk needs the repository's key count before its next page is asked for.
    pub fn wants_bound(&self) -> bool {
        self.bound.is_none() && self.pages >= FREE_PAGES
    }

    /// Holds the walk to the repository's `keys` (counted once, when it wants them).
    pub fn bound_by(&mut self, keys: u64) {
        self.bound = Some(keys.saturating_add(FREE_PAGES));
    }

    /// A page came back pointing to `next`: whether asking for it may go on.
    pub fn next(&mut self, next: &str) -> Result<(), WalkError> {
        self.pages += 1;
        if !self.seen.insert(hash(next)) {
            return Err(WalkError::Cycle(next.to_owned()));
        }
        match self.bound {
            Some(bound) if self.pages > bound => Err(WalkError::TooLong { pages: self.pages, keys: bound - FREE_PAGES }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Cursors, FREE_PAGES, LiveSet, WalkError};
    use crate::digest::{Algorithm, Digest};

    #[test]
    fn digests_are_kept_compactly_and_found() {
        let a = Digest::of(Algorithm::Sha256, b"a");
        let b = Digest::of(Algorithm::Sha256, b"b");
        let c = Digest::of(Algorithm::Sha512, b"c");
        let mut s = LiveSet::default();
        for d in [&a, &b, &a, &c, &a] {
            s.insert(d);
        }
        s.finish();
        assert_eq!(s.len(), 3);
        assert!(s.contains(&a) && s.contains(&b) && s.contains(&c));
        assert!(!s.contains(&Digest::of(Algorithm::Sha256, b"z")));
        let mut t = LiveSet::default();
        t.insert(&Digest::of(Algorithm::Sha256, b"z"));
        let u = LiveSet::union([&s, &t].into_iter());
        assert_eq!(u.len(), 4);
        assert!(u.contains(&Digest::of(Algorithm::Sha256, b"z")));
        let mut listed: Vec<Digest> = u.iter().collect();
        listed.sort();
        assert_eq!(listed.len(), 4);
    }

    #[test]
    fn a_walk_that_stands_still_or_goes_round_is_stopped_at_once() {
        let mut c = Cursors::default();
        c.next("a").unwrap();
        assert_eq!(c.next("a"), Err(WalkError::Cycle("a".into())), "the same cursor again");
        let mut c = Cursors::default();
        for next in ["a", "b", "c"] {
            c.next(next).unwrap();
        }
        assert_eq!(c.next("a"), Err(WalkError::Cycle("a".into())), "A -> B -> C -> A");
    }

    #[test]
    fn a_walk_that_never_repeats_is_held_to_the_repository_size() {
        let keys = 100;
        let mut c = Cursors::default();
        let mut pages = 0u64;
        let err = loop {
            if c.wants_bound() {
                assert_eq!(pages, FREE_PAGES, "counted once, after the free pages");
                c.bound_by(keys);
            }
            pages += 1;
            if let Err(e) = c.next(&format!("page {pages}")) {
                break e;
            }
        };
        assert_eq!(err, WalkError::TooLong { pages: keys + FREE_PAGES + 1, keys });
        // a walk of a few pages is never counted
        let mut short = Cursors::default();
        for i in 0..FREE_PAGES {
            assert!(!short.wants_bound());
            short.next(&i.to_string()).unwrap();
        }
    }
}
