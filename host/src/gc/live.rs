//! The live set of a collection, compact: a store of a million blobs is a million digests
//! to keep while the sweep runs. sha256 digests (all but a few) are kept as their 32 raw bytes
//! in a sorted vector, about 32 bytes each instead of about 100 for a parsed digest in a hash
//! set; any other algorithm as it is.

use std::collections::BTreeSet;

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

#[cfg(test)]
mod tests {
    use super::LiveSet;
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
}
