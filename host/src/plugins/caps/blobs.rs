//! `blob-*`: the content-addressed store. Small documents only cross into the plugin.

use super::Scope;
use super::blocking;
use crate::digest::Digest;
use crate::plugins::bindings::types::{BlobInfo, HostError};
use crate::storage::blobs::BlobError;
use crate::upstream::SMALL_LIMIT;

fn parse(digest: &str) -> Result<Digest, HostError> {
    digest.parse().map_err(|e: crate::digest::DigestError| HostError::InvalidDigest(e.to_string()))
}

fn err(e: BlobError) -> HostError {
    match e {
        BlobError::Unknown(d) => HostError::Internal(format!("blob {d} vanished")),
        BlobError::DigestMismatch { .. } => HostError::DigestMismatch(e.to_string()),
        BlobError::TooLarge { size, .. } => HostError::TooLarge(size),
        BlobError::Io { .. } => HostError::Internal(e.to_string()),
    }
}

/// Before the look-up: a plugin asks for a blob because it is about to reference it (a layer of
/// a push, a mount, a manifest's layers), and garbage collection must know. A reference that
/// a collection in progress must see but that could not be recorded refuses the whole call
/// (`Scope::refuse`): the request is answered 503, whatever the plugin makes of the error.
async fn reference(state: &Scope, digest: &Digest) -> Result<(), HostError> {
    if state.collection {
        return Ok(());
    }
    let touches = state.caps.store.touches();
    // A reference may be a statement on the shared store: off the plugin's thread then. On one
    // node it is a map update, done here.
    let touched = if touches.shared_store().is_some() {
        let (touches, digest) = (touches.clone(), digest.clone());
        tokio::task::spawn_blocking(move || touches.touch(&digest).map_err(|e| e.to_string())).await.unwrap_or_else(|e| Err(e.to_string()))
    } else {
        touches.touch(digest).map_err(|e| e.to_string())
    };
    touched.map_err(|e| {
        state.refuse(e.clone());
        HostError::Internal(e)
    })
}

pub async fn stat(state: &Scope, digest: String) -> Result<Option<BlobInfo>, HostError> {
    let digest = parse(&digest)?;
    reference(state, &digest).await?;
    if let Some(b) = state.caps.store.cached(&digest) {
        return Ok(Some(BlobInfo { size: b.len() as u64 }));
    }
    let store = state.caps.store.clone();
    blocking(move || Ok(store.stat(&digest).map_err(err)?.map(|size| BlobInfo { size }))).await
}

pub async fn read(state: &Scope, digest: String) -> Result<Vec<u8>, HostError> {
    let digest = parse(&digest)?;
    reference(state, &digest).await?;
    if let Some(b) = state.caps.store.cached(&digest).filter(|b| b.len() as u64 <= SMALL_LIMIT) {
        return Ok(b.to_vec());
    }
    let store = state.caps.store.clone();
    blocking(move || store.read_small(&digest, SMALL_LIMIT).map_err(err)).await
}

pub async fn write(state: &Scope, data: Vec<u8>, expected: Option<String>) -> Result<String, HostError> {
    if data.len() as u64 > SMALL_LIMIT {
        return Err(HostError::TooLarge(data.len() as u64));
    }
    let expected = expected.as_deref().map(parse).transpose()?;
    let store = state.caps.store.clone();
    blocking(move || Ok(store.write_small(&data, expected.as_ref()).map_err(err)?.to_string())).await
}

/// `read-range`: a piece of a blob of any size; an absent blob is the plugin's mistake (it
/// should have asked `stat`), not the host's failure.
pub async fn read_range(state: &Scope, digest: String, offset: u64, length: u64) -> Result<Vec<u8>, HostError> {
    let digest = parse(&digest)?;
    if length > SMALL_LIMIT {
        return Err(HostError::TooLarge(length));
    }
    let store = state.caps.store.clone();
    blocking(move || {
        store.read_range(&digest, offset, length).map_err(|e| match e {
            BlobError::Unknown(d) => HostError::NotAllowed(format!("blob {d} is not stored")),
            e => err(e),
        })
    })
    .await
}
