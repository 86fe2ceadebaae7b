//! One member's answer to a merged read of a virtual repository: its plugin's plan carried out
//! into what `merge` is handed. Bodies stay out of memory unless the member answered with a
//! small one: a stored blob is named, and a fetch is completed into the store first.

use std::sync::Arc;

use crate::App;
use crate::digest::Digest;
use crate::plugins::LoadedPlugin;
use crate::plugins::bindings::types::{self, FetchedFile, MemberAnswer, MemberBody, Plan};
use crate::repos::Repository;
use crate::upstream::fill::{FillError, Joined};
use crate::upstream::parse_request;

fn without_body(repository: &Repository, status: u16) -> MemberAnswer {
    MemberAnswer { repository: repository.name.to_string(), status, headers: Vec::new(), body: MemberBody::None }
}

fn stored(repository: &Repository, headers: Vec<(String, String)>, digest: &Digest, size: u64) -> MemberAnswer {
    let file = FetchedFile { digest: digest.to_string(), size };
    MemberAnswer { repository: repository.name.to_string(), status: 200, headers, body: MemberBody::Blob(file) }
}

/// The status a member's failed fetch is reported with.
fn fill_status(e: &FillError) -> u16 {
    match e {
        FillError::Status(s) => *s,
        FillError::TooMany { .. } => 429,
        FillError::Storage(_) => 500,
        _ => 502,
    }
}

/// Carries out `plan`, the answer of `member`'s plugin to `request`.
pub(super) async fn answer(
    app: &App,
    plugin: &Arc<LoadedPlugin>,
    member: &Arc<Repository>,
    request: &types::Request,
    plan: Plan,
) -> MemberAnswer {
    let format = &plugin.meta.format;
    match plan {
        Plan::Respond(r) => {
            let body = if r.body.is_empty() { MemberBody::None } else { MemberBody::Inline(r.body) };
            MemberAnswer { repository: member.name.to_string(), status: r.status, headers: r.headers, body }
        }
        Plan::ServeBlob(s) => {
            let Ok(digest) = s.digest.parse::<Digest>() else {
                tracing::error!(plugin = %format, digest = %s.digest, "serve-blob of an invalid digest in a merged read");
                return without_body(member, 500);
            };
            let store = app.caps.store.clone();
            let d = digest.clone();
            match tokio::task::spawn_blocking(move || store.stat(&d)).await {
                Ok(Ok(Some(size))) => stored(member, s.headers, &digest, size),
                Ok(Ok(None)) => without_body(member, 404),
                _ => without_body(member, 500),
            }
        }
        Plan::FetchBlob(f) => {
            let (Ok(digest), Ok(req)) = (
                f.digest.parse::<Digest>(),
                parse_request(&f.request.method, &f.request.url, &f.request.headers, f.request.with_credentials),
            ) else {
                tracing::error!(plugin = %format, "fetch-blob with an invalid digest or request in a merged read");
                return without_body(member, 500);
            };
            match app.fills.join_or_start(member.clone(), digest.clone(), req) {
                Ok(Joined::Stored | Joined::StoredAs(..)) => match app.caps.store.stat(&digest) {
                    Ok(Some(size)) => stored(member, f.headers, &digest, size),
                    _ => without_body(member, 500),
                },
                Ok(Joined::Filling(fill)) => match super::respond::wait_stored(&fill.progress).await {
                    Ok((digest, size)) => stored(member, f.headers, &digest, size),
                    Err(e) => without_body(member, fill_status(&e)),
                },
                Err(e) => without_body(member, fill_status(&e)),
            }
        }
        Plan::FetchFile(f) => {
            let Ok(req) = parse_request(&f.request.method, &f.request.url, &f.request.headers, f.request.with_credentials) else {
                tracing::error!(plugin = %format, "fetch-file with an invalid request in a merged read");
                return without_body(member, 500);
            };
            let (fill, started) = match app.fills.join_or_start_file(member.clone(), f.key.clone(), req, f.max_bytes) {
                Ok((Joined::StoredAs(digest, size), _)) => return stored(member, f.headers, &digest, size),
                Ok((Joined::Filling(fill), started)) => (fill, started),
                Ok((Joined::Stored, _)) => return without_body(member, 500),
                Err(e) => return without_body(member, fill_status(&e)),
            };
            match super::respond::wait_stored(&fill.progress).await {
                Ok((digest, size)) => {
                    if started {
                        let file = FetchedFile { digest: digest.to_string(), size };
                        let recorded = app.plugins.file_fetched(plugin, Some(member.clone()), request, &f.key, &file).await;
                        if let Err(e) = recorded {
                            tracing::warn!(key = %f.key, error = %e.detail(), "the plugin did not record a fetched file");
                        }
                    }
                    stored(member, f.headers, &digest, size)
                }
                Err(FillError::TooLarge { .. }) => without_body(member, 413),
                Err(e) => without_body(member, fill_status(&e)),
            }
        }
        Plan::ReadBody(_) | Plan::ReceiveUpload(_) => {
            tracing::error!(plugin = %format, "a request-body plan for a merged read");
            without_body(member, 500)
        }
    }
}
