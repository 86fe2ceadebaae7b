//! The durable metadata this plugin keeps per repository, in one place:
//!
//! - `tag/<name>:<tag>` → `{"digest","media_type","checked"}`: what a tag points to and
//!   (remote) when the upstream last confirmed it (unix seconds; local: when it was pushed)
//! - `manifest/<digest>` → `{"media_type"}` (remote): the stored blob is a manifest of this type
//! - `blob/<digest>/<name>` → `{}`: the blob belongs to image `<name>` (local: uploaded or
//!   mounted there; remote: fetched through it, or confirmed by the upstream for that name).
//!   A blob or manifest is served under a name only through its link. Digest first, so "is
//!   this blob linked anywhere in the repository" (mount without `from`) is one prefix listing.
//!   Remote only: `{"pending":true}` while a fetch started through the name may not have
//!   stored the blob yet (the host does not report back after a fetch); it becomes `{}` the
//!   first time the stored blob is served under the name, see `remote`.
//! - `image/<name>` → `{}`: the image exists (local: it has had a blob or a manifest; remote:
//!   it has had a tag); the catalog lists these keys, a page at a time, and the local tag
//!   list's NAME_UNKNOWN goes by it. Never removed, like a directory in distribution's
//!   storage. Tags recorded before remote repositories kept markers get theirs at the next
//!   garbage collection.
//! - `image-manifest/<name>@<digest>` → `ImageManifest` (local): the manifest was pushed to
//!   the image, with what it references (for pushes of indexes and for garbage collection)
//! - `referrer/<name>@<subject>/<digest>` → `Referrer` (local): the manifest `<digest>` of
//!   image `<name>` names `<subject>`: the descriptor the referrers API lists
//!
//! Names contain no ':' or '@' and digests no '/', so every prefix above is exact. For remote
//! repositories `<name>` is the upstream name, so `redis` and `library/redis` on Docker Hub
//! share one cache entry.

use crate::contract::{Host, HostError, Level};
use crate::reference::{Digest, Name, Tag};
use binaryrepo_plugin_sdk::meta::{keys, keys_in};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub(crate) const TAG: &str = "tag/";
pub(crate) const MANIFEST: &str = "manifest/";
pub(crate) const BLOB: &str = "blob/";
const IMAGE: &str = "image/";
pub(crate) const IMAGE_MANIFEST: &str = "image-manifest/";
const REFERRER: &str = "referrer/";
/// What a marker or link key holds: its presence is the information.
const PRESENT: &[u8] = b"{}";
/// A remote's link written before its fetch: the name asked the upstream for the blob, but
/// the fetch may have failed, so a stored copy may have come from elsewhere.
const PENDING: &[u8] = br#"{"pending":true}"#;
/// A pending link whose blob a garbage collection found missing: the next collection that
/// still finds it missing drops it (its fetch failed, e.g. a GET of a digest the upstream does
/// not have), so such links do not pile up. Two collections apart, so a fetch in flight
/// during one collection has the whole interval to finish.
const PENDING_MISSING: &[u8] = br#"{"pending":true,"missing":true}"#;

/// What a `blob/` link says about the image and the blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobLink {
    /// the image holds the blob (pushed, mounted, or fetched or confirmed upstream)
    Held,
    /// a fetch through the image was started; whether it stored the blob is not known
    Pending,
}

impl BlobLink {
    /// Any value but the pending marker is a held link: links written before pending ones
    /// existed are `{}`.
    pub fn from_value(value: &[u8]) -> BlobLink {
        if value == PENDING || value == PENDING_MISSING {
            BlobLink::Pending
        } else {
            BlobLink::Held
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagLink {
    pub digest: String,
    pub media_type: String,
    pub checked: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestMeta {
    pub media_type: String,
}

/// A manifest pushed to an image of a local repository.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageManifest {
    pub media_type: String,
    pub size: u64,
    /// config and layers (image manifests)
    #[serde(default)]
    pub blobs: Vec<String>,
    /// child manifests (indexes)
    #[serde(default)]
    pub manifests: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// when it was last pushed (unix seconds), for cleanup rules; none in records written
    /// before it was kept
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed: Option<u64>,
}

/// A referrer as the referrers API lists it: an OCI descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Referrer {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

pub fn tag_key(name: &Name, tag: &Tag) -> String {
    format!("{TAG}{name}:{tag}")
}

/// Prefix of every tag key of a repository; tags cannot contain ':', names cannot either.
pub fn tag_prefix(name: &Name) -> String {
    format!("{TAG}{name}:")
}

pub fn manifest_key(digest: &Digest) -> String {
    format!("{MANIFEST}{digest}")
}

pub fn blob_key(digest: &Digest, name: &Name) -> String {
    format!("{BLOB}{digest}/{name}")
}

pub fn blob_prefix(digest: &Digest) -> String {
    format!("{BLOB}{digest}/")
}

pub fn image_key(name: &Name) -> String {
    format!("{IMAGE}{name}")
}

pub fn image_manifest_key(name: &Name, digest: &Digest) -> String {
    format!("{IMAGE_MANIFEST}{name}@{digest}")
}

pub fn referrer_prefix(name: &Name, subject: &Digest) -> String {
    format!("{REFERRER}{name}@{subject}/")
}

pub fn referrer_key(name: &Name, subject: &Digest, digest: &Digest) -> String {
    format!("{}{digest}", referrer_prefix(name, subject))
}

/// A tag link, or None when absent. A value that no longer parses is treated as absent (and
/// logged) so that a format change heals itself by refetching instead of failing forever.
pub fn get_tag(host: &impl Host, name: &Name, tag: &Tag) -> Result<Option<TagLink>, HostError> {
    get_json(host, &tag_key(name, tag))
}

/// Records a tag, and the image's marker the catalog lists.
pub fn put_tag(host: &impl Host, name: &Name, tag: &Tag, link: &TagLink) -> Result<(), HostError> {
    mark_image(host, name)?;
    put_json(host, &tag_key(name, tag), link)
}

pub fn get_manifest(host: &impl Host, digest: &Digest) -> Result<Option<ManifestMeta>, HostError> {
    get_json(host, &manifest_key(digest))
}

pub fn put_manifest(host: &impl Host, digest: &Digest, media_type: &str) -> Result<(), HostError> {
    put_json(
        host,
        &manifest_key(digest),
        &ManifestMeta {
            media_type: media_type.to_owned(),
        },
    )
}

/// Link a blob to an image (or confirm a pending link). Only written when it changes: blob
/// requests are frequent and a metadata write is not free (and ends the reuse of plans).
pub fn link_blob(host: &impl Host, name: &Name, digest: &Digest) -> Result<(), HostError> {
    let key = blob_key(digest, name);
    if blob_link(host, name, digest)? != Some(BlobLink::Held) {
        host.meta_put(&key, PRESENT)?;
    }
    Ok(())
}

/// Mark a fetch through the image as started (remote). A held link is turned back into a
/// pending one too: its blob is gone (collected) or the fetch would not be needed, and what
/// is fetched now must be confirmed again.
pub fn link_pending(host: &impl Host, name: &Name, digest: &Digest) -> Result<(), HostError> {
    let key = blob_key(digest, name);
    // a link a collection marked missing is renewed: this fetch may still succeed
    if host.meta_get(&key)?.as_deref() != Some(PENDING) {
        host.meta_put(&key, PENDING)?;
    }
    Ok(())
}

/// What a collection does with a remote's link whose blob is not stored (see `PENDING_MISSING`).
#[derive(Debug, PartialEq, Eq)]
pub enum Dangling {
    Drop,
    MarkMissing,
}

pub fn dangling(value: &[u8]) -> Dangling {
    if value == PENDING {
        Dangling::MarkMissing
    } else {
        Dangling::Drop
    }
}

pub fn mark_missing(host: &impl Host, key: &str) -> Result<(), HostError> {
    host.meta_put(key, PENDING_MISSING)
}

pub fn blob_link(
    host: &impl Host,
    name: &Name,
    digest: &Digest,
) -> Result<Option<BlobLink>, HostError> {
    Ok(host
        .meta_get(&blob_key(digest, name))?
        .map(|v| BlobLink::from_value(&v)))
}

/// Whether the image holds the blob: a held link, not a pending one.
pub fn blob_linked(host: &impl Host, name: &Name, digest: &Digest) -> Result<bool, HostError> {
    Ok(blob_link(host, name, digest)? == Some(BlobLink::Held))
}

/// Whether any image of the repository holds the blob (local repositories, whose links are
/// all held ones).
pub fn blob_linked_anywhere(host: &impl Host, digest: &Digest) -> Result<bool, HostError> {
    Ok(!host.meta_list(&blob_prefix(digest))?.is_empty())
}

/// Record that an image exists (local repositories).
pub fn mark_image(host: &impl Host, name: &Name) -> Result<(), HostError> {
    let key = image_key(name);
    if host.meta_get(&key)?.is_none() {
        host.meta_put(&key, PRESENT)?;
    }
    Ok(())
}

pub fn image_known(host: &impl Host, name: &Name) -> Result<bool, HostError> {
    Ok(host.meta_get(&image_key(name))?.is_some())
}

pub fn get_image_manifest(
    host: &impl Host,
    name: &Name,
    digest: &Digest,
) -> Result<Option<ImageManifest>, HostError> {
    get_json(host, &image_manifest_key(name, digest))
}

pub fn put_image_manifest(
    host: &impl Host,
    name: &Name,
    digest: &Digest,
    record: &ImageManifest,
) -> Result<(), HostError> {
    put_json(host, &image_manifest_key(name, digest), record)
}

pub fn put_referrer(
    host: &impl Host,
    name: &Name,
    subject: &Digest,
    referrer: &Referrer,
) -> Result<(), HostError> {
    let digest = Digest::parse(&referrer.digest)
        .map_err(|_| HostError::InvalidDigest(referrer.digest.clone()))?;
    put_json(host, &referrer_key(name, subject, &digest), referrer)
}

/// The referrers of `subject` in an image, in key (digest) order.
pub fn list_referrers(
    host: &impl Host,
    name: &Name,
    subject: &Digest,
) -> Result<Vec<Referrer>, HostError> {
    let mut out = Vec::new();
    for key in host.meta_list(&referrer_prefix(name, subject))? {
        if let Some(r) = get_json::<Referrer>(host, &key)? {
            out.push(r);
        }
    }
    Ok(out)
}

/// Image names of a repository (None: the request's) after `last`, in lexical order, read
/// from its `image/` markers a page at a time (`want`: how many the caller needs, if it knows).
pub fn image_names_after<'h, H: Host>(
    host: &'h H,
    repository: Option<&str>,
    last: Option<&str>,
    want: Option<usize>,
) -> impl Iterator<Item = Result<String, HostError>> + use<'h, H> {
    let start = last.map(|l| format!("{IMAGE}{l}"));
    let walk = match repository {
        Some(r) => keys_in(host, r, IMAGE),
        None => keys(host, IMAGE),
    };
    let walk = walk
        .after(start.as_deref())
        .page_size(want.map_or(usize::MAX, |n| n.saturating_add(1)));
    let last = last.map(str::to_owned);
    walk.filter_map(move |key| {
        let name = match key {
            Ok(key) => key.strip_prefix(IMAGE)?.to_owned(),
            Err(e) => return Some(Err(e)),
        };
        let after = last.as_deref().is_none_or(|l| name.as_str() > l);
        (after && Name::parse(&name).is_ok()).then_some(Ok(name))
    })
}

/// Tag names of an image after `last`, in lexical order, read a page at a time (`want`: how
/// many the caller needs, if it knows).
pub fn tags_after<'h, H: Host>(
    host: &'h H,
    name: &Name,
    last: Option<&str>,
    want: Option<usize>,
) -> impl Iterator<Item = Result<String, HostError>> + use<'h, H> {
    let prefix = tag_prefix(name);
    let start = last.map(|l| format!("{prefix}{l}"));
    let walk = keys(host, &prefix)
        .after(start.as_deref())
        .page_size(want.map_or(usize::MAX, |n| n.saturating_add(1)));
    let last = last.map(str::to_owned);
    walk.filter_map(move |key| {
        let tag = match key {
            Ok(key) => key.strip_prefix(&prefix)?.to_owned(),
            Err(e) => return Some(Err(e)),
        };
        let after = last.as_deref().is_none_or(|l| tag.as_str() > l);
        // `tag/a:` prefixes nothing else, but a stray key must not become a bogus tag
        (after && Tag::parse(&tag).is_ok()).then_some(Ok(tag))
    })
}

/// Whether an image has any tag (one key read).
pub fn has_tags(host: &impl Host, name: &Name) -> Result<bool, HostError> {
    Ok(!host.meta_list_page(&tag_prefix(name), None, 1)?.is_empty())
}

/// The image and digest an `image-manifest` key names.
pub fn parse_image_manifest_key(key: &str) -> Option<(Name, Digest)> {
    let (name, digest) = key
        .strip_prefix(IMAGE_MANIFEST)
        .and_then(|rest| rest.split_once('@'))?;
    Some((Name::parse(name).ok()?, Digest::parse(digest).ok()?))
}

/// The digest a `blob/` link key names.
pub fn parse_blob_link_key(key: &str) -> Option<Digest> {
    key.strip_prefix(BLOB)
        .and_then(|rest| rest.split_once('/'))
        .and_then(|(d, _)| Digest::parse(d).ok())
}

/// The digest a `manifest/` record key names.
pub fn parse_manifest_record_key(key: &str) -> Option<Digest> {
    key.strip_prefix(MANIFEST)
        .and_then(|d| Digest::parse(d).ok())
}

/// The image a tag key belongs to.
pub fn tag_key_name(key: &str) -> Option<Name> {
    let (name, _) = key.strip_prefix(TAG)?.split_once(':')?;
    Name::parse(name).ok()
}

/// Tag names under an image, in lexical order.
pub fn list_tags(host: &impl Host, name: &Name) -> Result<Vec<String>, HostError> {
    tags_after(host, name, None, None).collect()
}

pub(crate) fn get_json<T: for<'de> Deserialize<'de>>(
    host: &impl Host,
    key: &str,
) -> Result<Option<T>, HostError> {
    let Some(bytes) = host.meta_get(key)? else {
        return Ok(None);
    };
    match serde_json::from_slice(&bytes) {
        Ok(v) => Ok(Some(v)),
        Err(e) => {
            host.log(Level::Warn, &format!("ignoring unreadable meta {key}: {e}"));
            Ok(None)
        }
    }
}

fn put_json<T: Serialize>(host: &impl Host, key: &str, value: &T) -> Result<(), HostError> {
    let bytes = serde_json::to_vec(value).map_err(|e| HostError::Internal(e.to_string()))?;
    host.meta_put(key, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let n = Name::parse("library/redis").unwrap();
        let t = Tag::parse("7").unwrap();
        assert_eq!(tag_key(&n, &t), "tag/library/redis:7");
        assert_eq!(tag_prefix(&n), "tag/library/redis:");
        let d = Digest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap();
        assert_eq!(
            manifest_key(&d),
            format!("manifest/sha256:{}", "a".repeat(64))
        );
        assert_eq!(blob_key(&d, &n), format!("blob/{d}/library/redis"));
        assert_eq!(image_key(&n), "image/library/redis");
        assert_eq!(
            image_manifest_key(&n, &d),
            format!("image-manifest/library/redis@{d}")
        );
        assert_eq!(
            referrer_key(&n, &d, &d),
            format!("referrer/library/redis@{d}/{d}")
        );
    }

    #[test]
    fn image_names_and_tags_after_a_point() {
        let h = crate::fake_host::fake_host(crate::fake_host::Registry::new(
            crate::fake_host::UPSTREAM,
            crate::fake_host::UpstreamAuth::Open,
        ));
        for k in [
            "image/app",
            "image/a/b",
            "image/Bad",
            "image/library/redis",
            "tag/app:1",
            "tag/app:2",
            "tag/app:Bad:",
            "tag/app/web:1",
        ] {
            h.meta.borrow_mut().insert(k.into(), b"{}".to_vec());
        }
        let names = |last, want| -> Vec<String> {
            image_names_after(&h, None, last, want)
                .map(Result::unwrap)
                .collect()
        };
        assert_eq!(names(None, None), vec!["a/b", "app", "library/redis"]);
        assert_eq!(names(Some("app"), Some(1)), vec!["library/redis"]);
        assert_eq!(names(Some("a/b\0"), None), vec!["app", "library/redis"]);
        let app = Name::parse("app").unwrap();
        let tags = |last| -> Vec<String> {
            tags_after(&h, &app, last, Some(1))
                .map(Result::unwrap)
                .collect()
        };
        assert_eq!(tags(None), vec!["1", "2"]);
        assert_eq!(tags(Some("1")), vec!["2"]);
        assert!(tags(Some("2")).is_empty());
        assert!(has_tags(&h, &app).unwrap());
        assert!(!has_tags(&h, &Name::parse("a/b").unwrap()).unwrap());
        assert_eq!(tag_key_name("tag/app/web:1"), Name::parse("app/web").ok());
    }

    #[test]
    fn referrer_json_shape() {
        let r = Referrer {
            media_type: "m".into(),
            digest: "sha256:x".into(),
            size: 3,
            artifact_type: Some("t".into()),
            annotations: None,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"mediaType":"m","digest":"sha256:x","size":3,"artifactType":"t"}"#
        );
    }

    #[test]
    fn tag_link_json_shape() {
        let l = TagLink {
            digest: "sha256:x".into(),
            media_type: "m".into(),
            checked: 5,
        };
        assert_eq!(
            serde_json::to_string(&l).unwrap(),
            r#"{"digest":"sha256:x","media_type":"m","checked":5}"#
        );
    }
}
