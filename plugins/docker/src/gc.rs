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
use crate::reference::{Digest, Name};
use std::collections::BTreeSet;

pub fn live_blobs(host: &impl Host, repo: &Repository) -> Result<Vec<String>, HostError> {
    // The walks read the metadata a page of keys at a time: what the plugin holds is this
    // set of live digests (the answer) and one page, never every key of the repository.
    let mut live: BTreeSet<String> = BTreeSet::new();
    match repo.repo_type {
        RepoType::Virtual => {}
        RepoType::Local => {
            meta::each_image_manifest(host, |name, digest, record| {
                live.insert(digest.to_string());
                match record {
                    Some(r) => live.extend(r.blobs.into_iter().chain(r.manifests)),
                    None => host.log(
                        Level::Warn,
                        &format!("gc: manifest record {name}@{digest} unreadable; its references are not kept"),
                    ),
                }
                Ok(())
            })?;
            // tags written before pushes existed have no manifest record
            tag_targets(host, &mut live)?;
            // housekeeping, not safety: a failure here must not stop the collection
            if let Err(e) = drop_dangling_links(host) {
                host.log(Level::Warn, &format!("gc: dangling blob links kept: {e}"));
            }
        }
        RepoType::Remote => {
            if let Err(e) = drop_dangling_remote_links(host) {
                host.log(Level::Warn, &format!("gc: dangling blob links kept: {e}"));
            }
            meta::each_manifest_record(host, |d| {
                live.insert(d.to_string());
                Ok(())
            })?;
            meta::each_blob_link(host, |d, _| {
                live.insert(d.to_string());
                Ok(())
            })?;
            tag_targets(host, &mut live)?;
        }
    }
    // only well-formed digests go back: the host would drop anything else anyway
    Ok(live
        .into_iter()
        .filter(|d| Digest::parse(d).is_ok())
        .collect())
}

/// What every tag points to. Gives each tagged image the marker the catalog lists, if it has
/// none (tags recorded before remote repositories kept markers): keys of one image are
/// adjacent, so that is one look-up per image.
fn tag_targets(host: &impl Host, live: &mut BTreeSet<String>) -> Result<(), HostError> {
    let mut marked: Option<Name> = None;
    meta::each_tag(host, |key, link| {
        live.insert(link.digest);
        if let Some(name) = meta::tag_key_name(key)
            && marked.as_ref() != Some(&name)
        {
            if let Err(e) = meta::mark_image(host, &name) {
                host.log(Level::Warn, &format!("gc: image {name} not marked: {e}"));
            }
            marked = Some(name);
        }
        Ok(())
    })
}

/// A remote's links to blobs that are not stored. A held one was written by a version that
/// linked before its fetch, for a fetch that failed, or its blob was collected or evicted:
/// were the digest stored later for someone else, the link would let this name see it
/// without asking the upstream. A pending one belongs to a fetch that failed (a GET of a
/// digest the upstream does not have) or is still running: it is marked the first time and
/// dropped the next, so a fetch in flight is not cut short while failed ones do not pile up.
fn drop_dangling_remote_links(host: &impl Host) -> Result<(), HostError> {
    meta::each_blob_link(host, |digest, key| {
        if host.blob_stat(digest.as_str())?.is_some() {
            return Ok(());
        }
        let Some(value) = host.meta_get(&key)? else {
            return Ok(());
        };
        match meta::dangling(&value) {
            meta::Dangling::Drop => host.meta_delete(&key),
            meta::Dangling::MarkMissing => meta::mark_missing(host, &key),
        }
    })
}

/// Links to blobs collected earlier serve nothing (every use checks the store too) and would
/// pile up. Only local repositories: there a link is written after its blob is stored, while
/// a remote links before its fetch completes.
fn drop_dangling_links(host: &impl Host) -> Result<(), HostError> {
    meta::each_blob_link(host, |digest, key| {
        if host.blob_stat(digest.as_str())?.is_none() {
            host.meta_delete(&key)?;
        }
        Ok(())
    })
}
