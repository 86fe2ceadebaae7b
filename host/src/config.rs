//! Configuration: command-line flags override `BINARYREPO_*` environment variables, which
//! override the file, which overrides the defaults (docs/configuration.md).
//!
//! The environment is read generically: every top-level key of [`FileConfig`] is also
//! `BINARYREPO_<KEY>` (upper case), its value read as a TOML value, so a key added to the file
//! needs no code to be settable from the environment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::repos::RepositoryInput;
use crate::server::forwarded::TrustedProxies;
use crate::upstream::egress::AllowedNetwork;

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8081";

/// The configuration file (TOML). Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[storage]`: where blobs live (the data directory unless `backend = "s3"`).
    pub storage: Option<crate::storage::backend::StorageConfig>,
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub plugin_dir: Option<PathBuf>,
    /// Where compiled plugin code is kept between starts (default: in the data directory).
    /// Servers on one machine may share it: every file is verified before it is loaded.
    pub compiled_plugin_dir: Option<PathBuf>,
    pub upstream_connect_timeout_ms: Option<u64>,
    pub upstream_idle_timeout_seconds: Option<u64>,
    pub upstream_response_timeout_seconds: Option<u64>,
    pub upstream_down_seconds: Option<u64>,
    pub upstream_hold_last_byte: Option<bool>,
    /// Networks a remote's realms and redirects may reach though they are not public.
    pub upstream_allow_networks: Option<Vec<AllowedNetwork>>,
    /// PEM certificates trusted for upstream TLS besides the public roots.
    pub upstream_ca_file: Option<PathBuf>,
    pub plugin_memory_mib: Option<u64>,
    pub plugin_cpu_ms: Option<u64>,
    pub plugin_instance_reuse: Option<u32>,
    pub upload_expiry_hours: Option<u64>,
    pub gc_grace_seconds: Option<u64>,
    pub gc_interval_hours: Option<f64>,
    // Limits: what no client can make binaryrepo exceed (README, "Limits").
    pub trusted_proxies: Option<TrustedProxies>,
    pub plan_cache_mib: Option<u64>,
    pub plugin_instances: Option<u32>,
    pub plugin_instances_per_repository: Option<u32>,
    pub upload_sessions_per_repository: Option<usize>,
    pub upload_sessions_total: Option<usize>,
    pub upstream_fills_per_repository: Option<usize>,
    pub upstream_fills_total: Option<usize>,
    pub upstream_min_bytes_per_second: Option<u64>,
    pub upstream_rate_window_seconds: Option<u64>,
    pub request_body_idle_seconds: Option<u64>,
    pub request_min_bytes_per_second: Option<u64>,
    pub request_rate_window_seconds: Option<u64>,
    /// PEM certificate chain and private key: with both, every listener speaks TLS (re-read when
    /// the files change or on SIGHUP).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_reload_seconds: Option<u64>,
    /// Docker clients get bearer tokens from `/api/token` (the distribution token flow); false:
    /// challenges ask for Basic credentials instead.
    pub token_service: Option<bool>,
    /// `GET /metrics` without credentials (default: admins only).
    pub metrics_anonymous: Option<bool>,
    /// Seeds the data directory on first start; afterwards the API owns the repositories.
    pub repositories: Option<Vec<RepositoryInput>>,
    // Users and tokens (see `AuthConfig`).
    pub htpasswd_file: Option<PathBuf>,
    pub users: Option<Vec<ConfigUser>>,
    pub token_ttl_seconds: Option<u64>,
    pub login_failures_before_delay: Option<u32>,
    pub login_failure_window_seconds: Option<u64>,
    pub credential_cache_seconds: Option<u64>,
    pub credential_cache_entries: Option<usize>,
    /// "text" (default) or "json": one JSON object per log line, access lines included.
    pub log_format: Option<LogFormat>,
    /// Which log lines are written: a `RUST_LOG`-style filter ("info", "warn,binaryrepo=debug").
    /// `RUST_LOG`, when set, wins. Changes live on reload.
    pub log_level: Option<String>,
    /// What `repositories` means: "seed" (default; seeds an empty data directory, then the API
    /// owns them) or "managed" (the file is authoritative for the repositories it declares).
    pub repositories_mode: Option<RepositoriesMode>,
    /// How often the config file's modification time is checked for a reload (0: SIGHUP only).
    pub config_watch_seconds: Option<u64>,
    /// Where metadata, repository definitions, users and tokens live (docs/scale.md).
    pub metadata: Option<MetadataFile>,
}

/// `[metadata]`: `backend = "redb"` (default, embedded in the data directory) or `"postgres"`
/// with `url` (shared by several nodes) and at most `connections` connections per node.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataFile {
    pub backend: Option<MetadataBackend>,
    pub url: Option<String>,
    pub connections: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetadataBackend {
    #[default]
    Redb,
    Postgres,
}

#[derive(Debug, Clone, Default)]
pub struct MetadataConfig {
    pub backend: MetadataBackend,
    pub url: Option<crate::storage::postgres::DatabaseUrl>,
    pub connections: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RepositoriesMode {
    #[default]
    Seed,
    Managed,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("configuration (file and BINARYREPO_* environment): {0}")]
    Invalid(toml::de::Error),
}

/// Variables with the prefix that are not configuration keys: the command-line client's and the
/// first admin's. Any other unknown `BINARYREPO_*` variable is reported, not silently ignored.
pub const CLIENT_ENV: [&str; 5] = ["ADMIN_PASSWORD", "SERVER", "USER", "PASSWORD", "TOKEN"];
pub const ENV_PREFIX: &str = "BINARYREPO_";

/// The configuration as read: the merged table (file, then environment on top) and what the
/// environment held that is not a key.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// Top-level keys as given (file and environment merged); compared key by key on reload.
    pub table: toml::Table,
    /// `BINARYREPO_*` variables that name no key.
    pub unknown_env: Vec<String>,
}

impl Loaded {
    /// Reads `path` (if any) and overlays the process environment.
    pub fn read(path: Option<&Path>) -> Result<Loaded, ConfigError> {
        Loaded::read_with(path, std::env::vars())
    }

    pub fn read_with(path: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Loaded, ConfigError> {
        let mut table = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
                text.parse::<toml::Table>().map_err(|source| ConfigError::Parse { path: path.into(), source })?
            }
            None => toml::Table::new(),
        };
        let unknown_env = overlay_env(&mut table, env);
        Ok(Loaded { table, unknown_env })
    }

    pub fn file_config(&self) -> Result<FileConfig, ConfigError> {
        toml::Value::Table(self.table.clone()).try_into().map_err(ConfigError::Invalid)
    }
}

impl FileConfig {
    /// The file alone, without the environment.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        Loaded::read_with(Some(path), std::iter::empty())?.file_config()
    }
}

/// Sets `BINARYREPO_<KEY>` variables into `table` (over what the file said) and returns the names
/// of those that are no key. `BINARYREPO_A__B` sets key `b` of table `a`. A value is read as TOML
/// (`8`, `true`, `["10.0.0.0/8"]`, `[{name = "r", type = "local", format = "docker"}]`) and,
/// when it is not valid TOML, as a string (`/srv/data`, `127.0.0.1:8081`).
fn overlay_env(table: &mut toml::Table, env: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
    let keys = field_names::<FileConfig>();
    let mut unknown = Vec::new();
    let mut vars: Vec<(String, String)> = env.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
    // Deterministic: a nested variable lands in the table its parent variable set.
    vars.sort();
    for (name, value) in vars {
        let rest = &name[ENV_PREFIX.len()..];
        let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
        if !keys.contains(&path[0].as_str()) || path.iter().any(String::is_empty) {
            if !CLIENT_ENV.contains(&rest) {
                unknown.push(name);
            }
            continue;
        }
        set_path(table, &path, env_value(&value));
    }
    unknown
}

/// Sets `path` (keys of nested tables) to `value`, making the tables on the way.
fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) {
    match path {
        [] => {}
        [leaf] => {
            table.insert(leaf.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = table.entry(first.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            if let Some(t) = entry.as_table_mut() {
                set_path(t, rest, value);
            }
        }
    }
}

fn env_value(value: &str) -> toml::Value {
    match format!("v = {value}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(value.to_owned())),
        Err(_) => toml::Value::String(value.to_owned()),
    }
}

/// The field names of a struct, read off its `Deserialize` impl (serde hands them to
/// `deserialize_struct`), so the environment knows every key without a list to keep in step.
pub fn field_names<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{self, Visitor};
    struct Names<'a>(&'a mut &'static [&'static str]);
    impl<'de> de::Deserializer<'de> for Names<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("field names read"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
            unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Names(&mut fields));
    fields
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub connect_timeout: Duration,
    /// No bytes for this long aborts an upstream transfer; there is no total limit, so
    /// layers of any size stream.
    pub idle_timeout: Duration,
    /// An upstream that accepted the connection must answer (status and headers) within this
    /// long; past it the request counts as the upstream being unreachable, so what is cached is
    /// served instead of waiting for the idle timeout. Bodies are held to `idle_timeout` only.
    pub response_timeout: Duration,
    /// After a connection failure an upstream is not tried again for this long, so cached
    /// content is served at once while it is down.
    pub down_for: Duration,
    /// A cold blob's last byte waits until its digest is verified. Off by default: clients
    /// check digests themselves and nothing unverified is stored, while holding makes every
    /// cold GET at least as slow as SHA-256 over the blob.
    pub hold_last_byte: bool,
    /// Realms off the remote's host and redirect targets other than the remote's origin must
    /// resolve to public addresses or to these networks.
    pub allow_networks: Vec<AllowedNetwork>,
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct PluginLimits {
    pub memory_bytes: usize,
    /// Guest CPU time per request; time spent in host calls (upstream I/O) is not counted.
    pub cpu: Duration,
    /// Requests one plugin instance may serve (for the same repository) before it is dropped;
    /// 1 = a fresh instance for every request. The default, 1024, puts a fresh instance (~24 µs)
    /// at ~0.02 µs per request; memory growth and traps already retire an instance sooner.
    pub instance_reuse: u32,
    /// Instances in use at once, and how many of them one repository may hold, so that a
    /// repository whose calls wait on a slow upstream cannot take them all.
    pub instances: u32,
    pub instances_per_repository: u32,
    /// Bytes of plans kept for reuse (keys included).
    pub plan_cache_bytes: u64,
}

/// Upload sessions open at once.
#[derive(Debug, Clone)]
pub struct UploadLimits {
    pub per_repository: usize,
    pub total: usize,
}

/// Cache fills (upstream blob transfers) under way at once, and the slowest transfer allowed.
#[derive(Debug, Clone)]
pub struct FillLimits {
    pub per_repository: usize,
    pub total: usize,
    /// A fill that receives fewer than `min_bytes_per_second` × `rate_window` bytes in any
    /// window is cut: an upstream that dribbles bytes (never idle long enough for the idle
    /// timeout) would otherwise hold a fill slot for ever.
    pub min_bytes_per_second: u64,
    pub rate_window: Duration,
}

/// How slowly a client may send a request body before it is cut: no bytes for `idle`, or fewer
/// than `min_bytes_per_second` × `rate_window` in any window.
#[derive(Debug, Clone)]
pub struct BodyLimits {
    pub idle: Duration,
    pub min_bytes_per_second: u64,
    pub rate_window: Duration,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub storage: crate::storage::backend::StorageConfig,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub plugin_dir: PathBuf,
    /// None: `cache/plugins` in the data directory.
    pub compiled_plugin_dir: Option<PathBuf>,
    pub upstream: UpstreamConfig,
    pub plugins: PluginLimits,
    /// Upload sessions untouched this long are removed.
    pub upload_expiry: Duration,
    /// Garbage collection keeps unreferenced blobs younger than this (a push in progress has
    /// its layers stored before the manifest that references them).
    pub gc_grace: Duration,
    /// Garbage collection (and cache eviction) runs this often; none: only when asked.
    pub gc_interval: Option<Duration>,
    /// TLS for the main listener and every repository port; plain HTTP when neither is set.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// How often the TLS files are checked for a change; None: only on SIGHUP.
    pub tls_reload: Option<Duration>,
    pub seed_repositories: Vec<RepositoryInput>,
    pub auth: AuthConfig,
    /// Bearer tokens from `/api/token` for formats whose clients use them (default true).
    pub token_service: bool,
    /// `/metrics` open to anonymous callers (default false: admins).
    pub metrics_anonymous: bool,
    /// Peers whose `X-Forwarded-*` headers are believed.
    pub trusted_proxies: TrustedProxies,
    pub uploads: UploadLimits,
    pub fills: FillLimits,
    pub request_body: BodyLimits,
    pub log_format: LogFormat,
    pub log_level: String,
    pub repositories_mode: RepositoriesMode,
    /// Whether `repositories` was given (by the file or the environment) rather than defaulted.
    pub repositories_declared: bool,
    /// How often the config file is checked for a change; None: only on SIGHUP.
    pub config_watch: Option<Duration>,
    /// Where the configuration was read from, for reloads.
    pub source: ConfigSource,
    pub metadata: MetadataConfig,
}

/// Where a reload reads the configuration again: the file (if any), the environment, and the
/// flags given at start (which keep winning).
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    pub path: Option<PathBuf>,
    pub flags: Overrides,
    /// The table the running configuration came from; a reload compares the new one key by key.
    pub table: toml::Table,
}

/// A user declared in the configuration file (`[[users]]`); read-only through the API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigUser {
    pub name: String,
    /// bcrypt (`$2y$`, `$2b$`, `$2a$`), as `htpasswd -nB` prints it.
    pub password_hash: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub admin: bool,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Users from an Apache htpasswd file (bcrypt lines only); read-only through the API.
    pub htpasswd_file: Option<PathBuf>,
    pub users: Vec<ConfigUser>,
    /// Lifetime of the signed tokens the token endpoint issues.
    pub token_ttl: Duration,
    /// Failed logins from one address within `login_failure_window` answered without delay;
    /// each one past that waits 1 s, 2 s, 4 s … up to 10 s before its 401.
    pub login_failures_before_delay: u32,
    pub login_failure_window: Duration,
    /// A verified password is remembered this long (keyed by a keyed hash of user and password),
    /// so repeated requests with Basic credentials cost no bcrypt.
    pub credential_cache_ttl: Duration,
    pub credential_cache_entries: usize,
    /// bcrypt cost of the hashes binaryrepo writes (passwords set through the API, the first admin).
    pub password_hash_cost: u32,
}

impl Default for AuthConfig {
    fn default() -> AuthConfig {
        AuthConfig {
            htpasswd_file: None,
            users: Vec::new(),
            token_ttl: Duration::from_secs(300),
            login_failures_before_delay: 5,
            login_failure_window: Duration::from_secs(300),
            credential_cache_ttl: Duration::from_secs(120),
            credential_cache_entries: 4096,
            password_hash_cost: 12,
        }
    }
}

/// Flags given on the command line (None: not given).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub plugin_dir: Option<PathBuf>,
}

impl Config {
    /// Reads the file at `path` (if any) and the environment, and applies the flags.
    pub fn load(path: Option<&Path>, flags: Overrides) -> Result<(Config, Loaded), ConfigError> {
        let loaded = Loaded::read(path)?;
        let mut config = Config::resolve(loaded.file_config()?, flags);
        config.source.path = path.map(Path::to_path_buf);
        config.source.table = loaded.table.clone();
        Ok((config, loaded))
    }

    pub fn resolve(file: FileConfig, flags: Overrides) -> Config {
        let flags_kept = flags.clone();
        let listen = flags
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.parse().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 8081))));
        let instances = file.plugin_instances.unwrap_or(256).max(1);
        let fills_total = file.upstream_fills_total.unwrap_or(128).max(1);
        let fills_per_repository = file.upstream_fills_per_repository.unwrap_or(32).max(1);
        Config {
            storage: file.storage.unwrap_or_default(),
            listen,
            data_dir: flags.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from("data")),
            plugin_dir: flags.plugin_dir.or(file.plugin_dir).unwrap_or_else(default_plugin_dir),
            compiled_plugin_dir: file.compiled_plugin_dir,
            upstream: UpstreamConfig {
                connect_timeout: Duration::from_millis(file.upstream_connect_timeout_ms.unwrap_or(3000)),
                idle_timeout: Duration::from_secs(file.upstream_idle_timeout_seconds.unwrap_or(120)),
                response_timeout: Duration::from_secs(file.upstream_response_timeout_seconds.unwrap_or(10).max(1)),
                down_for: Duration::from_secs(file.upstream_down_seconds.unwrap_or(30)),
                hold_last_byte: file.upstream_hold_last_byte.unwrap_or(false),
                allow_networks: file.upstream_allow_networks.unwrap_or_default(),
                ca_file: file.upstream_ca_file,
            },
            plugins: PluginLimits {
                // Saturating: a huge value means "no limit", never a product that wraps to a tiny one.
                memory_bytes: usize::try_from(file.plugin_memory_mib.unwrap_or(64).saturating_mul(1024 * 1024)).unwrap_or(usize::MAX),
                cpu: Duration::from_millis(file.plugin_cpu_ms.unwrap_or(2000)),
                instance_reuse: file.plugin_instance_reuse.unwrap_or(1024).max(1),
                instances,
                instances_per_repository: file.plugin_instances_per_repository.unwrap_or(instances / 4).clamp(1, instances),
                plan_cache_bytes: file.plan_cache_mib.unwrap_or(32).saturating_mul(1024 * 1024),
            },
            upload_expiry: Duration::from_secs(file.upload_expiry_hours.unwrap_or(24).saturating_mul(3600)),
            gc_grace: Duration::from_secs(file.gc_grace_seconds.unwrap_or(3600)),
            // Daily by default: cache limits are enforced by these runs. 0 turns it off.
            gc_interval: Duration::try_from_secs_f64(file.gc_interval_hours.unwrap_or(24.0) * 3600.0).ok().filter(|d| !d.is_zero()),
            tls_cert: file.tls_cert,
            tls_key: file.tls_key,
            tls_reload: Some(file.tls_reload_seconds.unwrap_or(2)).filter(|&s| s > 0).map(Duration::from_secs),
            repositories_declared: file.repositories.is_some(),
            seed_repositories: file.repositories.unwrap_or_else(default_repositories),
            auth: {
                let default = AuthConfig::default();
                AuthConfig {
                    htpasswd_file: file.htpasswd_file,
                    users: file.users.unwrap_or_default(),
                    token_ttl: file.token_ttl_seconds.map_or(default.token_ttl, |s| Duration::from_secs(s.max(1))),
                    login_failures_before_delay: file.login_failures_before_delay.unwrap_or(default.login_failures_before_delay),
                    login_failure_window: file.login_failure_window_seconds.map_or(default.login_failure_window, Duration::from_secs),
                    credential_cache_ttl: file.credential_cache_seconds.map_or(default.credential_cache_ttl, Duration::from_secs),
                    credential_cache_entries: file.credential_cache_entries.unwrap_or(default.credential_cache_entries),
                    ..default
                }
            },
            token_service: file.token_service.unwrap_or(true),
            metrics_anonymous: file.metrics_anonymous.unwrap_or(false),
            trusted_proxies: file.trusted_proxies.unwrap_or_default(),
            uploads: UploadLimits {
                per_repository: file.upload_sessions_per_repository.unwrap_or(100),
                total: file.upload_sessions_total.unwrap_or(1000),
            },
            fills: FillLimits {
                per_repository: fills_per_repository.min(fills_total),
                total: fills_total,
                min_bytes_per_second: file.upstream_min_bytes_per_second.unwrap_or(1024),
                rate_window: Duration::from_secs(file.upstream_rate_window_seconds.unwrap_or(30).max(1)),
            },
            request_body: BodyLimits {
                idle: Duration::from_secs(file.request_body_idle_seconds.unwrap_or(30).max(1)),
                min_bytes_per_second: file.request_min_bytes_per_second.unwrap_or(1024),
                rate_window: Duration::from_secs(file.request_rate_window_seconds.unwrap_or(30).max(1)),
            },
            log_format: file.log_format.unwrap_or_default(),
            log_level: file.log_level.unwrap_or_else(|| "info".into()),
            repositories_mode: file.repositories_mode.unwrap_or_default(),
            metadata: {
                let m = file.metadata.unwrap_or_default();
                MetadataConfig {
                    backend: m.backend.unwrap_or_default(),
                    url: m.url.map(crate::storage::postgres::DatabaseUrl::new),
                    connections: m.connections.unwrap_or(16).clamp(1, 256),
                }
            },
            config_watch: Some(file.config_watch_seconds.unwrap_or(3)).filter(|&s| s > 0).map(Duration::from_secs),
            source: ConfigSource { path: None, flags: flags_kept, table: toml::Table::new() },
        }
    }
}

/// The settings that change without a restart (on SIGHUP or when the file changes), read by
/// requests through here rather than from [`Config`].
#[derive(Debug, Default)]
pub struct Live {
    metrics_anonymous: std::sync::atomic::AtomicBool,
    /// Repositories the file declares with `repositories_mode = "managed"`: the API refuses to
    /// change them.
    file_managed: std::sync::RwLock<std::collections::BTreeSet<String>>,
}

impl Live {
    pub fn new(config: &Config) -> Live {
        let live = Live::default();
        live.set_metrics_anonymous(config.metrics_anonymous);
        live
    }

    pub fn metrics_anonymous(&self) -> bool {
        self.metrics_anonymous.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_metrics_anonymous(&self, on: bool) {
        self.metrics_anonymous.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn is_file_managed(&self, repo: &str) -> bool {
        self.file_managed.read().unwrap_or_else(|e| e.into_inner()).contains(repo)
    }

    pub fn file_managed(&self) -> std::collections::BTreeSet<String> {
        self.file_managed.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_file_managed(&self, names: std::collections::BTreeSet<String>) {
        *self.file_managed.write().unwrap_or_else(|e| e.into_inner()) = names;
    }
}

/// `plugins/` next to the executable: where `make` puts the bundled plugins.
pub fn default_plugin_dir() -> PathBuf {
    std::env::current_exe().ok().and_then(|exe| exe.parent().map(|dir| dir.join("plugins"))).unwrap_or_else(|| PathBuf::from("plugins"))
}

/// The embedded default repositories (`host/default-repositories.toml`): kept as data, beside
/// the code, so that the host's code names no format.
pub fn default_repositories() -> Vec<RepositoryInput> {
    #[derive(Deserialize)]
    struct Defaults {
        repositories: Vec<RepositoryInput>,
    }
    match toml::from_str::<Defaults>(include_str!("../default-repositories.toml")) {
        Ok(d) => d.repositories,
        Err(e) => {
            // Caught by the unit test below; a build with a broken file starts with none.
            tracing::error!("the built-in default repositories do not parse: {e}");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_sizes_and_periods_saturate() {
        let file: FileConfig = toml::from_str(
            "plugin_memory_mib = 9007199254740993\nplan_cache_mib = 9007199254740993\nupload_expiry_hours = 9007199254740993\n",
        )
        .unwrap();
        let config = Config::resolve(file, Overrides::default());
        assert_eq!(config.plugins.memory_bytes, usize::MAX);
        assert_eq!(config.plugins.plan_cache_bytes, u64::MAX);
        assert_eq!(config.upload_expiry, Duration::from_secs(u64::MAX));
    }

    #[test]
    fn the_default_repositories_parse() {
        let names: Vec<_> = default_repositories().into_iter().filter_map(|r| r.name).collect();
        assert_eq!(names, ["docker-remote", "docker-local", "helm-local", "go-local"]);
    }

    #[test]
    fn egress_keys_parse_and_a_bad_network_is_refused_at_start() {
        let file: FileConfig = toml::from_str(
            r#"
            upstream_allow_networks = ["10.0.0.0/8", "fd00::/8", "192.168.1.7"]
            upstream_ca_file = "/etc/binaryrepo/ca.pem"
            "#,
        )
        .unwrap();
        let config = Config::resolve(file, Overrides::default());
        let nets: Vec<String> = config.upstream.allow_networks.iter().map(|n| n.net().to_string()).collect();
        assert_eq!(nets, ["10.0.0.0/8", "fd00::/8", "192.168.1.7/32"]);
        assert_eq!(config.upstream.ca_file.as_deref(), Some(Path::new("/etc/binaryrepo/ca.pem")));
        let defaults = Config::resolve(FileConfig::default(), Overrides::default());
        assert!(defaults.upstream.allow_networks.is_empty() && defaults.upstream.ca_file.is_none());
        let err = toml::from_str::<FileConfig>(r#"upstream_allow_networks = ["intranet"]"#).unwrap_err().to_string();
        assert!(err.contains("not a network"), "{err}");
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn every_key_is_an_environment_variable_and_wins_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "plugin_cpu_ms = 100\nmetrics_anonymous = true\ndata_dir = \"/from/file\"\n").unwrap();
        let loaded = Loaded::read_with(
            Some(&file),
            env(&[
                ("BINARYREPO_PLUGIN_CPU_MS", "250"),
                ("BINARYREPO_METRICS_ANONYMOUS", "false"),
                ("BINARYREPO_LISTEN", "127.0.0.1:9999"),
                ("BINARYREPO_UPSTREAM_ALLOW_NETWORKS", r#"["10.0.0.0/8"]"#),
                ("BINARYREPO_REPOSITORIES", r#"[{name = "r", type = "local", format = "docker"}]"#),
                ("BINARYREPO_LOG_FORMAT", "json"),
                ("BINARYREPO_NOT_A_KEY", "1"),
                ("BINARYREPO_TOKEN", "brt_x"),
                ("OTHER", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(loaded.unknown_env, ["BINARYREPO_NOT_A_KEY"]);
        let config = Config::resolve(loaded.file_config().unwrap(), Overrides::default());
        assert_eq!(config.plugins.cpu, Duration::from_millis(250));
        assert!(!config.metrics_anonymous);
        assert_eq!(config.listen.to_string(), "127.0.0.1:9999");
        assert_eq!(config.data_dir, PathBuf::from("/from/file"));
        assert_eq!(config.upstream.allow_networks.len(), 1);
        assert_eq!(config.seed_repositories[0].name.as_deref(), Some("r"));
        assert!(config.repositories_declared);
        assert_eq!(config.log_format, LogFormat::Json);
        // flags win over both
        let flags = Overrides { data_dir: Some("/flag".into()), ..Overrides::default() };
        assert_eq!(Config::resolve(loaded.file_config().unwrap(), flags).data_dir, PathBuf::from("/flag"));
    }

    #[test]
    fn a_bad_environment_value_names_its_key() {
        let loaded = Loaded::read_with(None, env(&[("BINARYREPO_PLUGIN_CPU_MS", "lots")])).unwrap();
        let err = loaded.file_config().unwrap_err().to_string();
        assert!(err.contains("plugin_cpu_ms"), "{err}");
        // nested tables: two underscores
        let mut table = toml::Table::new();
        overlay_env(&mut table, env(&[("BINARYREPO_REPOSITORIES__X", "1")]));
        assert_eq!(table["repositories"]["x"].as_integer(), Some(1));
    }

    #[test]
    fn field_names_come_from_the_struct() {
        let names = field_names::<FileConfig>();
        assert!(names.contains(&"listen") && names.contains(&"credential_cache_entries") && names.contains(&"log_format"));
    }
}
