//! `PUT /v2/<name>/manifests/<reference>` on a local repository: the body arrives through a
//! `read-body` plan, is validated against what the image holds, stored byte for byte, and
//! recorded (tags, image manifest, referrer).
//!
//! A push by digest may name tags to create as well (`?tag=a&tag=b`, answered with one
//! `OCI-Tag` header per tag). That is also the only way to tag a manifest whose digest is not
//! sha256: a push by tag carries no digest, so the registry names the bytes with sha256.

use crate::contract::{Host, HostError, Level, Plan, Request, header};
use crate::error::{ErrorCode, RegistryError};
use crate::manifest::{self, Descriptor, Manifest};
use crate::meta::{self, ImageManifest, Referrer, TagLink};
use crate::plan::{self, DIGEST_HEADER, SUBJECT_HEADER};
use crate::reference::{Digest, Name, Reference, Tag};
use crate::sibling;
use crate::store;
use crate::url;
use serde_json::json;

/// The response header that confirms each tag a push by digest created.
pub const TAG_HEADER: &str = "OCI-Tag";

/// The most `tag` parameters one push may carry: each is a metadata write. The spec asks
/// registries to take at least 10 and lets them answer 414 beyond their limit.
pub const MAX_TAG_PARAMS: usize = 100;

/// The plan for the request head: read the manifest (bounded), then `put`. Bad tag
/// parameters are refused first, so the client does not send a body for nothing.
pub fn begin(req: &Request, reference: &Reference) -> Result<Plan, RegistryError> {
    tag_params(req, reference)?;
    Ok(Plan::ReadBody(manifest::MAX_SIZE))
}

/// The tags a push by digest creates besides storing the manifest, in request order without
/// repeats; any invalid one refuses the push. The spec defines them for pushes by digest
/// only, so a push by tag ignores them (and answers without `OCI-Tag`, which tells the client).
fn tag_params(req: &Request, reference: &Reference) -> Result<Vec<Tag>, RegistryError> {
    if let Reference::Tag(_) = reference {
        return Ok(Vec::new());
    }
    let raw: Vec<String> = url::query_values(req.query.as_deref(), "tag").collect();
    if raw.len() > MAX_TAG_PARAMS {
        return Err(RegistryError::new(
            ErrorCode::TagInvalid,
            format!("at most {MAX_TAG_PARAMS} tag parameters per push"),
        )
        .with_status(414)
        .with_detail(json!({ "tags": raw.len() })));
    }
    let mut tags: Vec<Tag> = Vec::with_capacity(raw.len());
    for value in raw {
        let tag = Tag::parse(&value).map_err(|_| {
            RegistryError::new(ErrorCode::TagInvalid, "invalid tag parameter")
                .with_detail(json!({ "tag": value }))
        })?;
        if !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    Ok(tags)
}

pub fn put(
    host: &impl Host,
    req: &Request,
    name: &Name,
    reference: &Reference,
    body: &[u8],
) -> Result<Plan, RegistryError> {
    // the host enforces the limit; this guards a host that did not
    if body.len() as u64 > manifest::MAX_SIZE {
        return Err(too_large());
    }
    let params = tag_params(req, reference)?;
    let doc = manifest::parse(header(&req.headers, "content-type"), body)
        .map_err(|e| RegistryError::new(ErrorCode::ManifestInvalid, e.0))?;
    let adopted = check_references(host, req, name, &doc)?;
    let digest = store_bytes(host, reference, body)?;
    for blob in &adopted {
        meta::link_blob(host, name, blob)?;
    }
    let tags = match reference {
        Reference::Tag(tag) => vec![tag.clone()],
        Reference::Digest(_) => params,
    };
    record(host, req, name, &digest, &doc, body.len() as u64, &tags)?;
    host.log(
        Level::Debug,
        &format!(
            "manifest {name}:{} pushed as {digest} ({})",
            reference.as_str(),
            doc.media_type
        ),
    );
    let mut headers = vec![
        (
            "Location".to_owned(),
            url::client_url(req, &format!("{name}/manifests/{digest}")),
        ),
        (DIGEST_HEADER.to_owned(), digest.to_string()),
    ];
    if let Some(subject) = &doc.subject {
        headers.push((SUBJECT_HEADER.to_owned(), subject.digest.to_string()));
    }
    // only a push by digest confirms its tags: a push by tag names its one tag in the URL
    if let Reference::Digest(_) = reference {
        headers.extend(
            tags.iter()
                .map(|t| (TAG_HEADER.to_owned(), t.as_str().to_owned())),
        );
    }
    Ok(Plan::Respond(plan::empty(201, headers)))
}

pub fn too_large() -> RegistryError {
    RegistryError::new(
        ErrorCode::ManifestInvalid,
        format!("the manifest exceeds {} bytes", manifest::MAX_SIZE),
    )
    .with_status(413)
}

/// Every blob must be in the image and stored; every child of an index must be a manifest of
/// the image. The subject is deliberately not checked: referrers may arrive before it.
///
/// A blob the image lacks is still accepted when a sibling member of a virtual repository
/// pushing here holds it (`sibling`); those are returned, to be linked once the manifest is
/// stored.
fn check_references(
    host: &impl Host,
    req: &Request,
    name: &Name,
    doc: &Manifest,
) -> Result<Vec<Digest>, RegistryError> {
    let missing = |d: &Descriptor, what: &str| {
        RegistryError::new(
            ErrorCode::ManifestBlobUnknown,
            format!("{what} {} is not in image {name}", d.digest),
        )
        .with_detail(json!({ "digest": d.digest.as_str() }))
    };
    let mut adopted = Vec::new();
    for blob in doc.blobs() {
        if !meta::blob_linked(host, name, &blob.digest)? {
            let held = match &req.repository {
                Some(own) => sibling::holds(host, own, &blob.digest)?,
                None => false,
            };
            if !held {
                return Err(missing(blob, "blob"));
            }
            if !adopted.contains(&blob.digest) {
                adopted.push(blob.digest.clone());
            }
        }
        match host.blob_stat(blob.digest.as_str())? {
            None => return Err(missing(blob, "blob")),
            // A descriptor is the client's promise of what it will fetch: a wrong size would make
            // every pull of the image fail its own size check.
            Some(info) if info.size != blob.size => {
                return Err(RegistryError::new(
                    ErrorCode::ManifestInvalid,
                    format!(
                        "blob {} is {} bytes, not the {} its descriptor states",
                        blob.digest, info.size, blob.size
                    ),
                )
                .with_detail(json!({ "digest": blob.digest.as_str(), "size": info.size })));
            }
            Some(_) => {}
        }
    }
    for child in &doc.manifests {
        if meta::get_image_manifest(host, name, &child.digest)?.is_none()
            || !store::blob_present(host, &child.digest)?
        {
            return Err(missing(child, "manifest"));
        }
    }
    Ok(adopted)
}

/// Store the bytes as sent; by digest, the host verifies they hash to it.
fn store_bytes(
    host: &impl Host,
    reference: &Reference,
    body: &[u8],
) -> Result<Digest, RegistryError> {
    let expected = match reference {
        Reference::Digest(d) => Some(d.as_str()),
        Reference::Tag(_) => None,
    };
    let written = host.blob_write(body, expected).map_err(|e| match e {
        HostError::DigestMismatch(m) | HostError::InvalidDigest(m) => RegistryError::new(
            ErrorCode::DigestInvalid,
            "the manifest does not match the digest it was pushed by",
        )
        .with_detail(json!({ "digest": reference.as_str(), "reason": m })),
        HostError::TooLarge(_) => too_large(),
        other => RegistryError::from_host(&other),
    })?;
    Digest::parse(&written).map_err(|_| {
        RegistryError::new(
            ErrorCode::Unknown,
            format!("the store returned a malformed digest {written:?}"),
        )
    })
}

/// The image manifest record before the tags, so that a tag never points to a manifest the
/// image does not have.
fn record(
    host: &impl Host,
    req: &Request,
    name: &Name,
    digest: &Digest,
    doc: &Manifest,
    size: u64,
    tags: &[Tag],
) -> Result<(), RegistryError> {
    meta::mark_image(host, name)?;
    let entry = ImageManifest {
        media_type: doc.media_type.clone(),
        size,
        blobs: doc.blobs().map(|d| d.digest.to_string()).collect(),
        manifests: doc.manifests.iter().map(|d| d.digest.to_string()).collect(),
        subject: doc.subject.as_ref().map(|s| s.digest.to_string()),
        pushed: Some(req.now),
    };
    meta::put_image_manifest(host, name, digest, &entry)?;
    if let Some(subject) = &doc.subject {
        let referrer = Referrer {
            media_type: doc.media_type.clone(),
            digest: digest.to_string(),
            size,
            artifact_type: doc.referrer_artifact_type(),
            annotations: doc.annotations.clone(),
        };
        meta::put_referrer(host, name, &subject.digest, &referrer)?;
    }
    let link = TagLink {
        digest: digest.to_string(),
        media_type: doc.media_type.clone(),
        checked: req.now,
    };
    for tag in tags {
        meta::put_tag(host, name, tag, &link)?;
    }
    Ok(())
}
