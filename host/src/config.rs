//! Configuration: command-line flags override the file, the file overrides the defaults.

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
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub plugin_dir: Option<PathBuf>,
    pub upstream_connect_timeout_ms: Option<u64>,
    pub upstream_idle_timeout_seconds: Option<u64>,
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
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.into(), source })
    }
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub connect_timeout: Duration,
    /// No bytes for this long aborts an upstream transfer; there is no total limit, so
    /// layers of any size stream.
    pub idle_timeout: Duration,
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

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub plugin_dir: PathBuf,
    pub upstream: UpstreamConfig,
    pub plugins: PluginLimits,
    /// Upload sessions untouched this long are removed.
    pub upload_expiry: Duration,
    /// Garbage collection keeps unreferenced blobs younger than this (a push in progress has
    /// its layers stored before the manifest that references them).
    pub gc_grace: Duration,
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
    pub fn resolve(file: FileConfig, flags: Overrides) -> Config {
        let listen = flags
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.parse().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 8081))));
        let instances = file.plugin_instances.unwrap_or(256).max(1);
        let fills_total = file.upstream_fills_total.unwrap_or(128).max(1);
        let fills_per_repository = file.upstream_fills_per_repository.unwrap_or(32).max(1);
        Config {
            listen,
            data_dir: flags.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from("data")),
            plugin_dir: flags.plugin_dir.or(file.plugin_dir).unwrap_or_else(default_plugin_dir),
            upstream: UpstreamConfig {
                connect_timeout: Duration::from_millis(file.upstream_connect_timeout_ms.unwrap_or(3000)),
                idle_timeout: Duration::from_secs(file.upstream_idle_timeout_seconds.unwrap_or(120)),
                down_for: Duration::from_secs(file.upstream_down_seconds.unwrap_or(30)),
                hold_last_byte: file.upstream_hold_last_byte.unwrap_or(false),
                allow_networks: file.upstream_allow_networks.unwrap_or_default(),
                ca_file: file.upstream_ca_file,
            },
            plugins: PluginLimits {
                memory_bytes: (file.plugin_memory_mib.unwrap_or(64) * 1024 * 1024) as usize,
                cpu: Duration::from_millis(file.plugin_cpu_ms.unwrap_or(2000)),
                instance_reuse: file.plugin_instance_reuse.unwrap_or(1024).max(1),
                instances,
                instances_per_repository: file.plugin_instances_per_repository.unwrap_or(instances / 4).clamp(1, instances),
                plan_cache_bytes: file.plan_cache_mib.unwrap_or(32) * 1024 * 1024,
            },
            upload_expiry: Duration::from_secs(file.upload_expiry_hours.unwrap_or(24) * 3600),
            gc_grace: Duration::from_secs(file.gc_grace_seconds.unwrap_or(3600)),
            tls_cert: file.tls_cert,
            tls_key: file.tls_key,
            tls_reload: Some(file.tls_reload_seconds.unwrap_or(2)).filter(|&s| s > 0).map(Duration::from_secs),
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
        }
    }
}

/// `plugins/` next to the executable: where `make` puts the bundled plugins.
pub fn default_plugin_dir() -> PathBuf {
    std::env::current_exe().ok().and_then(|exe| exe.parent().map(|dir| dir.join("plugins"))).unwrap_or_else(|| PathBuf::from("plugins"))
}

/// The embedded default: a Docker Hub cache that also answers root `/v2/` requests (so it works
/// as dockerd's registry mirror) and a hosted Docker registry. The bundled defaults are the only
/// place the host names a format.
pub fn default_repositories() -> Vec<RepositoryInput> {
    vec![
        RepositoryInput {
            name: Some("docker-remote".into()),
            repo_type: Some("remote".into()),
            format: Some("docker".into()),
            url: Some("https://registry-1.docker.io".into()),
            default: Some(true),
            ..RepositoryInput::default()
        },
        RepositoryInput {
            name: Some("docker-local".into()),
            repo_type: Some("local".into()),
            format: Some("docker".into()),
            ..RepositoryInput::default()
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
