//! binaryrepo: a binary repository manager. The host moves bytes; format plugins
//! (WebAssembly components) make decisions. See DESIGN.md for the architecture.

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod digest;
pub mod gc;
pub mod logging;
pub mod metrics;
pub mod plugins;
pub mod reload;
pub mod repos;
pub mod server;
pub mod storage;
pub mod ui;
pub mod upstream;

use std::sync::Arc;

use config::Config;
use plugins::{Capabilities, Plugins};
use repos::Repos;
use storage::uploads::Uploads;
use storage::{BlobStore, Layout, MetaStore};
use upstream::Upstream;
use upstream::fill::Fills;

/// Everything a request may need, shared by all of them.
pub struct App {
    pub config: Config,
    pub repos: Arc<Repos>,
    /// Shared with work that outlives a request (recording a fetched file after its client left).
    pub plugins: Arc<Plugins>,
    pub caps: Arc<Capabilities>,
    pub fills: Arc<Fills>,
    pub metrics: Arc<metrics::Metrics>,
    pub listeners: server::RepoListeners,
    /// Set when `tls_cert`/`tls_key` are: every listener then speaks TLS.
    pub tls: Option<Arc<server::tls::Tls>>,
    /// Users, tokens and the credential checks every request goes through.
    pub auth: Arc<auth::Auth>,
    /// Garbage collection runs and what cache eviction goes by.
    pub gc: gc::Gc,
    pub shutdown: tokio::sync::watch::Sender<bool>,
    /// The open connections: shutdown tells each to close and waits for them.
    pub connections: Arc<server::stop::Connections>,
    /// Reads indexed by the request as it arrived, to the plans that answer them (`server::front`).
    pub front: server::front::Front,
    /// Settings a configuration reload changes while serving.
    pub live: config::Live,
    /// Recent sizes on disk per repository, for `GET /api/stats`.
    pub sizes: api::SizeCache,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error("data directory {path}: {source}")]
    DataDir { path: std::path::PathBuf, source: std::io::Error },
    #[error(transparent)]
    Blobs(#[from] storage::blobs::BlobError),
    #[error(transparent)]
    Meta(#[from] storage::meta::MetaError),
    #[error("storage: {0}")]
    Backend(#[from] storage::backend::BackendError),
    #[error(transparent)]
    Plugins(#[from] plugins::PluginError),
    #[error(transparent)]
    Repos(#[from] repos::RepoError),
    #[error(transparent)]
    Client(#[from] upstream::ClientError),
    #[error("seeded repository: {0}")]
    Seed(String),
    #[error("TLS: {0}")]
    Tls(#[from] server::tls::TlsError),
    #[error("listen on {addr}: {source}")]
    Listen { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("[metadata]: {0}")]
    MetadataConfig(&'static str),
}

/// The embedded store in the data directory, or the shared one the configuration names.
async fn open_metadata(config: &Config, layout: &Layout) -> Result<MetaStore, StartError> {
    match config.metadata.backend {
        config::MetadataBackend::Redb => Ok(MetaStore::open(&layout.meta_db())?),
        config::MetadataBackend::Postgres => {
            let url = config.metadata.url.clone().ok_or(StartError::MetadataConfig("backend \"postgres\" needs a url"))?;
            let connections = config.metadata.connections;
            let meta = tokio::task::spawn_blocking(move || MetaStore::connect(&url, connections))
                .await
                .map_err(|_| StartError::MetadataConfig("connecting to the shared store was interrupted"))??;
            tracing::info!(connections, "metadata: shared store (PostgreSQL)");
            Ok(meta)
        }
    }
}

/// Opens the data directory, loads plugins and repositories.
pub async fn build(config: Config) -> Result<Arc<App>, StartError> {
    // First: a certificate that does not load stops the start before anything is opened.
    let tls = server::tls::TlsFiles::from_config(config.tls_cert.clone(), config.tls_key.clone())?
        .map(server::tls::Tls::load)
        .transpose()?
        .map(Arc::new);
    std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir { path: config.data_dir.clone(), source })?;
    let layout = Layout::new(&config.data_dir);
    let backend = storage::backend::open(&config.storage, &layout)?;
    tracing::info!(backend = backend.kind(), "blob storage");
    let store = BlobStore::on(layout.clone(), backend)?;
    let meta = open_metadata(&config, &layout).await?;
    store.touches().share(meta.clone());
    let gc = gc::Gc::new(storage::access::AccessLog::new(meta.clone()));
    let metrics = Arc::new(metrics::Metrics::new());
    let upstream = Arc::new(Upstream::new(config.upstream.clone(), metrics.clone())?);
    let uploads = Uploads::open(layout.uploads(), store.clone(), config.uploads.clone())
        .map_err(|source| StartError::DataDir { path: layout.uploads(), source })?
        .shared_with(&meta);
    if uploads.is_shared() {
        tracing::info!("upload sessions: in the shared store (a chunked push may move between nodes)");
    }
    let repos = Arc::new(Repos::new(layout.repositories(), config.listen.port()).shared(meta.clone()));
    let caps = Arc::new(Capabilities {
        store: store.clone(),
        meta,
        scratch: Default::default(),
        upstream: upstream.clone(),
        uploads,
        repos: repos.clone(),
    });
    let compiled = config.compiled_plugin_dir.clone().unwrap_or_else(|| layout.compiled_plugins());
    let plugins = Plugins::load(&config.plugin_dir, Some(&compiled), config.plugins.clone(), caps.clone(), metrics.clone()).await?;
    release_freed_memory();
    // Which formats the plugins provide decides which seeded repositories are valid.
    let formats = plugins.formats();
    let seed = config
        .seed_repositories
        .iter()
        .cloned()
        .map(|input| {
            input.validate(None, &formats).and_then(|r| plugins.check_settings(&r).map(|()| r)).map_err(|e| StartError::Seed(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    repos.load_or_seed(seed.clone())?;
    let live = config::Live::new(&config);
    if config.repositories_mode == config::RepositoriesMode::Managed && config.repositories_declared {
        reload::adopt_declared(&repos, &live, seed)?;
    }
    // Storage that stopped taking writes (a full disk, a failed metadata store) comes back by
    // itself once it can.
    tokio::spawn(storage::health::watch(store.health().clone(), layout.clone(), caps.meta.clone()));
    let fills = Fills::new(store, upstream, config.fills.clone());
    let auth = Arc::new(match caps.meta.shared() {
        Some(_) => auth::Auth::open_shared(&config.data_dir, &config.auth, caps.meta.clone())?,
        None => auth::Auth::open(&config.data_dir, &config.auth)?,
    });
    // Half again the plans' memory: an entry is a key, a resolution and a reference to a plan.
    let front = server::front::Front::new(config.plugins.plan_cache_bytes / 2);
    let app = Arc::new(App {
        front,
        auth,
        config,
        repos,
        plugins: Arc::new(plugins),
        caps,
        fills,
        metrics,
        listeners: Default::default(),
        tls,
        gc,
        shutdown: server::shutdown_channel(),
        connections: Default::default(),
        live,
        sizes: Default::default(),
    });
    // A plugin copied into the directory serves within seconds, without a restart.
    plugins::reload::watch(Arc::downgrade(&app));
    if app.caps.meta.shared().is_some() {
        tokio::spawn(follow_other_nodes(Arc::downgrade(&app)));
    }
    Ok(app)
}

/// With a shared metadata store: takes the repository definitions, users and tokens other nodes
/// saved, within `SHARED_CHECK_WINDOW` of their change, and listens on the dedicated ports the
/// changed definitions name (and no longer on those they dropped), as the API does on the node
/// that took the change.
async fn follow_other_nodes(app: std::sync::Weak<App>) {
    loop {
        tokio::time::sleep(storage::meta::SHARED_CHECK_WINDOW).await;
        let Some(app) = app.upgrade() else { return };
        let (repos, auth) = (app.repos.clone(), app.auth.clone());
        let done = tokio::task::spawn_blocking(move || {
            let before = dedicated_ports(&repos);
            let changed = match repos.refresh() {
                Ok(true) => {
                    tracing::info!("repository definitions changed on another node: taken");
                    true
                }
                Ok(false) => false,
                Err(e) => {
                    tracing::warn!(error = %e, "shared repository definitions not read");
                    false
                }
            };
            if let Err(e) = auth.refresh() {
                tracing::warn!(error = %e, "shared users and tokens not read");
            }
            changed.then(|| (before, dedicated_ports(&repos)))
        })
        .await;
        match done {
            Ok(Some((before, after))) => {
                for port in before.difference(&after) {
                    app.listeners.stop(*port);
                }
                for port in after.difference(&before) {
                    if let Err(e) = app.listeners.ensure(&app, *port).await {
                        tracing::error!(port, error = %e, "cannot listen for a repository defined on another node");
                    }
                }
            }
            Ok(None) => {}
            Err(_) => return,
        }
    }
}

/// The ports repositories listen on of their own.
fn dedicated_ports(repos: &Repos) -> std::collections::BTreeSet<u16> {
    repos.list().iter().filter_map(|r| r.port).collect()
}

pub async fn serve(config: Config) -> Result<(), StartError> {
    let addr = config.listen;
    let app = build(config).await?;
    reload::spawn(app.clone());
    server::run(app).await.map_err(|source| StartError::Listen { addr, source })
}

/// Keeps the memory of freed blob buffers for the next ones. A cold fill hands the upstream's
/// buffers (a few hundred KiB each) to the staging writer and to the clients, and frees them
/// once the last of those is done with them; glibc's defaults (its threshold rises only to the
/// largest buffer freed so far) then trim its heaps back to the OS after nearly every chunk, so
/// the next receive faults in and zeroes fresh pages: perf put that at ~10% of a cold 500 MiB
/// GET's CPU (`do_anonymous_page` under `recv`), and ~2% with these settings. The cost is that
/// up to `TRIM` of freed memory per arena stays mapped after a burst. Arenas are therefore held
/// to one per core: glibc's default (eight per core) gave each cache fill's threads (staging
/// writer, hasher, upload) arenas of their own, each keeping its top, and a node's RSS grew with
/// the number of fills at once (eight concurrent cold fills on S3: 60–65 MiB peak, 50 MiB with
/// one arena per core; threads beyond the cores cannot all allocate at once anyway). A
/// `GLIBC_TUNABLES` that sets malloc parameters is left to rule.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc.")) {
            return;
        }
        const TRIM: libc::c_int = 16 << 20;
        // Buffers up to this size come from the heap, not from mmap (blob chunks are ≤ 1 MiB).
        const MMAP: libc::c_int = 4 << 20;
        let arenas = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 64) as libc::c_int;
        // SAFETY: mallopt only sets allocator parameters; called before any other thread starts.
        unsafe {
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM);
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP);
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

/// Hands freed heap memory back to the OS: after start-up (the compiler's, when a plugin was
/// compiled rather than mapped from the cache) and after a collection (the live set and the
/// walk of the store, freed across the arenas of the threads that built them); glibc would
/// otherwise keep it in its arenas.
pub(crate) fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's own arenas to the OS.
    unsafe {
        libc::malloc_trim(0);
    }
}
