//! `GET /api/stats` and `GET /api/repositories/<name>/stats`: what each repository holds and
//! what its cache saved, for anyone who may read it (the web page shows it to anonymous users of
//! an open server too). Format-neutral: the size is the sum of the blobs the repository's plugin
//! says it needs (`live-blobs-page`, the same set garbage collection keeps), the cache figures come
//! from `crate::metrics`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Response, StatusCode};
use serde::Serialize;
use serde_json::json;

use super::{ApiError, ok};
use crate::App;
use crate::auth::{Access, Identity, permits};
use crate::metrics::CacheStats;
use crate::repos::{RepoType, Repository};
use crate::server::body::Body;

#[derive(Serialize)]
struct RepositoryStats<'a> {
    name: &'a str,
    #[serde(rename = "type")]
    repo_type: RepoType,
    format: &'a str,
    /// Members of a virtual repository (their own entries carry the figures).
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    members: Vec<&'a str>,
    /// Blobs the repository needs and their bytes on disk; none for a virtual repository, or
    /// when its plugin could not say. A blob shared by two repositories counts in both.
    blobs: Option<u64>,
    size_bytes: Option<u64>,
    /// Since the server started.
    cache: CacheStats,
    /// For a remote: bytes sent to clients beyond those received from upstream.
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_saved: Option<u64>,
}

/// `which`: one repository, or (None) every one the caller may read.
pub(super) async fn answer(app: &Arc<App>, identity: &Identity, which: Option<&str>) -> Result<Response<Body>, ApiError> {
    let readable = |r: &Repository| permits(identity, r.grants(), Access::Read);
    match which {
        Some(name) => {
            // One the caller may not read looks like one that does not exist.
            let repo =
                app.repos.get(name).filter(|r| readable(r)).ok_or_else(|| ApiError::NotFound(format!("repository {name:?} not found")))?;
            let (blobs, size) = on_disk(app, &repo).await;
            Ok(ok(StatusCode::OK, json!(stats_of(app, &repo, blobs, size))))
        }
        None => {
            let mut repos: Vec<Arc<Repository>> = app.repos.list().into_iter().filter(|r| readable(r)).collect();
            repos.sort_by(|a, b| a.name.cmp(&b.name));
            let mut list = Vec::with_capacity(repos.len());
            for repo in &repos {
                let (blobs, size) = on_disk(app, repo).await;
                list.push(json!(stats_of(app, repo, blobs, size)));
            }
            Ok(ok(StatusCode::OK, json!({ "repositories": list })))
        }
    }
}

fn stats_of<'a>(app: &App, repo: &'a Repository, blobs: Option<u64>, size_bytes: Option<u64>) -> RepositoryStats<'a> {
    let cache = app.metrics.cache_stats(repo.name.as_str());
    RepositoryStats {
        name: repo.name.as_str(),
        repo_type: repo.repo_type,
        format: &repo.format,
        members: repo.members.iter().map(|m| m.as_str()).collect(),
        blobs,
        size_bytes,
        bytes_saved: (repo.repo_type == RepoType::Remote).then_some(cache.bytes_saved()),
        cache,
    }
}

/// How long a repository's size is reused: the page needs no fresher figure, and anyone who may
/// read a repository may call this, so a caller in a loop costs one plugin call per repository
/// per interval, not one per request.
const SIZE_TTL: Duration = Duration::from_secs(15);

/// Sizes computed recently, one entry per repository (entries of deleted ones are dropped on the
/// next store, so the map stays as large as the repository list).
#[derive(Default)]
pub struct SizeCache(Mutex<HashMap<String, Sizes>>);

/// When they were computed, and the repository's (blob bytes, stored bytes).
type Sizes = (Instant, Option<u64>, Option<u64>);

impl SizeCache {
    fn get(&self, repo: &str) -> Option<(Option<u64>, Option<u64>)> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(repo).filter(|(at, _, _)| at.elapsed() < SIZE_TTL).map(|(_, b, s)| (*b, *s))
    }

    /// After a change that moves sizes (garbage collection, a repository replaced or deleted).
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn put(&self, app: &App, repo: &str, value: (Option<u64>, Option<u64>)) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|name, _| app.repos.get(name).is_some());
        map.insert(repo.to_owned(), (Instant::now(), value.0, value.1));
    }
}

/// (blob count, bytes) of what the repository's plugin says it needs and the store holds.
async fn on_disk(app: &App, repo: &Arc<Repository>) -> (Option<u64>, Option<u64>) {
    if repo.repo_type == RepoType::Virtual {
        return (None, None);
    }
    if let Some(cached) = app.sizes.get(repo.name.as_str()) {
        return cached;
    }
    let measured = measure(app, repo).await;
    app.sizes.put(app, repo.name.as_str(), measured);
    measured
}

async fn measure(app: &App, repo: &Arc<Repository>) -> (Option<u64>, Option<u64>) {
    let digests: crate::gc::LiveSet = match repo.repo_type {
        // What a remote cached is what it pulled: the access log (kept for its cache limits)
        // knows without asking the plugin, whose `live-blobs-page` also tidies a remote's links
        // to fetches that never finished, housekeeping for garbage collection's runs only.
        RepoType::Remote => {
            let (access, name) = (app.gc.access.clone(), repo.name.to_string());
            let listed = tokio::task::spawn_blocking(move || {
                access.flush()?;
                access.of_repository(&name)
            })
            .await;
            match listed {
                Ok(Ok(pulled)) => pulled.into_keys().collect(),
                Ok(Err(e)) => {
                    tracing::warn!(repo = %repo.name, "stats: access log unreadable: {e}");
                    return (None, None);
                }
                Err(e) => {
                    tracing::error!(repo = %repo.name, error = %e, "stats: reading the access log failed");
                    return (None, None);
                }
            }
        }
        _ => {
            let Some(plugin) = app.plugins.get(&repo.format) else { return (None, None) };
            match crate::gc::live_set(app, &plugin, repo).await {
                Ok(live) => live,
                Err(e) => {
                    tracing::warn!(repo = %repo.name, "stats: {e}");
                    return (None, None);
                }
            }
        }
    };
    let store = app.caps.store.clone();
    let summed = tokio::task::spawn_blocking(move || {
        // the set holds each digest once
        let (mut count, mut bytes) = (0u64, 0u64);
        for digest in digests.iter() {
            if let Ok(Some(len)) = store.stat(&digest) {
                count += 1;
                bytes += len;
            }
        }
        (count, bytes)
    })
    .await;
    match summed {
        Ok((count, bytes)) => (Some(count), Some(bytes)),
        Err(e) => {
            tracing::error!(repo = %repo.name, error = %e, "stats: summing blob sizes failed");
            (None, None)
        }
    }
}
