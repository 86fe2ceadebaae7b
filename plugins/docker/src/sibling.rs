//! Blobs a push may take from the other members of a virtual repository.
//!
//! A client pushing through a virtual repository asks `HEAD …/blobs/<digest>` through it, and
//! the virtual repository answers from whichever member holds the blob, often the remote that
//! cached the base image. The client then skips the upload, and the manifest reaches the
//! default-local member, which has never seen the blob. So a local repository that is some
//! virtual repository's `default-local` accepts a blob held by another member of that virtual
//! repository, as an implicit cross-repository mount: the pusher could read it through the
//! virtual repository anyway, and the host only shows this plugin the repositories the caller
//! may read.

use crate::contract::{Host, Level, RepoType, Repository};
use crate::error::RegistryError;
use crate::meta::{self, BlobLink};
use crate::reference::Digest;

/// Image links looked at per member: one held link is enough, and a digest is linked under a
/// handful of names in practice.
const LINKS_PER_MEMBER: usize = 64;

/// Whether another member of a virtual repository that pushes into `own` holds `digest`.
pub fn holds(host: &impl Host, own: &Repository, digest: &Digest) -> Result<bool, RegistryError> {
    let all = host.repositories();
    let siblings = all
        .iter()
        .filter(|v| {
            v.repo_type == RepoType::Virtual
                && v.default_local.as_deref() == Some(own.name.as_str())
        })
        .flat_map(|v| v.members.iter())
        .filter(|m| m.as_str() != own.name);
    let mut seen: Vec<&str> = Vec::new();
    for member in siblings {
        if seen.contains(&member.as_str()) {
            continue;
        }
        seen.push(member);
        if all
            .iter()
            .any(|r| &r.name == member && r.repo_type != RepoType::Virtual)
            && member_holds(host, member, digest)
        {
            host.log(
                Level::Debug,
                &format!("blob {digest}: held by {member}, linked into {}", own.name),
            );
            return Ok(true);
        }
    }
    Ok(false)
}

/// A held link under any image of `member`; unreadable counts as not held.
fn member_holds(host: &impl Host, member: &str, digest: &Digest) -> bool {
    let keys = match host.meta_list_in(member, &meta::blob_prefix(digest)) {
        Ok(keys) => keys,
        Err(e) => {
            host.log(
                Level::Debug,
                &format!("blob {digest} in {member}: not readable ({e})"),
            );
            return false;
        }
    };
    keys.iter().take(LINKS_PER_MEMBER).any(|key| {
        matches!(host.meta_get_in(member, key), Ok(Some(v)) if BlobLink::from_value(&v) == BlobLink::Held)
    })
}
