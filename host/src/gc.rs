//! Garbage collection: blobs that no repository needs any more are removed from the store, and
//! remote repositories are kept within their cache limits.
//!
//! A run is a background job (`POST /api/gc` starts one, `GET /api/gc` shows its progress; one
//! at a time) and also runs every `gc_interval_hours`. It goes:
//!
//! 1. fence: start recording every blob reference (`storage::touch`), then wait for requests
//!    that began before that, so any reference they wrote is in the metadata marked next;
//!    with a shared store (several nodes), the run is announced there first and waits for
//!    every live node to acknowledge it: each then records its references in the shared store
//!    before using a blob, and its own requests that began before have finished (`nodes`);
//! 2. cleanup: each local repository with cleanup rules has its plugin remove the tags and
//!    manifests they select (`cleanup`), so the mark finds what only those used unreferenced;
//!    a plugin that fails here is logged and its repository left as it was;
//! 3. mark: each repository's plugin says which digests it still needs (`live-blobs-page`),
//!    a page at a time, each page with a CPU budget for the thousand keys or so it reads; the
//!    host keeps the union compactly (`live`);
//! 4. sweep: every stored blob outside the union, older than the grace period counted from
//!    its last reference, and not referenced since step 1, is removed;
//! 5. evict: remote repositories over their size budget or age limit lose what was pulled
//!    least recently (`evict`).
//!
//! Nothing is locked for longer than one blob's decision: requests go on meanwhile, and a
//! client streaming a blob keeps its open file even if the blob is removed.

mod evict;
mod live;
mod run;
mod sweep;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

pub use live::LiveSet;
use run::Counters;
pub use run::{Phase, Run, Status, Trigger};

use crate::App;
use crate::digest::Digest;
use crate::plugins::LoadedPlugin;
use crate::repos::{RepoName, RepoType, Repository};
use crate::storage::access::AccessLog;

/// How long the fence waits for requests that began before a run (an upload of a large layer).
const FENCE_WAIT: Duration = Duration::from_secs(15 * 60);
/// How long a run waits for the other nodes to acknowledge it: their fences wait as long, and
/// a little more for their heartbeat.
const NODES_WAIT: Duration = Duration::from_secs(15 * 60 + 30);
/// CPU a `cleanup` call gets per metadata key of its repository, on top of `plugin_cpu_ms`.
const CPU_PER_KEY: Duration = Duration::from_micros(500);
/// CPU a `live-blobs-page` call gets on top of `plugin_cpu_ms`: a page reads about a thousand keys.
const CPU_PER_PAGE: Duration = Duration::from_millis(500);
/// Keys counted per read for a cleanup's budget.
const COUNT_PAGE: usize = 1000;
/// A cursor longer than this is not a plugin's place in its metadata but a mistake.
const MAX_CURSOR: usize = 4096;
/// Access times reach the database at least this often.
const ACCESS_FLUSH: Duration = Duration::from_secs(60);

/// What a run did: its totals while it runs (`GET /api/gc`) and after (the offline command prints it).
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// blobs no repository needed, removed
    pub removed: u64,
    pub removed_bytes: u64,
    pub kept: u64,
    /// blobs removed to keep remote repositories within their cache limits
    pub evicted: u64,
    pub evicted_bytes: u64,
    /// tags removed by cleanup rules
    pub tags_removed: u64,
    /// manifests removed by cleanup rules (their blobs are then swept like any unreferenced blob)
    pub manifests_removed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// Without the plugin we cannot know what the repository needs: collect nothing.
    #[error("repository {repo}: format {format} has no plugin loaded; nothing collected")]
    NoPlugin { repo: String, format: String },
    #[error("repository {repo}: {message}; nothing collected")]
    Plugin { repo: String, message: String },
    #[error("{0}; nothing collected")]
    Fence(#[from] crate::storage::touch::FenceTimeout),
    /// Nodes that may still use blobs without recording it: nothing may be removed.
    #[error("nodes {nodes:?} did not acknowledge the collection within {after:?}; nothing collected")]
    Nodes { nodes: Vec<String>, after: Duration },
    #[error("metadata: {0}")]
    Meta(#[from] crate::storage::meta::MetaError),
    #[error("blob store: {0}")]
    Io(#[from] std::io::Error),
}

/// The server's collector: the run in progress or the last one, and blob access times.
pub struct Gc {
    pub access: Arc<AccessLog>,
    last: Mutex<Option<Arc<Run>>>,
    next_id: AtomicU64,
}

impl Gc {
    pub fn new(access: AccessLog) -> Gc {
        Gc { access: Arc::new(access), last: Mutex::new(None), next_id: AtomicU64::new(1) }
    }

    /// A remote repository's blob was served or fetched.
    pub fn pulled(&self, repo: &str, digest: &Digest) {
        self.access.record(repo, digest, unix_now());
    }

    /// The run in progress, or the last one.
    pub fn current(&self) -> Option<Arc<Run>> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Starts a run in the background, or returns the one running as the error.
    pub fn start(app: &Arc<App>, grace: Duration, trigger: Trigger) -> Result<Arc<Run>, Arc<Run>> {
        let run = {
            let mut last = app.gc.last.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(r) = last.as_ref().filter(|r| r.running()) {
                return Err(r.clone());
            }
            let run = Arc::new(Run::new(app.gc.next_id.fetch_add(1, Ordering::Relaxed), trigger, grace));
            *last = Some(run.clone());
            run
        };
        let (app, job) = (app.clone(), run.clone());
        tokio::spawn(async move {
            let outcome = execute(&app, &job).await;
            // The live set and the store's walk are gone: their pages go back to the system.
            let _ = tokio::task::spawn_blocking(crate::release_freed_memory).await;
            if let Err(e) = &outcome {
                tracing::error!(run = job.id, error = %e, "garbage collection failed");
            }
            // Sizes on disk shown by the stats are stale now.
            app.sizes.clear();
            job.finish(outcome.err().map(|e| e.to_string()));
        });
        Ok(run)
    }
}

/// CPU for one repository's `cleanup`: it reads all of the repository's tags and manifests, so
/// the budget grows with the number of keys (a large registry must not switch cleanup off).
/// The keys are counted a page at a time, never listed whole.
pub async fn cleanup_budget(app: &App, repo: &Repository) -> Result<Duration, GcError> {
    let keys = count_keys(app, repo).await?;
    Ok(app.config.plugins.cpu + CPU_PER_KEY * u32::try_from(keys).unwrap_or(u32::MAX))
}

/// The repository's metadata keys, counted a page at a time, never listed whole.
async fn count_keys(app: &App, repo: &Repository) -> Result<usize, GcError> {
    let (meta, name) = (app.caps.meta.clone(), repo.name.to_string());
    let keys = tokio::task::spawn_blocking(move || {
        let (mut n, mut after) = (0usize, None::<String>);
        loop {
            let page = meta.list_page(&name, "", after.as_deref(), COUNT_PAGE)?;
            n += page.len();
            let full = page.len() == COUNT_PAGE;
            match page.into_iter().last() {
                Some(last) if full => after = Some(last),
                _ => return Ok::<_, crate::storage::meta::MetaError>(n),
            }
        }
    })
    .await
    .map_err(std::io::Error::other)??;
    Ok(keys)
}

/// The digests `repo` still needs: its plugin's `live-blobs-page`, page after page, each with
/// a budget for one page, gathered compactly. An error on any page is an error: an incomplete
/// set would delete blobs still in use.
pub async fn live_set(app: &App, plugin: &LoadedPlugin, repo: &Arc<Repository>) -> Result<LiveSet, GcError> {
    let budget = app.config.plugins.cpu + CPU_PER_PAGE;
    let failed = |message: String| GcError::Plugin { repo: repo.name.to_string(), message };
    let (mut live, mut cursor, mut pages) = (LiveSet::default(), None::<String>, 0u64);
    let mut walk = live::Cursors::default();
    loop {
        if walk.wants_bound() {
            walk.bound_by(count_keys(app, repo).await? as u64);
        }
        let page = app.plugins.live_blobs_page(plugin, repo.clone(), cursor.as_deref(), budget).await.map_err(|e| {
            tracing::error!(repo = %repo.name, page = pages, "live-blobs-page failed: {}", e.detail());
            failed(e.to_string())
        })?;
        pages += 1;
        for d in &page.digests {
            match d.parse::<Digest>() {
                Ok(d) => live.insert(&d),
                Err(e) => tracing::warn!(repo = %repo.name, error = %e, "live-blobs-page returned a bad digest"),
            }
        }
        live.compact();
        match page.next {
            None => break,
            Some(next) if next.len() > MAX_CURSOR => return Err(failed(format!("live-blobs-page cursor over {MAX_CURSOR} bytes"))),
            // A plugin whose walk does not end would be asked for ever.
            Some(next) => {
                walk.next(&next).map_err(|e| failed(e.to_string()))?;
                cursor = Some(next);
            }
        }
    }
    live.finish();
    tracing::debug!(repo = %repo.name, pages, live = live.len(), "live set");
    Ok(live)
}

/// Applies one local repository's cleanup rules, if it has any. Only the metadata read fails
/// the run; a plugin's failure leaves this repository as it was and the run goes on, since
/// removing less than the rules ask is safe.
async fn cleanup(app: &App, run: &Run, repo: &Arc<Repository>) -> Result<(), GcError> {
    let Some(rules) = &repo.cleanup else { return Ok(()) };
    let Some(plugin) = app.plugins.get(&repo.format) else {
        tracing::warn!(repo = %repo.name, format = %repo.format, "cleanup rules not applied: no plugin loaded for the format");
        return Ok(());
    };
    let budget = cleanup_budget(app, repo).await?;
    let started = std::time::Instant::now();
    match app.plugins.cleanup(&plugin, repo.clone(), rules, unix_now(), budget).await {
        Ok(report) => {
            Counters::add(&run.counters.tags_removed, report.tags_removed);
            Counters::add(&run.counters.manifests_removed, report.manifests_removed);
            tracing::info!(
                repo = %repo.name,
                tags_removed = report.tags_removed,
                manifests_removed = report.manifests_removed,
                ms = started.elapsed().as_millis() as u64,
                "cleanup rules applied"
            );
        }
        Err(e) => tracing::error!(repo = %repo.name, "cleanup rules not applied: {}", e.detail()),
    }
    Ok(())
}

/// One run to the end, here and now (the offline command).
pub async fn collect(app: &App, grace: Duration) -> Result<GcReport, GcError> {
    let run = Arc::new(Run::new(0, Trigger::Offline, grace));
    execute(app, &run).await?;
    run.finish(None);
    Ok(run.counters.report())
}

/// Runs every `gc_interval`, and writes access times every minute.
pub async fn scheduled(app: Arc<App>) {
    let mut flush = tokio::time::interval(ACCESS_FLUSH);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next = app.config.gc_interval.map(|i| tokio::time::Instant::now() + i);
    loop {
        let due = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = flush.tick() => {
                let gc = app.clone();
                let flushed = tokio::task::spawn_blocking(move || gc.gc.access.flush()).await;
                if let Ok(Err(e)) = flushed {
                    tracing::warn!(error = %e, "blob access times not written");
                }
            }
            _ = due => {
                next = app.config.gc_interval.map(|i| tokio::time::Instant::now() + i);
                match Gc::start(&app, app.config.gc_grace, Trigger::Schedule) {
                    Ok(run) => tracing::info!(run = run.id, "scheduled garbage collection started"),
                    Err(running) => tracing::info!(run = running.id, "scheduled garbage collection skipped: one is running"),
                }
            }
        }
    }
}

/// Records references for the run and stops when the run ends, however it ends; with a shared
/// store, the run announced there ends too (the other nodes go back to batching references).
struct Recording<'a>(&'a crate::storage::touch::Touches);

impl Drop for Recording<'_> {
    fn drop(&mut self) {
        self.0.end_collecting();
        if let (Some(run), Some(pg)) = (self.0.run(), self.0.shared_store()) {
            self.0.set_run(None);
            if let Err(e) = pg.collection_end(&run) {
                // The other nodes end it once this node's heartbeat lapses.
                tracing::warn!(run, error = %e, "collection not ended in the shared store");
            }
        }
    }
}

/// Announces the run to the other nodes and waits until each live one has acknowledged it.
async fn join_nodes(touches: &crate::storage::touch::Touches, run: &Run) -> Result<(), GcError> {
    let (Some(pg), Some(node)) = (touches.shared_store(), touches.node()) else { return Ok(()) };
    let id = format!("{node}/{}-{}", run.id, uuid::Uuid::new_v4().simple());
    pg.collection_begin(&id, node)?;
    touches.set_run(Some(id.clone()));
    run.set_phase(Phase::Nodes);
    let started = std::time::Instant::now();
    loop {
        let waiting = pg.collection_waiting_for(&id, crate::storage::touch::NODE_EXPIRY)?;
        if waiting.is_empty() {
            return Ok(());
        }
        if started.elapsed() >= NODES_WAIT {
            return Err(GcError::Nodes { nodes: waiting, after: NODES_WAIT });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn execute(app: &App, run: &Arc<Run>) -> Result<(), GcError> {
    let store = app.caps.store.clone();
    let touches = store.touches().clone();
    touches.begin_collecting();
    let _recording = Recording(&touches);
    run.set_phase(Phase::Fence);
    touches.wait_for_earlier_requests(FENCE_WAIT).await?;
    join_nodes(&touches, run).await?;

    let repos: Vec<_> = app.repos.list().into_iter().filter(|r| r.repo_type != RepoType::Virtual).collect();
    run.set_phase(Phase::Cleanup);
    for repo in repos.iter().filter(|r| r.repo_type == RepoType::Local) {
        cleanup(app, run, repo).await?;
    }

    run.set_phase(Phase::Mark);
    run.counters.repositories_total.store(repos.len() as u64, Ordering::Relaxed);
    let mut by_repo: HashMap<RepoName, LiveSet> = HashMap::new();
    for repo in &repos {
        let plugin =
            app.plugins.get(&repo.format).ok_or_else(|| GcError::NoPlugin { repo: repo.name.to_string(), format: repo.format.clone() })?;
        let started = std::time::Instant::now();
        let live = live_set(app, &plugin, repo).await?;
        tracing::debug!(repo = %repo.name, live = live.len(), ms = started.elapsed().as_millis() as u64, "marked");
        by_repo.insert(repo.name.clone(), live);
        Counters::add(&run.counters.repositories_done, 1);
    }

    run.set_phase(Phase::Sweep);
    let all = LiveSet::union(by_repo.values());
    // Each repository's own set is needed only to enforce cache limits: without any, the union
    // is all the sweep needs, and memory holds the live set once.
    if !repos.iter().any(|r| r.repo_type == RepoType::Remote && r.cache.is_some()) {
        by_repo = HashMap::new();
    }
    let removed_before = run.counters.removed.load(Ordering::Relaxed);
    {
        let (store, grace, job) = (store.clone(), run.grace, run.clone());
        tokio::task::spawn_blocking(move || sweep::sweep(&store, &all, grace, &job)).await.map_err(std::io::Error::other)??;
    }

    run.set_phase(Phase::Evict);
    for repo in repos.iter().filter(|r| r.repo_type == RepoType::Remote) {
        let Some(limits) = repo.cache else { continue };
        let live = by_repo.get(&repo.name).cloned().unwrap_or_default();
        let elsewhere: LiveSet = live.iter().filter(|d| by_repo.iter().any(|(name, l)| *name != repo.name && l.contains(d))).collect();
        let (store, name, job, access) = (store.clone(), repo.name.to_string(), run.clone(), app.gc.access.clone());
        let evicted =
            tokio::task::spawn_blocking(move || evict::evict(&store, &access, &name, &live, &elsewhere, limits, unix_now(), &job))
                .await
                .map_err(std::io::Error::other)??;
        tracing::info!(repo = %repo.name, evicted = evicted.removed.len(), bytes = evicted.bytes, left = evicted.left, "cache limits enforced");
    }

    if run.counters.removed.load(Ordering::Relaxed) > removed_before || run.counters.evicted.load(Ordering::Relaxed) > 0 {
        store.forget_cached();
    }
    touches.forget_older_than(run.grace.max(app.config.gc_grace));
    let s = run.counters.report();
    tracing::info!(removed = s.removed, bytes = s.removed_bytes, kept = s.kept, evicted = s.evicted, "garbage collected");
    Ok(())
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
