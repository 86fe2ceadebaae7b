//! The plugin runtime: loads the components in the plugin directory, loads them again when the
//! directory changes (`reload`, `registry`), and runs each request in an instance bounded in
//! memory and CPU: an idle one that finished its last call cleanly (`warm`,
//! `plugin_instance_reuse`), else a fresh store from the pre-instantiated component. A plan the
//! plugin offers for reuse answers later requests without a call (`reuse`).

/// A host call (its future), whose CPU and wall time are taken off the plugin's (host calls of
/// every contract version).
macro_rules! timed {
    ($self:ident, $call:expr) => {{
        let cpu = $self.clock.account();
        // A `match`, so that the call's temporaries (its `Scope`) live until it is awaited.
        let (out, wall) = match $call {
            call => $crate::plugins::budget::CallClock::host_call(cpu, call).await,
        };
        $self.clock.add_host_wall(wall);
        out
    }};
}

pub mod bindings;
pub mod budget;
pub mod caps;
mod compat;
mod compiled;
mod cpu;
mod epoch;
mod host_api;
pub mod instance;
pub mod registry;
pub mod reload;
pub mod reuse;
mod share;
pub mod state;
mod warm;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::Semaphore;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

use crate::config::PluginLimits;
use crate::metrics::Metrics;
use crate::repos::{Repos, Repository};
use crate::storage::uploads::Uploads;
use crate::storage::{BlobStore, MetaStore};
use crate::upstream::Upstream;
use bindings::types;
use bindings::{CONTRACT, World};
use caps::Readable;
use caps::scratch::Scratch;
use epoch::Ticker;
use instance::{Instance, Pre, Rendered};
use registry::Registry;
use state::CallState;
use warm::{Warm, WarmPool};

/// One export call: an idle instance of this plugin for this repository or a fresh one, the
/// call, and the instance back to the idle pool only if the call succeeded; counted by outcome.
macro_rules! call {
    ($self:ident, $plugin:ident, $export:literal, $repo:expr, $readable:expr, |$f:ident, $store:ident| $call:expr) => {{
        let repo: Option<Arc<Repository>> = $repo;
        // The repository's share first, then a slot: a repository at its share waits without
        // holding a slot another repository could use.
        let share = $self.shares.of(repo.as_deref());
        let _share = match &share {
            Some(s) => Some(s.acquire().await.map_err(|e| Self::failed($plugin, e))?),
            None => None,
        };
        let _permit = $self.permits.acquire().await.map_err(|e| Self::failed($plugin, e))?;
        let _running = $self.ticker.running();
        let result = async {
            let mut warm = $self.checkout($plugin, repo, $readable).await.map_err(|e| Self::trapped($plugin, e))?;
            let cpu = warm.store.data().clock.account();
            let $f = &warm.instance;
            let $store = &mut warm.store;
            let mut result = cpu::metered(cpu, $call).await.map_err(|e| Self::trapped($plugin, e));
            warm.store.data_mut().end();
            // A capability could not do its part safely: the call's answer is not used.
            if result.is_ok()
                && let Some(message) = warm.store.data().refused.get()
            {
                result = Err(PluginError::Unavailable { format: $plugin.meta.format.clone(), message: message.clone() });
            }
            // An instance of a plugin replaced meanwhile is not kept for the new one's requests.
            if result.is_ok() && $self.is_current($plugin) {
                $self.warm.give_back(warm);
            }
            result
        }
        .await;
        Self::count_call($plugin, $export, &result);
        result
    }};
}

/// Bytes of a freed memory, table or stack slot kept resident and reset in place.
const KEEP_RESIDENT: usize = 1 << 20;

/// What the host lends plugins, shared by every store.
pub struct Capabilities {
    pub store: BlobStore,
    pub meta: MetaStore,
    pub scratch: Scratch,
    pub upstream: Arc<Upstream>,
    pub uploads: Uploads,
    pub repos: Arc<Repos>,
}

/// A repository as the contract describes it (never with credentials).
pub fn wit_repository(r: &Repository) -> types::Repository {
    use crate::repos::RepoType as R;
    types::Repository {
        name: r.name.to_string(),
        repo_type: match r.repo_type {
            R::Local => types::RepoType::Local,
            R::Remote => types::RepoType::Remote,
            R::Virtual => types::RepoType::Virtual,
        },
        remote_url: r.url.clone(),
        has_credentials: r.credentials().is_some(),
        tag_check_seconds: r.tag_check_seconds,
        members: r.members.iter().map(|m| m.to_string()).collect(),
        delete_enabled: r.delete_enabled,
        default_local: r.default_local.as_ref().map(|d| d.to_string()),
        settings: r.settings.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("plugin directory {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("no plugins in {0}: build them with `make` (or pass --plugin-dir)")]
    None(PathBuf),
    #[error("no plugin in {dir} loads: {reasons}")]
    NoneLoads { dir: PathBuf, reasons: String },
    /// The plugin trapped or ran out of memory: the plugin's fault, this request only.
    /// `detail` (the wasm backtrace, for the log) is not part of the message clients get.
    #[error("plugin {format} failed: {message}")]
    Failed { format: String, message: String, detail: Option<String> },
    /// The call spent its CPU budget (or held its request past the time ceiling): the server's
    /// limit on this request, which may pass when retried.
    #[error("plugin {format} {limit}")]
    OverBudget { format: String, limit: budget::OverBudget },
    #[error("wasm engine: {0}")]
    Engine(String),
    /// A capability could not do its part safely (a blob reference a garbage collection in
    /// progress must see was not recorded): the server's unavailability, which may pass when
    /// retried.
    #[error("plugin {format} call refused: {message}")]
    Unavailable { format: String, message: String },
}

impl PluginError {
    /// What went wrong, without naming the plugin (for callers that name it themselves).
    pub fn cause(&self) -> String {
        match self {
            PluginError::Failed { message, .. } => message.clone(),
            PluginError::OverBudget { limit, .. } => limit.to_string(),
            PluginError::Unavailable { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }

    /// What the log gets: the cause with the wasm backtrace where there is one.
    pub fn detail(&self) -> String {
        match self {
            PluginError::Failed { detail: Some(d), .. } => d.clone(),
            other => other.cause(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PluginMeta {
    pub format: String,
    pub contract: String,
    /// the world it is linked against (older ones through adapters)
    pub world: World,
    pub roots: Vec<String>,
    /// Path suffixes whose reads a virtual repository merges over its members (`merge`).
    pub merged: Vec<String>,
    /// Names of the per-repository settings the format understands.
    pub settings: Vec<String>,
    pub file: PathBuf,
}

impl PluginMeta {
    /// Whether a read of `path` in a virtual repository is merged over its members.
    pub fn merges(&self, path: &str) -> bool {
        self.merged.iter().any(|m| path.ends_with(m.as_str()))
    }
}

pub struct LoadedPlugin {
    pub meta: PluginMeta,
    /// Unique per load: what instances and cached decisions of this very build are kept under.
    id: u64,
    /// of the file's bytes, hex
    pub sha256: String,
    pub loaded_at: SystemTime,
    stamp: registry::FileStamp,
    pre: Pre,
    /// `binaryrepo_plugin_calls_total` of each of `EXPORTS`, by each of `OUTCOMES`
    calls: Vec<Counter<u64, AtomicU64>>,
}

/// The outcomes a call is counted under, in the order of `LoadedPlugin::calls`.
const OUTCOMES: [&str; 3] = ["ok", "failed", "over_budget"];

/// The exports a call is counted under.
const EXPORTS: [&str; 8] =
    ["handle", "handle-body", "upload-complete", "file-fetched", "merge", "render-failure", "live-blobs-page", "cleanup"];

pub struct Plugins {
    engine: Engine,
    linker: Linker<CallState>,
    dir: PathBuf,
    /// where compiled plugins are kept between starts
    cache: Option<PathBuf>,
    /// The plugins serving now. A read lock is held only to clone an `Arc` out (no await under
    /// it), and a reload takes the write lock once to swap: no contention worth a lock-free swap.
    registry: RwLock<Arc<Registry>>,
    /// Moves on after every swap of the registry (see `generation`).
    generation: AtomicU64,
    /// One reload at a time; holds the files seen changing at the previous poll.
    reloading: tokio::sync::Mutex<registry::Settling>,
    next_id: AtomicU64,
    limits: PluginLimits,
    caps: Arc<Capabilities>,
    /// Plugin instances in use at once (`plugin_instances`); more calls wait for a slot.
    permits: Semaphore,
    /// How many of them one repository may hold (`plugin_instances_per_repository`).
    shares: share::Shares,
    ticker: Ticker,
    warm: WarmPool,
    /// Plans offered for reuse (see `reuse`).
    pub plans: reuse::PlanCache,
    metrics: Arc<Metrics>,
}

fn engine(limits: &PluginLimits) -> Result<Engine, PluginError> {
    let mut config = wasmtime::Config::new();
    config.epoch_interruption(true);
    let mut pool = PoolingAllocationConfig::default();
    let slots = limits.instances + warm::IDLE_MAX as u32;
    pool.total_component_instances(slots)
        .total_core_instances(slots * 4)
        .total_memories(slots * 4)
        .total_tables(slots * 4)
        .total_stacks(slots)
        .max_memory_size(limits.memory_bytes)
        // A freed slot is reset by rewriting only the pages the guest dirtied (found with the
        // PAGEMAP_SCAN ioctl, Linux 6.7+) up to these sizes, instead of madvise + page faults
        // on the next use: 53 -> 23 µs per fresh instance here. Older kernels fall back.
        .pagemap_scan(Enabled::Auto)
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(KEEP_RESIDENT)
        .async_stack_keep_resident(KEEP_RESIDENT)
        // Slots keep their resident pages while unused; bound how many stay warm.
        .max_unused_warm_slots(slots.min(32));
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    match Engine::new(&config) {
        Ok(e) => Ok(e),
        Err(err) => {
            // A machine that refuses the pool's address-space reservation still runs plugins,
            // only with slower instantiation.
            tracing::warn!(error = %err, "pooling allocator unavailable; using on-demand allocation");
            config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
            Engine::new(&config).map_err(|e| PluginError::Engine(e.to_string()))
        }
    }
}

impl Plugins {
    /// Loads every `.wasm` in `dir`; `cache` keeps their compiled code between starts. A file that
    /// does not load is refused (see `refused`) and the others serve; none loading is an error.
    pub async fn load(
        dir: &Path,
        cache: Option<&Path>,
        limits: PluginLimits,
        caps: Arc<Capabilities>,
        metrics: Arc<Metrics>,
    ) -> Result<Plugins, PluginError> {
        let engine = engine(&limits)?;
        let ticker = Ticker::start(engine.clone()).map_err(|e| PluginError::Engine(e.to_string()))?;
        let mut linker: Linker<CallState> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| PluginError::Engine(e.to_string()))?;
        // Every supported world side by side: a component links against the one it was built for.
        bindings::v0_3::Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(|e| PluginError::Engine(e.to_string()))?;
        bindings::v0_2::Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(|e| PluginError::Engine(e.to_string()))?;

        let warm = WarmPool::new(limits.instance_reuse);
        let (permits, shares) = (Semaphore::new(limits.instances as usize), share::Shares::new(limits.instances_per_repository));
        let plans = reuse::PlanCache::new(limits.plan_cache_bytes);
        let plugins = Plugins {
            engine,
            linker,
            dir: dir.into(),
            cache: cache.map(Path::to_path_buf),
            registry: RwLock::new(Arc::new(Registry::default())),
            generation: AtomicU64::new(0),
            reloading: Default::default(),
            next_id: AtomicU64::new(1),
            limits,
            caps,
            permits,
            shares,
            warm,
            ticker,
            plans,
            metrics,
        };
        std::fs::read_dir(dir).map_err(|source| PluginError::Dir { path: dir.into(), source })?;
        plugins.reload(reload::Wait::No).await;
        let loaded = plugins.registry();
        if loaded.plugins().next().is_none() {
            let reasons: Vec<String> = loaded.refused().iter().map(|r| format!("{}: {}", r.file.display(), r.reason)).collect();
            return Err(if reasons.is_empty() {
                PluginError::None(dir.into())
            } else {
                PluginError::NoneLoads { dir: dir.into(), reasons: reasons.join("; ") }
            });
        }
        Ok(plugins)
    }

    /// The plugins serving now: a request resolves its plugin from one snapshot.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Moves on after every change to the plugins serving. Read before a request is resolved,
    /// an unchanged generation afterwards means its path finds the same plugin again.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn is_current(&self, plugin: &LoadedPlugin) -> bool {
        self.registry().get(&plugin.meta.format).is_some_and(|p| p.id == plugin.id)
    }

    /// Compiles, instantiates and asks `info` of one file; only a plugin that passed all of it
    /// is ever offered to requests.
    async fn load_one(&self, file: &Path, stamp: registry::FileStamp) -> Result<LoadedPlugin, String> {
        let started = std::time::Instant::now();
        let wasm = tokio::fs::read(file).await.map_err(|e| e.to_string())?;
        let sha256 = crate::digest::Digest::of(crate::digest::Algorithm::Sha256, &wasm).hex().to_owned();
        // Compiling takes seconds of CPU: off the async threads.
        let (engine, cache, path) = (self.engine.clone(), self.cache.clone(), file.to_path_buf());
        let component = tokio::task::spawn_blocking(move || match cache {
            Some(cache) => compiled::load(&engine, &path, &wasm, &cache),
            None => Component::new(&engine, &wasm),
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("{e:#}"))?;
        let pre = Pre::new(&self.linker, &component)?;
        // The trial instance takes a slot like a request does, so it never finds the pool full.
        let _permit = self.permits.acquire().await.map_err(|e| e.to_string())?;
        let _running = self.ticker.running();
        let (mut store, instance) = self.instantiate(&pre, None).await.map_err(|e| e.to_string())?;
        let cpu = store.data().clock.account();
        let info = cpu::metered(cpu, instance.info(&mut store)).await.map_err(|e| format!("info(): {e:#}"))?;
        if World::of(&info.contract) != Some(pre.world()) {
            return Err(format!(
                "says it was built for contract {:?} but implements the {} world; this host implements {CONTRACT} and 0.2.x",
                info.contract,
                pre.world().name()
            ));
        }
        let format_ok = !info.format.is_empty()
            && info.format.len() <= 64
            && info.format.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !format_ok {
            return Err(format!("invalid format name {:?}", info.format));
        }
        if let Some(bad) = info.roots.iter().find(|r| !r.starts_with('/') || !r.ends_with('/')) {
            return Err(format!("root {bad:?} must start and end with '/'"));
        }
        if let Some(bad) = info.merged.iter().find(|m| !m.starts_with('/') || m.len() < 2) {
            return Err(format!("merged suffix {bad:?} must start with '/' and name something"));
        }
        let setting_ok =
            |s: &String| !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if let Some(bad) = info.settings.iter().find(|s| !setting_ok(s)) {
            return Err(format!("setting name {bad:?}: use 1-64 of a-z 0-9 _"));
        }
        tracing::debug!(ms = started.elapsed().as_millis() as u64, "compiled {}", file.display());
        let calls = EXPORTS
            .iter()
            .flat_map(|export| OUTCOMES.map(|outcome| (export, outcome)))
            .map(|(export, outcome)| self.metrics.plugin_call_counter(&info.format, export, outcome))
            .collect();
        let meta = PluginMeta {
            format: info.format,
            contract: info.contract,
            world: pre.world(),
            roots: info.roots,
            merged: info.merged,
            settings: info.settings,
            file: file.into(),
        };
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(LoadedPlugin { meta, id, sha256, loaded_at: SystemTime::now(), stamp, pre, calls })
    }

    /// A fresh store and instance; the repository is set per call (`CallState::begin`).
    async fn instantiate(&self, pre: &Pre, format: Option<&str>) -> wasmtime::Result<(Store<CallState>, Instance)> {
        let state = CallState::new(self.caps.clone(), format.map(str::to_owned), self.limits.memory_bytes, self.limits.cpu);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(1);
        // An error, not `UpdateDeadline::Interrupt`: the call's error then says it was over its
        // budget (`trapped`), which is the server's limit, not the plugin's trap.
        store.epoch_deadline_callback(|mut ctx| Ok(ctx.data_mut().clock.on_tick()?));
        let cpu = store.data().clock.account();
        let instance = cpu::metered(cpu, pre.instantiate(&mut store)).await?;
        Ok((store, instance))
    }

    /// An instance ready for one call for `repo`: reused if one is idle, else fresh.
    async fn checkout(&self, plugin: &LoadedPlugin, repo: Option<Arc<Repository>>, readable: Readable) -> wasmtime::Result<Warm> {
        let name = repo.as_ref().map(|r| r.name.as_str());
        let mut warm = match self.warm.take(plugin.id, name) {
            Some(w) => w,
            None => {
                let (store, instance) = self.instantiate(&plugin.pre, Some(&plugin.meta.format)).await?;
                Warm::new(store, instance, plugin.id, name)
            }
        };
        warm.store.data_mut().begin(repo, readable);
        warm.store.set_epoch_deadline(1);
        Ok(warm)
    }

    pub fn formats(&self) -> Vec<String> {
        let mut f: Vec<String> = self.registry().plugins().map(|p| p.meta.format.clone()).collect();
        f.sort();
        f
    }

    /// Refuses a repository whose settings name one its format's plugin does not declare, so
    /// that a misspelt setting is an error rather than silently ignored.
    pub fn check_settings(&self, repo: &Repository) -> Result<(), crate::repos::RepoError> {
        let declared = self.get(&repo.format).map(|p| p.meta.settings.clone()).unwrap_or_default();
        match repo.settings.undeclared(&declared) {
            None => Ok(()),
            Some(bad) if declared.is_empty() => {
                Err(crate::repos::RepoError::Invalid(format!("unknown setting {bad:?}: the {} format takes no settings", repo.format)))
            }
            Some(bad) => Err(crate::repos::RepoError::Invalid(format!(
                "unknown setting {bad:?}: the {} format takes {}",
                repo.format,
                declared.join(", ")
            ))),
        }
    }

    pub fn all(&self) -> Vec<PluginMeta> {
        let mut v: Vec<PluginMeta> = self.registry().plugins().map(|p| p.meta.clone()).collect();
        v.sort_by(|a, b| a.format.cmp(&b.format));
        v
    }

    pub fn get(&self, format: &str) -> Option<Arc<LoadedPlugin>> {
        self.registry().get(format).cloned()
    }

    /// The plugin whose root the path starts under, with that root's length (`Registry::by_root`).
    pub fn by_root(&self, path: &str) -> Option<(Arc<LoadedPlugin>, Option<usize>)> {
        self.registry().by_root(path)
    }

    fn count_call<T>(plugin: &LoadedPlugin, export: &str, result: &Result<T, PluginError>) {
        let outcome = match result {
            Ok(_) => 0,
            Err(PluginError::OverBudget { .. }) => 2,
            Err(_) => 1,
        };
        let i = EXPORTS.iter().position(|e| *e == export).map(|i| OUTCOMES.len() * i + outcome);
        if let Some(counter) = i.and_then(|i| plugin.calls.get(i)) {
            counter.inc();
        }
    }

    fn failed(plugin: &LoadedPlugin, e: impl std::fmt::Display) -> PluginError {
        PluginError::Failed { format: plugin.meta.format.clone(), message: e.to_string(), detail: None }
    }

    /// A trap, the CPU budget or the memory limit: the cause (e.g. "wasm trap: unreachable") is
    /// for the client, the wasm backtrace for the log line the responder writes.
    fn trapped(plugin: &LoadedPlugin, e: wasmtime::Error) -> PluginError {
        if let Some(limit) = e.chain().find_map(|c| c.downcast_ref::<budget::OverBudget>()) {
            return PluginError::OverBudget { format: plugin.meta.format.clone(), limit: limit.clone() };
        }
        PluginError::Failed { format: plugin.meta.format.clone(), message: e.root_cause().to_string(), detail: Some(format!("{e:?}")) }
    }

    /// The plan, and the plugin's offer to reuse it when the call only read.
    pub async fn handle(
        &self,
        plugin: &LoadedPlugin,
        repo: Option<Arc<Repository>>,
        readable: Readable,
        req: &types::Request,
    ) -> Result<(types::Plan, Option<reuse::Offer>), PluginError> {
        let (plan, offer) = call!(self, plugin, "handle", repo, readable, |f, store| async {
            let plan = f.handle(&mut *store, req).await?;
            Ok((plan, store.data_mut().take_offer()))
        })?;
        // A plan decided by a build replaced during the call is not kept (see `PlanCache::clear`).
        Ok((plan, offer.filter(|_| self.is_current(plugin))))
    }

    /// What a plan decided now for `repo` depends on, to be checked when it is reused.
    pub fn snapshot(&self, repo: Option<Arc<Repository>>) -> reuse::Snapshot {
        let generation = self.caps.meta.generation(repo.as_ref().map_or("", |r| r.name.as_str()));
        reuse::Snapshot::take(repo, generation, self.caps.store.removals()).during(self.plans.epoch())
    }

    pub fn blob_removals(&self) -> u64 {
        self.caps.store.removals()
    }

    pub async fn handle_body(
        &self,
        plugin: &LoadedPlugin,
        repo: Option<Arc<Repository>>,
        readable: Readable,
        req: &types::Request,
        body: &[u8],
    ) -> Result<types::Plan, PluginError> {
        call!(self, plugin, "handle-body", repo, readable, |f, store| f.handle_body(store, req, body))
    }

    pub async fn upload_complete(
        &self,
        plugin: &LoadedPlugin,
        repo: Option<Arc<Repository>>,
        readable: Readable,
        req: &types::Request,
        id: &str,
        outcome: &types::UploadOutcome,
    ) -> Result<types::Response, PluginError> {
        call!(self, plugin, "upload-complete", repo, readable, |f, store| f.upload_complete(store, req, id, outcome))
    }

    /// After a `fetch-file` stored its file: the plugin records it.
    pub async fn file_fetched(
        &self,
        plugin: &LoadedPlugin,
        repo: Option<Arc<Repository>>,
        req: &types::Request,
        key: &str,
        file: &types::FetchedFile,
    ) -> Result<(), PluginError> {
        let recorded = call!(self, plugin, "file-fetched", repo, Readable::all(), |f, store| f.file_fetched(store, req, key, file))?;
        recorded.map_err(|e| Self::failed(plugin, format!("file-fetched: {e:?}")))
    }

    /// The plan for a merged read of a virtual repository, from its members' answers.
    pub async fn merge(
        &self,
        plugin: &LoadedPlugin,
        repo: Option<Arc<Repository>>,
        readable: Readable,
        req: &types::Request,
        answers: &[types::MemberAnswer],
    ) -> Result<types::Plan, PluginError> {
        call!(self, plugin, "merge", repo, readable, |f, store| f.merge(store, req, answers))
    }

    /// The plugin's rendering of a failure, or none when its contract version has no shape for
    /// this kind of failure (a 0.2 plugin and a refused login).
    pub async fn render_failure(
        &self,
        plugin: &LoadedPlugin,
        repo: Option<Arc<Repository>>,
        readable: Readable,
        req: &types::Request,
        failure: &types::Failure,
    ) -> Result<Option<types::Response>, PluginError> {
        let rendered = call!(self, plugin, "render-failure", repo, readable, |f, store| f.render_failure(store, req, failure))?;
        Ok(match rendered {
            Rendered::Plugin(r) => Some(r),
            Rendered::Unrenderable => None,
        })
    }

    /// Applies `repo`'s cleanup rules, for garbage collection before the mark: a call with
    /// `budget` of CPU that grows with the repository's metadata (it reads its tags and manifests).
    pub async fn cleanup(
        &self,
        plugin: &LoadedPlugin,
        repo: Arc<Repository>,
        rules: &crate::repos::CleanupRules,
        now: u64,
        budget: Duration,
    ) -> Result<types::CleanupReport, PluginError> {
        let wit = wit_repository(&repo);
        let rules = types::CleanupRules {
            keep_last: rules.keep_last,
            matching: rules.matching.as_ref().map(|m| m.as_str().to_owned()),
            untagged_after_seconds: rules.untagged_after_seconds(),
        };
        let report = call!(self, plugin, "cleanup", Some(repo), Readable::all(), |f, store| {
            store.data_mut().for_collection(budget);
            f.cleanup(store, &wit, &rules, now)
        })?;
        report.map_err(|e| Self::failed(plugin, format!("cleanup: {e}")))
    }

    /// One page of the digests `repo` still needs, for garbage collection, from `cursor` (none:
    /// the first): a call with `budget` of CPU, sized for a page. Returns the page's digests and
    /// where the next page starts (none: that was the last).
    pub async fn live_blobs_page(
        &self,
        plugin: &LoadedPlugin,
        repo: Arc<Repository>,
        cursor: Option<&str>,
        budget: Duration,
    ) -> Result<types::LivePage, PluginError> {
        let wit = wit_repository(&repo);
        let listed = call!(self, plugin, "live-blobs-page", Some(repo), Readable::all(), |f, store| {
            store.data_mut().for_collection(budget);
            f.live_blobs_page(store, &wit, cursor)
        })?;
        listed.map_err(|e| Self::failed(plugin, format!("live-blobs-page: {e:?}")))
    }
}
