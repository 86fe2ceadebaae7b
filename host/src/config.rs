//! Configuration: command-line flags override the file, the file overrides the defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::repos::RepositoryInput;

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
    pub plugin_memory_mib: Option<u64>,
    pub plugin_cpu_ms: Option<u64>,
    pub plugin_instance_reuse: Option<u32>,
    pub upload_expiry_hours: Option<u64>,
    pub gc_grace_seconds: Option<u64>,
    /// PEM certificate chain and private key: with both, every listener speaks TLS (re-read when
    /// the files change or on SIGHUP).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_reload_seconds: Option<u64>,
    /// Seeds the data directory on first start; afterwards the API owns the repositories.
    pub repositories: Option<Vec<RepositoryInput>>,
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
        Config {
            listen,
            data_dir: flags.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from("data")),
            plugin_dir: flags.plugin_dir.or(file.plugin_dir).unwrap_or_else(default_plugin_dir),
            upstream: UpstreamConfig {
                connect_timeout: Duration::from_millis(file.upstream_connect_timeout_ms.unwrap_or(3000)),
                idle_timeout: Duration::from_secs(file.upstream_idle_timeout_seconds.unwrap_or(120)),
                down_for: Duration::from_secs(file.upstream_down_seconds.unwrap_or(30)),
                hold_last_byte: file.upstream_hold_last_byte.unwrap_or(false),
            },
            plugins: PluginLimits {
                memory_bytes: (file.plugin_memory_mib.unwrap_or(64) * 1024 * 1024) as usize,
                cpu: Duration::from_millis(file.plugin_cpu_ms.unwrap_or(2000)),
                instance_reuse: file.plugin_instance_reuse.unwrap_or(1024).max(1),
            },
            upload_expiry: Duration::from_secs(file.upload_expiry_hours.unwrap_or(24) * 3600),
            gc_grace: Duration::from_secs(file.gc_grace_seconds.unwrap_or(3600)),
            tls_cert: file.tls_cert,
            tls_key: file.tls_key,
            tls_reload: Some(file.tls_reload_seconds.unwrap_or(2)).filter(|&s| s > 0).map(Duration::from_secs),
            seed_repositories: file.repositories.unwrap_or_else(default_repositories),
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
