//! Garbage collection: blobs that no repository needs any more are removed from the store.
//!
//! Each repository's plugin says which digests it still needs (`live-blobs`); the host removes
//! every stored blob outside that union which is older than the grace period. Nothing is
//! locked: a client streaming a blob keeps its open file even if the blob is removed, and a
//! blob written during the collection is younger than the grace period.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::App;
use crate::digest::Digest;
use crate::repos::RepoType;

#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    pub removed: u64,
    pub removed_bytes: u64,
    pub kept: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// Without the plugin we cannot know what the repository needs: collect nothing.
    #[error("repository {repo}: format {format} has no plugin loaded; nothing collected")]
    NoPlugin { repo: String, format: String },
    #[error("repository {repo}: {message}; nothing collected")]
    Plugin { repo: String, message: String },
    #[error("blob store: {0}")]
    Io(#[from] std::io::Error),
}

pub async fn collect(app: &App, grace: Duration) -> Result<GcReport, GcError> {
    let mut live: HashSet<Digest> = HashSet::new();
    for repo in app.repos.list() {
        if repo.repo_type == RepoType::Virtual {
            continue;
        }
        let plugin =
            app.plugins.get(&repo.format).ok_or_else(|| GcError::NoPlugin { repo: repo.name.to_string(), format: repo.format.clone() })?;
        let digests = app.plugins.live_blobs(&plugin, repo.clone()).await.map_err(|e| {
            tracing::error!(repo = %repo.name, "live-blobs failed: {}", e.detail());
            GcError::Plugin { repo: repo.name.to_string(), message: e.to_string() }
        })?;
        for d in digests {
            match d.parse::<Digest>() {
                Ok(d) => {
                    live.insert(d);
                }
                Err(e) => tracing::warn!(repo = %repo.name, error = %e, "live-blobs returned a bad digest"),
            }
        }
    }
    let root = app.caps.store.layout().blobs();
    let report = tokio::task::spawn_blocking(move || sweep(&root, &live, grace)).await.map_err(std::io::Error::other)??;
    if report.removed > 0 {
        app.caps.store.forget_cached();
    }
    tracing::info!(removed = report.removed, bytes = report.removed_bytes, kept = report.kept, "garbage collected");
    Ok(report)
}

/// `blobs/<algorithm>/<xx>/<hex>`: remove what is not live and old enough.
fn sweep(root: &Path, live: &HashSet<Digest>, grace: Duration) -> std::io::Result<GcReport> {
    let mut report = GcReport::default();
    let now = SystemTime::now();
    for algo in std::fs::read_dir(root)?.flatten() {
        for shard in std::fs::read_dir(algo.path())?.flatten() {
            for entry in std::fs::read_dir(shard.path())?.flatten() {
                let name = format!("{}:{}", algo.file_name().to_string_lossy(), entry.file_name().to_string_lossy());
                let Ok(digest) = name.parse::<Digest>() else { continue };
                let meta = entry.metadata()?;
                let young = meta.modified().ok().and_then(|m| now.duration_since(m).ok()).is_none_or(|age| age < grace);
                if live.contains(&digest) || young {
                    report.kept += 1;
                } else if std::fs::remove_file(entry.path()).is_ok() {
                    report.removed += 1;
                    report.removed_bytes += meta.len();
                }
            }
        }
    }
    Ok(report)
}
