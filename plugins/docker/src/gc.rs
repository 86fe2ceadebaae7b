//! Garbage collection support: the digests a repository still needs (`live-blobs-page`), a
//! page at a time.
//!
//! - local: every manifest of every image, and what those manifests reference (config,
//!   layers, child manifests). A manifest deleted by digest is gone from the records, so
//!   neither it nor what only it referenced stays live. Blobs uploaded but never referenced
//!   are not live: they go once the host's grace period has passed, like distribution's GC.
//! - remote: everything cached: manifests, blobs linked when fetched, and tag targets. Links
//!   to blobs not stored are dropped (see `drop_dangling_remote_link`).
//! - virtual: nothing of its own.
//!
//! A host error must not shrink the answer: a partial list would let the host delete blobs
//! still in use. Errors are returned, and the component glue turns them into a trap, which
//! makes the host collect nothing.

use crate::contract::{Host, HostError, Level, LivePage, RepoType, Repository};
use crate::meta;
use crate::reference::{Digest, Name};
use binaryrepo_plugin_sdk::live::{self, Step};

/// One page of the live set. The steps read the metadata a page of keys at a time: what the
/// plugin holds is one page of keys and the digests found on it, never the whole set.
pub fn live_blobs_page(
    host: &impl Host,
    repo: &Repository,
    cursor: Option<&str>,
) -> Result<LivePage, HostError> {
    let mut page = match repo.repo_type {
        RepoType::Virtual => return Ok(LivePage::default()),
        RepoType::Local => live::page(
            host,
            cursor,
            &mut [
                Step::mark(meta::IMAGE_MANIFEST, |key, live| {
                    image_manifest(host, key, live)
                }),
                // tags written before pushes existed have no manifest record
                tag_targets(host),
                // housekeeping, not safety: a failure here must not stop the collection
                Step::tidy(meta::BLOB, |key| drop_dangling_link(host, key)),
            ],
        )?,
        RepoType::Remote => live::page(
            host,
            cursor,
            &mut [
                Step::tidy(meta::BLOB, |key| drop_dangling_remote_link(host, key)),
                Step::mark(meta::MANIFEST, |key, live| {
                    live.extend(meta::parse_manifest_record_key(key).map(|d| d.to_string()));
                    Ok(())
                }),
                Step::mark(meta::BLOB, |key, live| {
                    live.extend(meta::parse_blob_link_key(key).map(|d| d.to_string()));
                    Ok(())
                }),
                tag_targets(host),
            ],
        )?,
    };
    // only well-formed digests go back: the host would drop anything else anyway
    page.digests.retain(|d| Digest::parse(d).is_ok());
    Ok(page)
}

/// A local manifest and what it references (config, layers, child manifests). A manifest
/// deleted by digest is gone from the records, so neither it nor what only it referenced
/// stays live.
fn image_manifest(host: &impl Host, key: &str, live: &mut Vec<String>) -> Result<(), HostError> {
    let Some((name, digest)) = meta::parse_image_manifest_key(key) else {
        return Ok(());
    };
    live.push(digest.to_string());
    match meta::get_json::<meta::ImageManifest>(host, key)? {
        Some(r) => live.extend(r.blobs.into_iter().chain(r.manifests)),
        None => host.log(
            Level::Warn,
            &format!("gc: manifest record {name}@{digest} unreadable; its references are not kept"),
        ),
    }
    Ok(())
}

/// What every tag points to. Gives each tagged image the marker the catalog lists, if it has
/// none (tags recorded before remote repositories kept markers): keys of one image are
/// adjacent, so that is one look-up per image (and page).
fn tag_targets<'a>(host: &'a impl Host) -> Step<'a> {
    let mut marked: Option<Name> = None;
    Step::mark(meta::TAG, move |key, live| {
        let Some(link) = meta::get_json::<meta::TagLink>(host, key)? else {
            return Ok(());
        };
        live.push(link.digest);
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
fn drop_dangling_remote_link(host: &impl Host, key: &str) -> Result<(), HostError> {
    let Some(digest) = meta::parse_blob_link_key(key) else {
        return Ok(());
    };
    if host.blob_stat(digest.as_str())?.is_some() {
        return Ok(());
    }
    let Some(value) = host.meta_get(key)? else {
        return Ok(());
    };
    match meta::dangling(&value) {
        meta::Dangling::Drop => host.meta_delete(key),
        meta::Dangling::MarkMissing => meta::mark_missing(host, key),
    }
}

/// Links to blobs collected earlier serve nothing (every use checks the store too) and would
/// pile up. Only local repositories: there a link is written after its blob is stored, while
/// a remote links before its fetch completes.
fn drop_dangling_link(host: &impl Host, key: &str) -> Result<(), HostError> {
    if let Some(digest) = meta::parse_blob_link_key(key)
        && host.blob_stat(digest.as_str())?.is_none()
    {
        host.meta_delete(key)?;
    }
    Ok(())
}
