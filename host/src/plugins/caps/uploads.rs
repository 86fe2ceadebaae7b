//! `upload-*`: upload sessions of the request's repository. The bytes never pass through the
//! plugin: a `receive-upload` plan has the host append the request body.

use super::{Scope, blocking};
use crate::digest::Digest;
use crate::plugins::bindings::types::{FetchedFile, HostError};
use crate::storage::uploads::{UploadError, UploadId};
use crate::upstream::SMALL_LIMIT;

fn parse(id: &str) -> Result<UploadId, HostError> {
    UploadId::parse(id).ok_or_else(|| HostError::NotAllowed(format!("{id:?} is not an upload id")))
}

async fn io<T: Send + 'static>(f: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> Result<T, HostError> {
    blocking(move || f().map_err(|e| HostError::Internal(e.to_string()))).await
}

/// `not-allowed` when the repository or the server has as many sessions open as allowed (the
/// Docker plugin answers it with 429 TOOMANYREQUESTS).
pub async fn start(state: &Scope) -> Result<String, HostError> {
    let repo = state.repo()?;
    let caps = state.caps.clone();
    blocking(move || {
        caps.uploads.start(repo.name.as_str()).map_err(|e| match e {
            UploadError::TooMany { .. } => HostError::Limit(e.to_string()),
            e => HostError::Internal(e.to_string()),
        })
    })
    .await
    .map(|id| id.as_str().to_owned())
}

pub async fn size(state: &Scope, id: String) -> Result<Option<u64>, HostError> {
    let repo = state.repo()?;
    let Ok(id) = parse(&id) else { return Ok(None) };
    let caps = state.caps.clone();
    io(move || caps.uploads.size(repo.name.as_str(), &id)).await
}

pub async fn cancel(state: &Scope, id: String) -> Result<(), HostError> {
    let repo = state.repo()?;
    let id = parse(&id)?;
    let caps = state.caps.clone();
    io(move || caps.uploads.cancel(repo.name.as_str(), &id)).await.map(|_| ())
}

/// A session that is gone (finished, expired, never started) is the plugin's mistake.
fn upload_err(e: UploadError) -> HostError {
    match e {
        UploadError::Unknown => HostError::NotAllowed("no such upload session in this repository".into()),
        UploadError::DigestMismatch(actual) => HostError::DigestMismatch(format!("the upload hashes to {actual}")),
        UploadError::TooMany { .. } => HostError::Limit(e.to_string()),
        e => HostError::Internal(e.to_string()),
    }
}

/// At most the small-document limit per call, so one call cannot make the host hold more.
fn within_limit(length: u64) -> Result<(), HostError> {
    if length > SMALL_LIMIT { Err(HostError::TooLarge(length)) } else { Ok(()) }
}

pub async fn read(state: &Scope, id: String, offset: u64, length: u64) -> Result<Vec<u8>, HostError> {
    let repo = state.repo()?;
    let id = parse(&id)?;
    within_limit(length)?;
    let caps = state.caps.clone();
    blocking(move || caps.uploads.read(repo.name.as_str(), &id, offset, length).map_err(upload_err)).await
}

pub async fn append(state: &Scope, id: String, data: Vec<u8>) -> Result<u64, HostError> {
    let repo = state.repo()?;
    let id = parse(&id)?;
    within_limit(data.len() as u64)?;
    let caps = state.caps.clone();
    // The same writer lock a request body's append takes: bytes never interleave.
    let lock = caps.uploads.lock(repo.name.as_str(), &id);
    let _writer = lock.lock().await;
    blocking(move || caps.uploads.append(repo.name.as_str(), &id, &data).map_err(upload_err)).await
}

pub async fn commit(state: &Scope, id: String, expected: Option<String>) -> Result<FetchedFile, HostError> {
    let repo = state.repo()?;
    let id = parse(&id)?;
    let expected = match expected {
        Some(d) => Some(d.parse::<Digest>().map_err(|e| HostError::InvalidDigest(e.to_string()))?),
        None => None,
    };
    let caps = state.caps.clone();
    let lock = caps.uploads.lock(repo.name.as_str(), &id);
    let _writer = lock.lock().await;
    let (digest, size) = blocking(move || caps.uploads.commit_as(repo.name.as_str(), &id, expected.as_ref()).map_err(upload_err)).await?;
    Ok(FetchedFile { digest: digest.to_string(), size })
}
