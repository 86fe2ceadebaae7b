//! `meta-*`: durable per-repository metadata.

use super::{Scope, blocking};
use crate::plugins::bindings::types::HostError;
use crate::storage::meta::MetaError;

const MAX_KEY: usize = 1024;
const MAX_VALUE: usize = 1024 * 1024;
/// Most keys one `keys-page` answers: a page costs the host one range scan of this many keys and
/// the plugin this many strings (~100 KiB of tag keys), whatever the `limit` asked.
pub const MAX_PAGE: u32 = 1000;

fn err(e: MetaError) -> HostError {
    match e {
        MetaError::BadKey(k) => HostError::NotAllowed(format!("bad key {k:?}")),
        other => HostError::Internal(other.to_string()),
    }
}

fn check_key(key: &str) -> Result<(), HostError> {
    if key.len() > MAX_KEY {
        return Err(HostError::NotAllowed(format!("key longer than {MAX_KEY} bytes")));
    }
    Ok(())
}

/// Point reads run inline on the embedded store: redb serves them from its page cache without a
/// syscall once warm, and a hop to the blocking pool would cost more than the read (~20 µs per
/// manifest GET). The shared store's reads are network round trips, on the blocking pool.
pub async fn get(state: &Scope, key: String) -> Result<Option<Vec<u8>>, HostError> {
    check_key(&key)?;
    let repo = state.repo()?;
    if state.caps.meta.reads_inline() {
        return state.caps.meta.get(repo.name.as_str(), &key).map_err(err);
    }
    let meta = state.caps.meta.clone();
    blocking(move || meta.get(repo.name.as_str(), &key).map_err(err)).await
}

pub async fn put(state: &Scope, key: String, value: Vec<u8>) -> Result<(), HostError> {
    check_key(&key)?;
    if value.len() > MAX_VALUE {
        return Err(HostError::TooLarge(value.len() as u64));
    }
    let repo = state.repo()?;
    let meta = state.caps.meta.clone();
    blocking(move || meta.put(repo.name.as_str(), &key, &value).map_err(err)).await
}

pub async fn delete(state: &Scope, key: String) -> Result<(), HostError> {
    check_key(&key)?;
    let repo = state.repo()?;
    let meta = state.caps.meta.clone();
    blocking(move || meta.delete(repo.name.as_str(), &key).map_err(err)).await
}

pub async fn list(state: &Scope, prefix: String) -> Result<Vec<String>, HostError> {
    check_key(&prefix)?;
    let repo = state.repo()?;
    let meta = state.caps.meta.clone();
    blocking(move || meta.list(repo.name.as_str(), &prefix).map_err(err)).await
}

/// One page of the repository's keys (see `MAX_PAGE`).
pub async fn list_page(state: &Scope, prefix: String, start_after: Option<String>, limit: u32) -> Result<Vec<String>, HostError> {
    check_key(&prefix)?;
    let repo = state.repo()?;
    page(state, repo.name.to_string(), prefix, start_after, limit).await
}

async fn page(state: &Scope, repo: String, prefix: String, start_after: Option<String>, limit: u32) -> Result<Vec<String>, HostError> {
    if let Some(a) = &start_after {
        check_key(a)?;
    }
    let limit = limit.min(MAX_PAGE) as usize;
    let meta = state.caps.meta.clone();
    blocking(move || meta.list_page(&repo, &prefix, start_after.as_deref(), limit).map_err(err)).await
}

/// Another repository of the same format, read-only.
fn sibling(state: &Scope, repository: &str) -> Result<String, HostError> {
    let format = state.format()?;
    match state.caps.repos.get(repository) {
        Some(r) if r.format == format && state.readable.may_read(&r) => Ok(r.name.to_string()),
        Some(r) if r.format == format => Err(HostError::NotAllowed(format!("the caller may not read repository {repository}"))),
        Some(_) => Err(HostError::NotAllowed(format!("repository {repository} is of another format"))),
        None => Err(HostError::NotAllowed(format!("no repository {repository}"))),
    }
}

pub async fn get_in(state: &Scope, repository: String, key: String) -> Result<Option<Vec<u8>>, HostError> {
    check_key(&key)?;
    let repo = sibling(state, &repository)?;
    if state.caps.meta.reads_inline() {
        return state.caps.meta.get(&repo, &key).map_err(err);
    }
    let meta = state.caps.meta.clone();
    blocking(move || meta.get(&repo, &key).map_err(err)).await
}

pub async fn list_in(state: &Scope, repository: String, prefix: String) -> Result<Vec<String>, HostError> {
    check_key(&prefix)?;
    let repo = sibling(state, &repository)?;
    let meta = state.caps.meta.clone();
    blocking(move || meta.list(&repo, &prefix).map_err(err)).await
}

pub async fn list_in_page(
    state: &Scope,
    repository: String,
    prefix: String,
    start_after: Option<String>,
    limit: u32,
) -> Result<Vec<String>, HostError> {
    check_key(&prefix)?;
    let repo = sibling(state, &repository)?;
    page(state, repo, prefix, start_after, limit).await
}
