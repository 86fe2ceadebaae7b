//! Cross-repository blob mounts (`POST …/blobs/uploads/?mount=<digest>[&from=<name>]`): where
//! a blob may be linked from without uploading it again.
//!
//! `from` is a name as the client knows it. Pushing through one mount and pulling through
//! another makes it ambiguous, so both readings are tried: an image of this repository, then
//! `<repository>/<image>` as the path method spells it. Anything that cannot be read (an
//! unknown repository, a host refusal) means "not mountable": the client falls back to an
//! upload, which is what the spec asks for when a mount fails.
//!
//! A mount makes the blob visible under the image, so the source must hold it: a held link,
//! never a remote's pending one (a fetch that may have failed). Without `from` only this
//! repository's images are looked at: searching every repository would let anyone who can
//! push somewhere read any blob whose digest they know.

use crate::contract::{Host, Level, RepoType, Repository};
use crate::error::RegistryError;
use crate::meta;
use crate::reference::{Digest, Name};
use crate::store;
use crate::upstream::upstream_name;

/// Whether the blob is stored and linked where `from` says (or, without `from`, in any image
/// of this repository).
pub fn mountable(
    host: &impl Host,
    own: &Repository,
    digest: &Digest,
    from: Option<&str>,
) -> Result<bool, RegistryError> {
    if !store::blob_present(host, digest)? {
        return Ok(false);
    }
    match from {
        Some(from) => linked_at(host, own, digest, from),
        None => Ok(meta::blob_linked_anywhere(host, digest)?),
    }
}

fn linked_at(
    host: &impl Host,
    own: &Repository,
    digest: &Digest,
    from: &str,
) -> Result<bool, RegistryError> {
    if let Ok(image) = Name::parse(from)
        && meta::blob_linked(host, &image, digest)?
    {
        return Ok(true);
    }
    let Some((repo_name, image)) = from.split_once('/') else {
        return Ok(false);
    };
    let Ok(image) = Name::parse(image) else {
        return Ok(false);
    };
    if repo_name == own.name {
        return Ok(meta::blob_linked(host, &image, digest)?);
    }
    let Some(repo) = host
        .repositories()
        .into_iter()
        .find(|r| r.name == repo_name)
    else {
        return Ok(false);
    };
    // a virtual repository's images are its members'
    let members = match repo.repo_type {
        RepoType::Virtual => {
            let all = host.repositories();
            repo.members
                .iter()
                .filter_map(|m| all.iter().find(|r| &r.name == m).cloned())
                .collect()
        }
        _ => vec![repo],
    };
    Ok(members.iter().any(|r| linked_in(host, r, &image, digest)))
}

/// A link in another repository. Remote repositories link blobs under the upstream's name
/// (`library/redis` on Docker Hub for a client's `redis`).
fn linked_in(host: &impl Host, repo: &Repository, image: &Name, digest: &Digest) -> bool {
    let image = match (&repo.repo_type, repo.remote_url.as_deref()) {
        (RepoType::Remote, Some(url)) => upstream_name(url, image),
        _ => image.clone(),
    };
    match host.meta_get_in(&repo.name, &meta::blob_key(digest, &image)) {
        Ok(found) => found.is_some_and(|v| meta::BlobLink::from_value(&v) == meta::BlobLink::Held),
        Err(e) => {
            host.log(
                Level::Debug,
                &format!("mount from {}/{image}: not readable ({e})", repo.name),
            );
            false
        }
    }
}
