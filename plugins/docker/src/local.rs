//! Local (hosted) repositories: pulls, deletes and tag lists served from the repository's own
//! metadata (see `meta` for the layout) and the store. Pushes are in `push` and `upload`.
//!
//! An image sees only what was pushed or mounted into it: a blob stored for another image,
//! or another repository, is BLOB_UNKNOWN here until it is linked.

use crate::contract::{Host, Plan, Repository, Request};
use crate::error::{ErrorCode, RegistryError};
use crate::meta;
use crate::paging::{self, Paging};
use crate::plan::{self, DIGEST_HEADER};
use crate::reference::{Digest, Name, Reference, Tag};
use crate::store;
use crate::tags;
use serde_json::json;

fn manifest_unknown(name: &Name, reference: &Reference) -> RegistryError {
    RegistryError::new(ErrorCode::ManifestUnknown, "manifest unknown")
        .with_detail(json!({ "name": name.as_str(), "reference": reference.as_str() }))
}

fn blob_unknown(digest: &Digest) -> RegistryError {
    RegistryError::new(ErrorCode::BlobUnknown, "blob unknown to registry")
        .with_detail(json!({ "digest": digest.as_str() }))
}

fn deletes_disabled(repo: &Repository) -> RegistryError {
    RegistryError::new(
        ErrorCode::Unsupported,
        format!("deletes are disabled on repository {}", repo.name),
    )
}

pub fn manifest(
    host: &impl Host,
    name: &Name,
    reference: &Reference,
) -> Result<Plan, RegistryError> {
    let unknown = || manifest_unknown(name, reference);
    let (digest, media_type) = match reference {
        Reference::Tag(tag) => {
            let link = meta::get_tag(host, name, tag)?.ok_or_else(unknown)?;
            let digest = Digest::parse(&link.digest).map_err(|_| unknown())?;
            (digest, link.media_type)
        }
        Reference::Digest(digest) => {
            let record = meta::get_image_manifest(host, name, digest)?.ok_or_else(unknown)?;
            (digest.clone(), record.media_type)
        }
    };
    // metadata can outlive its blob (a store restored from an older backup): say unknown
    // rather than plan a serve that fails
    if !store::blob_present(host, &digest)? {
        return Err(unknown());
    }
    host.reusable(plan::HELD_SECONDS, &[]);
    Ok(plan::serve_manifest(&digest, &media_type))
}

pub fn blob(host: &impl Host, name: &Name, digest: &Digest) -> Result<Plan, RegistryError> {
    if meta::blob_linked(host, name, digest)? && store::blob_present(host, digest)? {
        host.reusable(plan::HELD_SECONDS, &[]);
        Ok(plan::serve_blob(digest))
    } else {
        Err(blob_unknown(digest))
    }
}

/// `DELETE /v2/<name>/blobs/<digest>`: unlink the blob from the image. The bytes stay while
/// anything else needs them; garbage collection removes them after that.
pub fn delete_blob(
    host: &impl Host,
    repo: &Repository,
    name: &Name,
    digest: &Digest,
) -> Result<Plan, RegistryError> {
    if !repo.delete_enabled {
        return Err(deletes_disabled(repo));
    }
    if !meta::blob_linked(host, name, digest)? {
        return Err(blob_unknown(digest));
    }
    host.meta_delete(&meta::blob_key(digest, name))?;
    Ok(Plan::Respond(plan::empty(
        202,
        vec![(DIGEST_HEADER.to_owned(), digest.to_string())],
    )))
}

/// `DELETE /v2/<name>/manifests/<reference>`: by tag, the tag only; by digest, the manifest
/// with every tag that points to it and its entry in the referrers of its subject.
pub fn delete_manifest(
    host: &impl Host,
    repo: &Repository,
    name: &Name,
    reference: &Reference,
) -> Result<Plan, RegistryError> {
    if !repo.delete_enabled {
        return Err(deletes_disabled(repo));
    }
    match reference {
        Reference::Tag(tag) => {
            if meta::get_tag(host, name, tag)?.is_none() {
                return Err(manifest_unknown(name, reference));
            }
            host.meta_delete(&meta::tag_key(name, tag))?;
        }
        Reference::Digest(digest) => {
            let Some(record) = meta::get_image_manifest(host, name, digest)? else {
                return Err(manifest_unknown(name, reference));
            };
            // tags first: a tag must never point to a manifest the image no longer has
            for tag in meta::list_tags(host, name)? {
                let Ok(tag) = Tag::parse(&tag) else { continue };
                if meta::get_tag(host, name, &tag)?.is_some_and(|l| l.digest == digest.as_str()) {
                    host.meta_delete(&meta::tag_key(name, &tag))?;
                }
            }
            if let Some(subject) = record
                .subject
                .as_deref()
                .and_then(|s| Digest::parse(s).ok())
            {
                host.meta_delete(&meta::referrer_key(name, &subject, digest))?;
            }
            host.meta_delete(&meta::image_manifest_key(name, digest))?;
        }
    }
    Ok(Plan::Respond(plan::empty(202, Vec::new())))
}

pub fn tag_list(
    host: &impl Host,
    req: &Request,
    name: &Name,
    paging: &Paging,
) -> Result<Plan, RegistryError> {
    let after = meta::tags_after(host, name, paging.last.as_deref(), paging.n);
    let (page, next) = paging::page_from(after, paging)?;
    // an image whose tags were all deleted still exists: an empty list, not NAME_UNKNOWN
    if page.is_empty() && !meta::image_known(host, name)? && !meta::has_tags(host, name)? {
        return Err(RegistryError::new(
            ErrorCode::NameUnknown,
            "repository name not known to registry",
        )
        .with_detail(json!({ "name": name.as_str() })));
    }
    let client_name = tags::client_name(req, name.as_str());
    Ok(Plan::Respond(tags::response(
        req,
        &client_name,
        page,
        next.as_ref(),
    )))
}
