//! Configuration reloads while serving: on SIGHUP, and when the config file's modification time
//! changes (checked every `config_watch_seconds`).
//!
//! The new configuration (file and environment, flags still winning) is compared with the running
//! one key by key. Keys that can change live do (`log_level`, `metrics_anonymous`, the
//! repositories the file manages); every other changed key is logged as needing a restart. A
//! configuration that does not parse is logged and the running one kept.
//!
//! Repositories: with `repositories_mode = "managed"` the file is authoritative for the
//! repositories it declares: each is created or updated from it at start and on every reload, and
//! the API refuses to change or delete it (409). Repositories the file does not declare are the
//! API's. One dropped from the file is kept, now owned by the API (deleting stored content on an
//! edit of the file would be too easy a mistake); a warning says so. With the default
//! `repositories_mode = "seed"`, `repositories` only seeds an empty data directory, and a changed
//! list is logged as not applied.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use crate::App;
use crate::config::{Config, Live, Loaded, RepositoriesMode};
use crate::repos::{RepoError, RepoType, Repos, Repository};

/// Keys whose change takes effect without a restart.
const LIVE_KEYS: [&str; 4] = ["log_level", "metrics_anonymous", "repositories", "repositories_mode"];

/// At start, with `repositories_mode = "managed"`: stores the declared repositories that differ
/// from what the data directory holds, and marks them file-managed.
pub fn adopt_declared(repos: &Repos, live: &Live, declared: Vec<Repository>) -> Result<(), RepoError> {
    let mut names = BTreeSet::new();
    // Members before the virtual repositories that list them.
    let (virtuals, others): (Vec<_>, Vec<_>) = declared.into_iter().partition(|r| r.repo_type == RepoType::Virtual);
    for repo in others.into_iter().chain(virtuals) {
        names.insert(repo.name.as_str().to_owned());
        if repos.get(repo.name.as_str()).is_some_and(|old| same(&old, &repo)) {
            continue;
        }
        let (repo, old) = repos.put(repo)?;
        tracing::info!(repo = %repo.name, replaced = old.is_some(), "repository stored from the configuration file");
    }
    live.set_file_managed(names);
    Ok(())
}

fn same(a: &Repository, b: &Repository) -> bool {
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}

/// Starts the task that reloads on SIGHUP and on a change of the file; it ends at shutdown.
pub fn spawn(app: Arc<App>) {
    tokio::spawn(async move {
        let path = app.config.source.path.clone();
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; the configuration is reloaded only when the file changes");
                None
            }
        };
        let poll = app.config.config_watch.filter(|_| path.is_some());
        let mut shutdown = app.shutdown.subscribe();
        let mut stamp = path.as_deref().and_then(modified);
        let mut current = app.config.source.table.clone();
        loop {
            let signalled = tokio::select! {
                got = async { match hangup.as_mut() { Some(h) => h.recv().await.is_some(), None => std::future::pending().await } } => {
                    if !got {
                        // The signal stream ended: only the file watch is left.
                        hangup = None;
                        continue;
                    }
                    true
                }
                _ = async { match poll { Some(p) => tokio::time::sleep(p).await, None => std::future::pending().await } } => false,
                _ = shutdown.changed() => return,
            };
            let now = path.as_deref().and_then(modified);
            if !signalled && now == stamp {
                continue;
            }
            stamp = now;
            reload(&app, &mut current, signalled).await;
        }
    });
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

async fn reload(app: &Arc<App>, current: &mut toml::Table, signalled: bool) {
    let trigger = if signalled { "SIGHUP" } else { "file changed" };
    let source = &app.config.source;
    let loaded = match Loaded::read(source.path.as_deref()) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(trigger, error = %e, "configuration not reloaded; the running one stays");
            return;
        }
    };
    let config = match loaded.file_config() {
        Ok(f) => Config::resolve(f, source.flags.clone()),
        Err(e) => {
            tracing::warn!(trigger, error = %e, "configuration not reloaded; the running one stays");
            return;
        }
    };
    let mut keys: BTreeSet<&String> = current.keys().collect();
    keys.extend(loaded.table.keys());
    let changed: Vec<String> = keys.into_iter().filter(|k| current.get(*k) != loaded.table.get(*k)).cloned().collect();
    for key in &changed {
        match key.as_str() {
            "log_level" => match crate::logging::set_level(&config.log_level) {
                Ok(()) => tracing::info!(log_level = %config.log_level, "log level changed"),
                Err(e) => tracing::warn!(log_level = %config.log_level, error = %e, "log level not changed"),
            },
            "metrics_anonymous" => {
                app.live.set_metrics_anonymous(config.metrics_anonymous);
                tracing::info!(metrics_anonymous = config.metrics_anonymous, "metrics access changed");
            }
            k if LIVE_KEYS.contains(&k) => {}
            k => tracing::warn!(key = k, "setting changed in the configuration; it takes effect after a restart"),
        }
    }
    reconcile(app, &config, changed.iter().any(|k| k == "repositories" || k == "repositories_mode")).await;
    *current = loaded.table;
    tracing::info!(trigger, changed = ?changed, "configuration reloaded");
}

/// Applies the file's repositories as `repositories_mode` says (see the module comment).
async fn reconcile(app: &Arc<App>, config: &Config, changed: bool) {
    if config.repositories_mode == RepositoriesMode::Seed || !config.repositories_declared {
        if changed {
            tracing::warn!(
                "repositories changed in the configuration file, not applied: with repositories_mode = \"seed\" they only seed \
                 an empty data directory and the API owns them (set repositories_mode = \"managed\" to apply them)"
            );
        }
        let dropped = app.live.file_managed();
        if !dropped.is_empty() {
            tracing::warn!(repos = ?dropped, "repositories no longer managed by the configuration file; kept, now managed through the API");
            app.live.set_file_managed(BTreeSet::new());
        }
        return;
    }
    let formats = app.plugins.formats();
    let mut names = BTreeSet::new();
    let (virtuals, others): (Vec<_>, Vec<_>) =
        config.seed_repositories.iter().cloned().partition(|r| r.repo_type.as_deref() == Some("virtual"));
    for input in others.into_iter().chain(virtuals) {
        let name = input.name.clone().unwrap_or_default();
        let repo = match input.clone().validate(None, &formats).and_then(|r| app.plugins.check_settings(&r).map(|()| r)) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(repo = %name, error = %e, "repository in the configuration file not applied");
                continue;
            }
        };
        names.insert(name.clone());
        if app.repos.get(&name).is_some_and(|old| same(&old, &repo)) {
            continue;
        }
        match crate::api::apply_declared(app, &name, input).await {
            Ok(()) => tracing::info!(repo = %name, "repository stored from the configuration file"),
            Err(e) => tracing::warn!(repo = %name, error = %e, "repository in the configuration file not applied"),
        }
    }
    let dropped: Vec<String> = app.live.file_managed().difference(&names).cloned().collect();
    if !dropped.is_empty() {
        tracing::warn!(repos = ?dropped, "repositories no longer declared in the configuration file; kept, now managed through the API");
    }
    app.live.set_file_managed(names);
}
