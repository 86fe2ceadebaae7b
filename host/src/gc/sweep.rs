//! The sweep: every stored blob that no repository needs, that nobody referenced during the
//! run, and whose grace period is over, is removed.

use std::time::{Duration, SystemTime};

use super::live::LiveSet;
use super::run::{Counters, Run};
use crate::digest::Digest;
use crate::storage::BlobStore;

/// Every blob the backend lists. The grace period counts from the later of the blob's modification time
/// and the blob's last reference: a push that found its layers already stored (or mounted
/// them) refreshes no file, and its manifest may follow minutes later.
pub fn sweep(store: &BlobStore, live: &LiveSet, grace: Duration, run: &Run) -> std::io::Result<()> {
    let now = SystemTime::now();
    let touches = store.touches();
    let c = &run.counters;
    // Only blobs whose grace is over are kept for the removal pass: a store of a million blobs
    // in their grace period (or live) holds nothing per blob here. A reference made after a
    // blob was judged is caught by `remove_unless_touched`.
    let mut candidates = Vec::new();
    store
        .list(&mut |blob| {
            Counters::add(&c.blobs_scanned, 1);
            let used = || blob.modified.max(touches.last_reference(&blob.digest).unwrap_or(SystemTime::UNIX_EPOCH));
            if live.contains(&blob.digest) || !now.duration_since(used()).is_ok_and(|age| age >= grace) {
                Counters::add(&c.kept, 1);
            } else {
                candidates.push(blob);
            }
        })
        .map_err(std::io::Error::other)?;
    for blob in candidates {
        if remove_unless_touched(store, &blob.digest)? {
            Counters::add(&c.removed, 1);
            Counters::add(&c.removed_bytes, blob.size);
        } else {
            Counters::add(&c.kept, 1);
        }
    }
    Ok(())
}

/// Removes the blob unless a request referenced it since the run began; the decision and the
/// removal happen under the lock a reference takes first. Nothing is removed once references
/// went unrecorded. With a shared store, the same holds for the references of every node: the
/// removal happens under the blob's lock in the shared store, and only if no node recorded a
/// reference to it during the run (`storage::touch`).
pub fn remove_unless_touched(store: &BlobStore, digest: &Digest) -> std::io::Result<bool> {
    let touches = store.touches();
    let sweeping = touches.sweeping();
    if sweeping.overflowed() || sweeping.touched(digest) {
        return Ok(false);
    }
    let remove = || store.remove(digest);
    let removed = match touches.shared_store() {
        None => remove(),
        // Without a run announced to the other nodes, their references are not known.
        Some(pg) => match touches.run() {
            None => return Ok(false),
            Some(run) => match pg.collection_remove(&run, &digest.to_string(), remove).map_err(std::io::Error::other)? {
                None => return Ok(false),
                Some(removed) => removed,
            },
        },
    };
    removed.map_err(std::io::Error::other)
}
