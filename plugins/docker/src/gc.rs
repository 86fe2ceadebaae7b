//! Garbage collection support: the digests a repository still needs (`live-blobs`).
//!
//! - local: every manifest of every image, and what those manifests reference (config,
//!   layers, child manifests). A manifest deleted by digest is gone from the records, so
//!   neither it nor what only it referenced stays live. Blobs uploaded but never referenced
//!   are not live: they go once the host's grace period has passed, like distribution's GC.
//! - remote: everything cached: manifests, blobs linked when fetched, and tag targets. Links
//!   to blobs not stored are dropped (see `drop_dangling_remote_links`).
//! - virtual: nothing of its own.
//!
//! A host error must not shrink the answer: a partial list would let the host delete blobs
//! still in use. Errors are returned, and the component glue turns them into a trap, which
//! makes the host collect nothing.

use crate::contract::{Host, HostError, Level, RepoType, Repository};
use crate::meta;
use crate::reference::Digest;
use std::collections::BTreeSet;

pub fn live_blobs(host: &impl Host, repo: &Repository) -> Result<Vec<String>, HostError> {
    let mut live: BTreeSet<String> = BTreeSet::new();
    match repo.repo_type {
        RepoType::Virtual => {}
        RepoType::Local => {
            for (name, digest, record) in meta::all_image_manifests(host)? {
                live.insert(digest.to_string());
                match record {
                    Some(r) => live.extend(r.blobs.into_iter().chain(r.manifests)),
                    None => host.log(
                        Level::Warn,
                        &format!("gc: manifest record {name}@{digest} unreadable; its references are not kept"),
                    ),
                }
            }
            // tags written before pushes existed have no manifest record
            live.extend(tag_targets(host)?);
            // housekeeping, not safety: a failure here must not stop the collection
            if let Err(e) = drop_dangling_links(host) {
                host.log(Level::Warn, &format!("gc: dangling blob links kept: {e}"));
            }
        }
        RepoType::Remote => {
            if let Err(e) = drop_dangling_remote_links(host) {
                host.log(Level::Warn, &format!("gc: dangling blob links kept: {e}"));
            }
            live.extend(
                meta::all_manifest_records(host)?
                    .iter()
                    .map(Digest::to_string),
            );
            live.extend(
                meta::all_blob_links(host)?
                    .into_iter()
                    .map(|(d, _)| d.to_string()),
            );
            live.extend(tag_targets(host)?);
        }
    }
    // only well-formed digests go back: the host would drop anything else anyway
    Ok(live
        .into_iter()
        .filter(|d| Digest::parse(d).is_ok())
        .collect())
}

fn tag_targets(host: &impl Host) -> Result<Vec<String>, HostError> {
    Ok(meta::all_tags(host)?
        .into_iter()
        .map(|(_, link)| link.digest)
        .collect())
}

/// A remote's links to blobs that are not stored. A held one was written by a version that
/// linked before its fetch, for a fetch that failed, or its blob was collected or evicted:
/// were the digest stored later for someone else, the link would let this name see it
/// without asking the upstream. A pending one belongs to a fetch that failed (a GET of a
/// digest the upstream does not have) or is still running: it is marked the first time and
/// dropped the next, so a fetch in flight is not cut short while failed ones do not pile up.
fn drop_dangling_remote_links(host: &impl Host) -> Result<(), HostError> {
    for (digest, key) in meta::all_blob_links(host)? {
        if host.blob_stat(digest.as_str())?.is_some() {
            continue;
        }
        let Some(value) = host.meta_get(&key)? else {
            continue;
        };
        match meta::dangling(&value) {
            meta::Dangling::Drop => host.meta_delete(&key)?,
            meta::Dangling::MarkMissing => meta::mark_missing(host, &key)?,
        }
    }
    Ok(())
}

/// Links to blobs collected earlier serve nothing (every use checks the store too) and would
/// pile up. Only local repositories: there a link is written after its blob is stored, while
/// a remote links before its fetch completes.
fn drop_dangling_links(host: &impl Host) -> Result<(), HostError> {
    for (digest, key) in meta::all_blob_links(host)? {
        if host.blob_stat(digest.as_str())?.is_none() {
            host.meta_delete(&key)?;
        }
    }
    Ok(())
}
