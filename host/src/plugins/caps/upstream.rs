//! `upstream`: requests to the repository's remote (or a realm it named), small bodies only.

use super::Scope;
use crate::plugins::bindings::types::{FetchedDocument, FetchedFile, HostError, UpstreamRequest, UpstreamResponse};
use crate::upstream::document::{DocumentError, Lease};
use crate::upstream::{UpstreamError, parse_request};

pub fn to_host_error(e: UpstreamError) -> HostError {
    match e {
        UpstreamError::NotAllowed(m) | UpstreamError::Invalid(m) => HostError::NotAllowed(m),
        UpstreamError::Unreachable(m) => HostError::UpstreamUnreachable(m),
        // The upstream led the request where a remote may not go: to the client, an upstream failure.
        UpstreamError::Refused(m) => HostError::UpstreamUnreachable(format!("refused: {m}")),
        UpstreamError::TooLarge(n) => HostError::TooLarge(n),
    }
}

pub async fn request(state: &Scope, req: UpstreamRequest) -> Result<UpstreamResponse, HostError> {
    let repo = state.repo()?;
    let typed = parse_request(&req.method, &req.url, &req.headers, req.with_credentials).map_err(to_host_error)?;
    let deadline = state.caps.upstream.config().idle_timeout;
    let (method, url) = (typed.method.clone(), typed.url.clone());
    let resp = state.caps.upstream.small_shared(repo, typed, deadline).await.map_err(to_host_error)?;
    tracing::debug!(method = %method, url = %url, status = resp.status.as_u16(), "upstream");
    let headers = resp.headers.iter().filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_owned(), v.to_owned()))).collect();
    Ok(UpstreamResponse { status: resp.status.as_u16(), headers, body: resp.body.to_vec() })
}

/// `fetch`: a document of any size into the blob store (upstream/document.rs). The lease of a
/// fetch this call started goes to `leases`, which the call keeps until it ends.
pub async fn fetch(
    state: &Scope,
    leases: &mut Vec<Lease>,
    key: String,
    req: UpstreamRequest,
    max_bytes: u64,
) -> Result<FetchedDocument, HostError> {
    let repo = state.repo()?;
    let typed = parse_request(&req.method, &req.url, &req.headers, req.with_credentials).map_err(to_host_error)?;
    let (doc, lease) = state.caps.upstream.fetch_document(&state.caps.store, repo, key, typed, max_bytes).await;
    // Bounded by the call: a plugin that fetches many keys holds a lease per key until it returns.
    leases.extend(lease);
    let doc = doc.map_err(|e| match e {
        DocumentError::Upstream(e) => to_host_error(e),
        DocumentError::TooLarge { seen, .. } => HostError::TooLarge(seen),
        DocumentError::Storage(m) => HostError::Internal(m),
    })?;
    let file = doc.file.map(|(digest, size)| FetchedFile { digest: digest.to_string(), size });
    Ok(FetchedDocument { status: doc.status, headers: doc.headers, file })
}

/// `allow-origin`: lets this repository reach an origin its remote named in a document the
/// plugin received (or read back from the store) in this very call.
pub fn allow_origin(state: &Scope, seen: &crate::plugins::state::SeenOrigins, origin: &str) -> Result<(), HostError> {
    let repo = state.repo()?;
    let url = url::Url::parse(origin).map_err(|e| HostError::NotAllowed(format!("origin {origin:?}: {e}")))?;
    let bare = matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some()
        && url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none();
    if !bare {
        return Err(HostError::NotAllowed(format!("{origin:?} is not an origin (scheme://host[:port])")));
    }
    let normal = url.origin().ascii_serialization();
    let named = seen.contains(&normal) || seen.contains(origin.trim_end_matches('/'));
    if !named {
        return Err(HostError::NotAllowed(format!("{normal} was not named by anything {} served in this call", repo.name)));
    }
    state.caps.upstream.allow_origin(&repo, normal);
    Ok(())
}
