//! Look-ups in the repository's own store, shared by local and remote repositories.

use crate::contract::{Host, HostError, Level};
use crate::error::RegistryError;
use crate::media_type;
use crate::meta;
use crate::reference::Digest;

pub fn blob_present(host: &impl Host, digest: &Digest) -> Result<bool, RegistryError> {
    Ok(host.blob_stat(digest.as_str())?.is_some())
}

/// The media type of a manifest held in the store, or None when it is not held.
///
/// A blob without its `manifest/<digest>` record (a write that died half-way, or metadata
/// lost) is read back and recognised by shape rather than fetched again.
pub fn stored_manifest(host: &impl Host, digest: &Digest) -> Result<Option<String>, RegistryError> {
    if !blob_present(host, digest)? {
        return Ok(None);
    }
    if let Some(m) = meta::get_manifest(host, digest)? {
        return Ok(Some(m.media_type));
    }
    let bytes = match host.blob_read(digest.as_str()) {
        Ok(b) => b,
        // larger than any manifest: a layer
        Err(HostError::TooLarge(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let Some(media_type) = media_type::sniff(&bytes) else {
        return Ok(None);
    };
    if let Err(e) = meta::put_manifest(host, digest, &media_type) {
        host.log(
            Level::Warn,
            &format!("could not record manifest {digest}: {e}"),
        );
    }
    Ok(Some(media_type))
}
