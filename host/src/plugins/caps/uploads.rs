//! `upload-*`: upload sessions of the request's repository. The bytes never pass through the
//! plugin: a `receive-upload` plan has the host append the request body.

use super::{Scope, blocking};
use crate::plugins::bindings::types::HostError;
use crate::storage::uploads::{UploadError, UploadId};

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
