//! The durable metadata this plugin keeps per repository, in one place:
//!
//! - `tag/<name>:<tag>` → `{"digest","media_type","checked"}`: what a tag pointed to and
//!   when the upstream last confirmed it (unix seconds)
//! - `manifest/<digest>` → `{"media_type"}`: the stored blob is a manifest of this type
//!
//! For remote repositories `<name>` is the upstream name, so `redis` and `library/redis` on
//! Docker Hub share one cache entry.

use crate::contract::{Host, HostError, Level};
use crate::reference::{Digest, Name, Tag};
use serde::{Deserialize, Serialize};

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

pub fn tag_key(name: &Name, tag: &Tag) -> String {
    format!("tag/{name}:{tag}")
}

/// Prefix of every tag key of a repository; tags cannot contain ':', names cannot either.
pub fn tag_prefix(name: &Name) -> String {
    format!("tag/{name}:")
}

pub fn manifest_key(digest: &Digest) -> String {
    format!("manifest/{digest}")
}

/// A tag link, or None when absent. A value that no longer parses is treated as absent (and
/// logged) so that a format change heals itself by refetching instead of failing forever.
pub fn get_tag(host: &impl Host, name: &Name, tag: &Tag) -> Result<Option<TagLink>, HostError> {
    get_json(host, &tag_key(name, tag))
}

pub fn put_tag(host: &impl Host, name: &Name, tag: &Tag, link: &TagLink) -> Result<(), HostError> {
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

/// Tag names under a repository, in lexical order.
pub fn list_tags(host: &impl Host, name: &Name) -> Result<Vec<String>, HostError> {
    let prefix = tag_prefix(name);
    let mut tags: Vec<String> = host
        .meta_list(&prefix)?
        .into_iter()
        .filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned))
        // `tag/a:` also prefixes nothing else, but a stray key must not become a bogus tag
        .filter(|t| Tag::parse(t).is_ok())
        .collect();
    tags.sort();
    tags.dedup();
    Ok(tags)
}

fn get_json<T: for<'de> Deserialize<'de>>(
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
