//! Repository definitions: validated once, persisted in the data directory, shared read-mostly.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::auth::{Access, Grant, Principal};

mod cleanup;
pub use cleanup::{CleanupInput, CleanupRules, TagPattern};
use std::sync::LazyLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RepoType {
    Local,
    Remote,
    Virtual,
}

/// A repository name: `[a-z0-9][a-z0-9._-]{0,63}`, so it is safe in URLs, keys and host routing.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RepoName(String);

impl RepoName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

// A name orders as its string (the derived `Ord` is the `String`'s), so maps keyed by names can
// be searched with a `&str`.
impl std::borrow::Borrow<str> for RepoName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RepoName {
    type Error = RepoError;
    fn try_from(s: String) -> Result<Self, RepoError> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if ok && s != "api" {
            Ok(RepoName(s))
        } else {
            Err(RepoError::Invalid(format!(
                "invalid repository name {s:?}: use 1-64 of a-z 0-9 . _ - starting with a letter or digit (\"api\" is reserved)"
            )))
        }
    }
}

impl From<RepoName> for String {
    fn from(n: RepoName) -> String {
        n.0
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A repository as stored. The password is kept here and nowhere else; `view()` never shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Repository {
    pub name: RepoName,
    #[serde(rename = "type")]
    pub repo_type: RepoType,
    pub format: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    pub tag_check_seconds: u64,
    /// Remote: seconds an upstream "not found" is remembered (`DEFAULT_MISS_SECONDS`).
    #[serde(default = "default_miss_seconds")]
    pub miss_cache_seconds: u64,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub default: bool,
    #[serde(default)]
    pub members: Vec<RepoName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_local: Option<RepoName>,
    pub delete_enabled: bool,
    /// Who may do what here; none: the default for the repository's type (`default_grants`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Vec<Grant>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheLimits>,
    /// Local only: what each garbage collection run removes (tag retention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleanup: Option<CleanupRules>,
    /// Format settings, handed to the format's plugin as they are (`Settings`).
    #[serde(default, skip_serializing_if = "Settings::is_empty")]
    pub settings: Settings,
    /// Blob GETs answered with a redirect to a short-lived presigned URL of the object store
    /// (where the storage backend has them), so the bytes do not flow through binaryrepo.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub blob_redirect: bool,
    /// Its metric series, found on its first request (not a definition: never stored).
    #[serde(skip)]
    pub series: crate::metrics::SeriesSlot,
}

/// Per-repository settings of a format (`{"checksum_databases": "sum.golang.org"}` for Go):
/// the host checks their shape and that the format's plugin declares each name; what a value
/// means is the plugin's to say.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "BTreeMap<String, String>", into = "BTreeMap<String, String>")]
pub struct Settings(BTreeMap<String, String>);

impl Settings {
    /// Bounds that keep a definition (and every plugin call that carries it) small.
    const MAX_ENTRIES: usize = 32;
    const MAX_NAME: usize = 64;
    const MAX_VALUE: usize = 4096;

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Name and value pairs, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The first name not in `declared`, if any.
    pub fn undeclared<'a>(&'a self, declared: &[String]) -> Option<&'a str> {
        self.0.keys().map(String::as_str).find(|k| !declared.iter().any(|d| d == k))
    }
}

impl TryFrom<BTreeMap<String, String>> for Settings {
    type Error = RepoError;
    fn try_from(map: BTreeMap<String, String>) -> Result<Self, RepoError> {
        if map.len() > Self::MAX_ENTRIES {
            return invalid(format!("at most {} settings", Self::MAX_ENTRIES));
        }
        for (name, value) in &map {
            let name_ok = !name.is_empty()
                && name.len() <= Self::MAX_NAME
                && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !name_ok {
                return invalid(format!("invalid setting name {name:?}: use 1-{} of a-z 0-9 _", Self::MAX_NAME));
            }
            if value.len() > Self::MAX_VALUE {
                return invalid(format!("setting {name}: at most {} bytes", Self::MAX_VALUE));
            }
        }
        Ok(Settings(map))
    }
}

impl From<Settings> for BTreeMap<String, String> {
    fn from(s: Settings) -> Self {
        s.0
    }
}

/// How much a remote repository may cache: enforced by each garbage collection run, which
/// evicts what was pulled least recently (see `gc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheLimits {
    /// Bytes of cached content the repository may hold; none: no size budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// Cached content nobody pulled for this many days is removed; none: no age limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_days: Option<u64>,
}

/// The grants of a repository that names none. A remote is a shared cache of public content:
/// anyone who can reach the server may pull through it (the usual choice for a LAN cache, and
/// what dockerd's `registry-mirrors` needs, since it never sends credentials to a mirror). Local
/// and virtual repositories hold a team's own images: signed-in users may read them. Writes and
/// deletes always need an explicit grant (or an admin).
static REMOTE_DEFAULT: LazyLock<Vec<Grant>> = LazyLock::new(|| vec![Grant { who: Principal::Anonymous, allow: vec![Access::Read] }]);
static HOSTED_DEFAULT: LazyLock<Vec<Grant>> = LazyLock::new(|| vec![Grant { who: Principal::Authenticated, allow: vec![Access::Read] }]);

/// What the API shows: no password, ever.
#[derive(Debug, Serialize)]
pub struct RepositoryView<'a> {
    pub name: &'a RepoName,
    #[serde(rename = "type")]
    pub repo_type: RepoType,
    pub format: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<&'a str>,
    pub has_credentials: bool,
    pub tag_check_seconds: u64,
    pub miss_cache_seconds: u64,
    pub hostnames: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub default: bool,
    #[serde(skip_serializing_if = "<[RepoName]>::is_empty")]
    pub members: &'a [RepoName],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_local: Option<&'a RepoName>,
    pub delete_enabled: bool,
    pub access: &'a [Grant],
    /// whether `access` is the type's default (the repository names none)
    pub access_default: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_max_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_max_age_days: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cleanup: Option<&'a CleanupRules>,
    pub settings: &'a Settings,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub blob_redirect: bool,
}

impl Repository {
    /// Who may do what here.
    pub fn grants(&self) -> &[Grant] {
        match (&self.access, self.repo_type) {
            (Some(g), _) => g,
            (None, RepoType::Remote) => &REMOTE_DEFAULT,
            (None, _) => &HOSTED_DEFAULT,
        }
    }

    pub fn view(&self) -> RepositoryView<'_> {
        RepositoryView {
            name: &self.name,
            repo_type: self.repo_type,
            format: &self.format,
            url: self.url.as_deref(),
            username: self.username.as_deref(),
            has_credentials: self.password.is_some() || self.username.is_some(),
            tag_check_seconds: self.tag_check_seconds,
            miss_cache_seconds: self.miss_cache_seconds,
            hostnames: &self.hostnames,
            port: self.port,
            default: self.default,
            members: &self.members,
            default_local: self.default_local.as_ref(),
            delete_enabled: self.delete_enabled,
            access: self.grants(),
            access_default: self.access.is_none(),
            cache_max_bytes: self.cache.and_then(|c| c.max_bytes),
            cache_max_age_days: self.cache.and_then(|c| c.max_age_days),
            cleanup: self.cleanup.as_ref(),
            settings: &self.settings,
            blob_redirect: self.blob_redirect,
        }
    }

    /// `Basic` credentials for the upstream, when configured.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        match (&self.username, &self.password) {
            (None, None) => None,
            (u, p) => Some((u.as_deref().unwrap_or(""), p.as_deref().unwrap_or(""))),
        }
    }
}

/// A repository as a client sends it. Both our names and the original project's
/// (`repo_type`, `package_type`, `remote_url`) are accepted.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RepositoryInput {
    pub name: Option<String>,
    #[serde(rename = "type", alias = "repo_type")]
    pub repo_type: Option<String>,
    #[serde(alias = "package_type")]
    pub format: Option<String>,
    #[serde(alias = "remote_url")]
    pub url: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tag_check_seconds: Option<u64>,
    pub miss_cache_seconds: Option<u64>,
    pub hostnames: Option<Vec<String>>,
    pub port: Option<u16>,
    pub default: Option<bool>,
    pub members: Option<Vec<String>>,
    pub default_local: Option<String>,
    pub delete_enabled: Option<bool>,
    /// `[{"who": "user:alice" | "group:ci" | "authenticated" | "anonymous", "allow": ["read", "write", "delete", "admin"]}]`
    #[serde(alias = "permissions")]
    pub access: Option<Vec<Grant>>,
    /// remote only: the size budget of its cache, in bytes
    pub cache_max_bytes: Option<u64>,
    /// remote only: cached content not pulled for this many days is removed
    pub cache_max_age_days: Option<u64>,
    /// local only: `{"keep_last": N, "matching": "regex", "untagged_after_days": D}`
    pub cleanup: Option<CleanupInput>,
    /// the format's own settings, `{"name": "value"}` (names the format's plugin declares)
    pub settings: Option<BTreeMap<String, String>>,
    /// blob GETs redirected to presigned URLs of the object store (S3 storage only)
    pub blob_redirect: Option<bool>,
}

pub const DEFAULT_TAG_CHECK_SECONDS: u64 = 300;

/// A storm of requests for something the upstream does not have makes one upstream request per
/// this many seconds; short, so that something pushed upstream shows up soon.
pub const DEFAULT_MISS_SECONDS: u64 = 5;

/// The most a miss may be remembered: an upstream that gains the thing is believed within this.
pub const MAX_MISS_SECONDS: u64 = 3600;

fn default_miss_seconds() -> u64 {
    DEFAULT_MISS_SECONDS
}

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The client sent something we cannot accept.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("repository {0:?} not found")]
    NotFound(String),
    /// Our fault: the definitions could not be written.
    /// Said without the path, which only the log gets: this reaches API clients.
    #[error("cannot save the repository definitions: {source}")]
    Persist { path: PathBuf, source: std::io::Error },
    #[error("cannot load repositories from {path}: {message}")]
    Load { path: PathBuf, message: String },
}

fn invalid<T>(msg: impl Into<String>) -> Result<T, RepoError> {
    Err(RepoError::Invalid(msg.into()))
}

fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl RepositoryInput {
    /// Validates the input on its own (not against other repositories). `path_name` is the
    /// name from the URL for PUT; a body name must then agree with it.
    pub fn validate(self, path_name: Option<&str>, formats: &[String]) -> Result<Repository, RepoError> {
        let name = match (path_name, self.name) {
            (Some(p), Some(b)) if p != b => return invalid(format!("name in the body ({b:?}) differs from the URL ({p:?})")),
            (Some(p), _) => p.to_owned(),
            (None, Some(b)) => b,
            (None, None) => return invalid("missing \"name\""),
        };
        let name = RepoName::try_from(name)?;
        let repo_type = match self.repo_type.as_deref() {
            Some("local") => RepoType::Local,
            Some("remote") => RepoType::Remote,
            Some("virtual") => RepoType::Virtual,
            Some(other) => return invalid(format!("unknown repository type {other:?}: use local, remote or virtual")),
            None => return invalid("missing \"type\" (local, remote or virtual)"),
        };
        let format = match self.format {
            Some(f) if formats.contains(&f) => f,
            Some(f) => return invalid(format!("unknown format {f:?}: the loaded plugins provide {}", formats.join(", "))),
            None => return invalid(format!("missing \"format\" (one of: {})", formats.join(", "))),
        };
        let url = match (repo_type, self.url) {
            (RepoType::Remote, None) => return invalid("a remote repository needs \"url\", the upstream's base URL"),
            (RepoType::Remote, Some(u)) => {
                let parsed = url::Url::parse(&u).map_err(|e| RepoError::Invalid(format!("invalid url {u:?}: {e}")))?;
                // Kept in the URL they would be shown by the API, handed to plugins, and sent to
                // wherever the URL's host leads; the fields keep them write-only and on the remote.
                if !parsed.username().is_empty() || parsed.password().is_some() {
                    return invalid(
                        "invalid url: no user:password@ in a remote's url; put the credentials in the \"username\" and \"password\" fields",
                    );
                }
                if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                    return invalid(format!("invalid url {u:?}: use http:// or https:// with a host"));
                }
                if parsed.query().is_some() || parsed.fragment().is_some() {
                    return invalid(format!("invalid url {u:?}: no query or fragment"));
                }
                Some(u.trim_end_matches('/').to_owned())
            }
            (_, Some(_)) => return invalid("\"url\" only applies to remote repositories"),
            (_, None) => None,
        };
        if repo_type != RepoType::Remote && (self.username.is_some() || self.password.is_some()) {
            return invalid("\"username\"/\"password\" only apply to remote repositories");
        }
        let hostnames = self.hostnames.unwrap_or_default().into_iter().map(|h| h.to_ascii_lowercase()).collect::<Vec<_>>();
        if let Some(bad) = hostnames.iter().find(|h| !valid_hostname(h)) {
            return invalid(format!("invalid host name {bad:?}"));
        }
        if self.port == Some(0) {
            return invalid("port 0 is not a port");
        }
        let members = self.members.unwrap_or_default().into_iter().map(RepoName::try_from).collect::<Result<Vec<_>, _>>()?;
        if repo_type != RepoType::Virtual && !members.is_empty() {
            return invalid("\"members\" only apply to virtual repositories");
        }
        if repo_type == RepoType::Virtual && members.is_empty() {
            return invalid("a virtual repository needs \"members\", the repositories it resolves through in order");
        }
        let miss_cache_seconds = self.miss_cache_seconds.unwrap_or(DEFAULT_MISS_SECONDS);
        if miss_cache_seconds > MAX_MISS_SECONDS {
            return invalid(format!("miss_cache_seconds is at most {MAX_MISS_SECONDS}"));
        }
        let default_local = self.default_local.map(RepoName::try_from).transpose()?;
        if let Some(d) = &default_local {
            if repo_type != RepoType::Virtual {
                return invalid("\"default_local\" only applies to virtual repositories");
            }
            if !members.contains(d) {
                return invalid(format!("default_local {d} is not one of the members"));
            }
        }
        let cache = match (self.cache_max_bytes, self.cache_max_age_days) {
            (None, None) => None,
            _ if repo_type != RepoType::Remote => {
                return invalid("\"cache_max_bytes\"/\"cache_max_age_days\" only apply to remote repositories");
            }
            (Some(0), _) | (_, Some(0)) => return invalid("cache_max_bytes and cache_max_age_days must be at least 1"),
            (max_bytes, max_age_days) => Some(CacheLimits { max_bytes, max_age_days }),
        };
        let cleanup = match self.cleanup.map(CleanupInput::validate).transpose()?.flatten() {
            Some(_) if repo_type != RepoType::Local => return invalid("\"cleanup\" only applies to local repositories"),
            rules => rules,
        };
        let settings = Settings::try_from(self.settings.unwrap_or_default())?;
        Ok(Repository {
            name,
            repo_type,
            format,
            url,
            username: self.username,
            password: self.password,
            tag_check_seconds: self.tag_check_seconds.unwrap_or(DEFAULT_TAG_CHECK_SECONDS),
            miss_cache_seconds,
            hostnames,
            port: self.port,
            default: self.default.unwrap_or(false),
            members,
            default_local,
            delete_enabled: self.delete_enabled.unwrap_or(true),
            access: self.access,
            cache,
            cleanup,
            settings,
            blob_redirect: self.blob_redirect.unwrap_or(false),
            series: Default::default(),
        })
    }
}

/// All repositories, persisted as one JSON document written atomically: a file in the data
/// directory, or with a shared metadata store, a document there that every node follows.
pub struct Repos {
    path: PathBuf,
    inner: RwLock<BTreeMap<RepoName, Arc<Repository>>>,
    /// What routes a request to a repository other than its name, kept apart from `inner` so that
    /// a request does not visit every repository to find none bound to its host or port.
    routes: RwLock<Routes>,
    /// Moves on after every change to the definitions (`Writing` drops), once the routes follow.
    generation: std::sync::atomic::AtomicU64,
    reserved_port: u16,
    shared: Option<Shared>,
}

/// The repositories bound to a port or a host name, and the default one; rebuilt whenever the
/// definitions change (`Writing` drops).
#[derive(Default)]
struct Routes {
    ports: Vec<(u16, Arc<Repository>)>,
    hostnames: Vec<(String, Arc<Repository>)>,
    default: Option<Arc<Repository>>,
}

impl Routes {
    fn of(map: &BTreeMap<RepoName, Arc<Repository>>) -> Routes {
        let mut routes = Routes::default();
        for repo in map.values() {
            if let Some(port) = repo.port {
                routes.ports.push((port, repo.clone()));
            }
            routes.hostnames.extend(repo.hostnames.iter().map(|h| (h.clone(), repo.clone())));
            if repo.default && routes.default.is_none() {
                routes.default = Some(repo.clone());
            }
        }
        routes
    }
}

/// The definitions held for a change; the routes follow them when it is done.
struct Writing<'a> {
    map: std::sync::RwLockWriteGuard<'a, BTreeMap<RepoName, Arc<Repository>>>,
    routes: &'a RwLock<Routes>,
    generation: &'a std::sync::atomic::AtomicU64,
}

impl std::ops::Deref for Writing<'_> {
    type Target = BTreeMap<RepoName, Arc<Repository>>;
    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl std::ops::DerefMut for Writing<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.map
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        *self.routes.write().unwrap_or_else(|e| e.into_inner()) = Routes::of(&self.map);
        // After the routes and while the definitions are still held: whoever reads the new
        // generation resolves with the new definitions (see `generation`).
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// The definitions in the shared metadata store, and the version of them this node holds.
struct Shared {
    meta: crate::storage::MetaStore,
    seen: std::sync::Mutex<Option<i64>>,
}

/// The shared store's document that holds the definitions (what `repositories.json` holds).
const DOCUMENT: &str = "repositories.json";

impl Repos {
    /// Repositories persisted at `path`; nothing is read until `load_or_seed`.
    pub fn new(path: PathBuf, reserved_port: u16) -> Repos {
        Repos {
            path,
            inner: RwLock::new(BTreeMap::new()),
            routes: RwLock::default(),
            generation: Default::default(),
            reserved_port,
            shared: None,
        }
    }

    /// Repositories kept in the shared metadata store instead of a file (several nodes).
    pub fn shared(mut self, meta: crate::storage::MetaStore) -> Repos {
        if meta.shared().is_some() {
            self.shared = Some(Shared { meta, seen: Default::default() });
        }
        self
    }

    fn read_stored(&self) -> Result<Option<Stored>, RepoError> {
        let load = |message: String| RepoError::Load { path: self.path.clone(), message };
        match &self.shared {
            Some(shared) => {
                let pg = shared.meta.shared().ok_or_else(|| load("no shared store".into()))?;
                Ok(pg.document(DOCUMENT).map_err(|e| load(e.to_string()))?.map(|(body, v)| (body, Some(v))))
            }
            None => match std::fs::read(&self.path) {
                Ok(bytes) => Ok(Some((bytes, None))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(load(e.to_string())),
            },
        }
    }

    /// Takes what another node saved, when the shared document moved past the version this node
    /// holds; true when the definitions changed. Blocking. Without a shared store, nothing to do.
    pub fn refresh(&self) -> Result<bool, RepoError> {
        let Some(shared) = &self.shared else { return Ok(false) };
        let Some(pg) = shared.meta.shared() else { return Ok(false) };
        let current = pg.document_version(DOCUMENT).map_err(|e| RepoError::Load { path: self.path.clone(), message: e.to_string() })?;
        if current == *shared.seen.lock().unwrap_or_else(|p| p.into_inner()) {
            return Ok(false);
        }
        let Some((bytes, version)) = self.read_stored()? else { return Ok(false) };
        let all = serde_json::from_slice::<Vec<Repository>>(&bytes)
            .map_err(|e| RepoError::Load { path: self.path.clone(), message: e.to_string() })?;
        let mut map = self.write();
        map.clear();
        for repo in all {
            map.insert(repo.name.clone(), Arc::new(repo));
        }
        *shared.seen.lock().unwrap_or_else(|p| p.into_inner()) = version;
        Ok(true)
    }

    /// Loads the definitions, or seeds them on first start.
    pub fn load_or_seed(&self, seed: Vec<Repository>) -> Result<(), RepoError> {
        let path = self.path.clone();
        let existing = match self.read_stored()? {
            Some((bytes, version)) => {
                if let Some(shared) = &self.shared {
                    *shared.seen.lock().unwrap_or_else(|p| p.into_inner()) = version;
                }
                Some(
                    serde_json::from_slice::<Vec<Repository>>(&bytes)
                        .map_err(|e| RepoError::Load { path: path.clone(), message: e.to_string() })?,
                )
            }
            None => None,
        };
        let seeded = existing.is_none();
        let mut map = self.write();
        map.clear();
        let all = existing.unwrap_or(seed);
        for repo in &all {
            if map.insert(repo.name.clone(), Arc::new(repo.clone())).is_some() {
                return Err(RepoError::Load { path, message: format!("repository {} is defined twice", repo.name) });
            }
        }
        // Against the whole set: a virtual repository may be listed before its members.
        for repo in &all {
            Self::check_against(&map, repo, Some(&repo.name), self.reserved_port)
                .map_err(|e| RepoError::Load { path: path.clone(), message: e.to_string() })?;
        }
        if seeded {
            self.persist(&map)?;
        }
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<RepoName, Arc<Repository>>> {
        // A panic while holding the lock cannot leave the map half-updated (we only swap
        // whole entries), so a poisoned lock is still consistent.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> Writing<'_> {
        Writing { map: self.inner.write().unwrap_or_else(|e| e.into_inner()), routes: &self.routes, generation: &self.generation }
    }

    fn routes(&self) -> std::sync::RwLockReadGuard<'_, Routes> {
        self.routes.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves on after every change to the definitions. Read before a request is resolved, an
    /// unchanged generation afterwards means the same request resolves the same way again.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn get(&self, name: &str) -> Option<Arc<Repository>> {
        self.read().get(name).cloned()
    }

    pub fn list(&self) -> Vec<Arc<Repository>> {
        self.read().values().cloned().collect()
    }

    pub fn by_port(&self, port: u16) -> Option<Arc<Repository>> {
        self.routes().ports.iter().find(|(p, _)| *p == port).map(|(_, r)| r.clone())
    }

    /// `host`: as the client sent it, without the port; names compare without case.
    pub fn by_hostname(&self, host: &str) -> Option<Arc<Repository>> {
        self.routes().hostnames.iter().find(|(h, _)| h.eq_ignore_ascii_case(host)).map(|(_, r)| r.clone())
    }

    pub fn default_repository(&self) -> Option<Arc<Repository>> {
        self.routes().default.clone()
    }

    /// Cross-repository rules: unique name, port, host names, one default, members exist.
    fn check_against(
        map: &BTreeMap<RepoName, Arc<Repository>>,
        repo: &Repository,
        replacing: Option<&RepoName>,
        reserved_port: u16,
    ) -> Result<(), RepoError> {
        let others = || map.values().filter(|r| Some(&r.name) != replacing && r.name != repo.name);
        if let Some(port) = repo.port {
            if port == reserved_port {
                return Err(RepoError::Conflict(format!("port {port} is the server's main listener")));
            }
            if let Some(o) = others().find(|o| o.port == Some(port)) {
                return Err(RepoError::Conflict(format!("port {port} is already bound to repository {}", o.name)));
            }
        }
        for h in &repo.hostnames {
            if let Some(o) = others().find(|o| o.hostnames.contains(h)) {
                return Err(RepoError::Conflict(format!("host name {h} is already bound to repository {}", o.name)));
            }
        }
        if repo.default
            && let Some(o) = others().find(|o| o.default)
        {
            return Err(RepoError::Conflict(format!("repository {} is already the default; set \"default\": false on it first", o.name)));
        }
        for m in &repo.members {
            match map.get(m) {
                None => return Err(RepoError::Invalid(format!("member repository {m} does not exist"))),
                Some(r) if r.repo_type == RepoType::Virtual => {
                    return Err(RepoError::Invalid(format!("member {m} is itself virtual")));
                }
                Some(r) if r.format != repo.format => {
                    return Err(RepoError::Invalid(format!("member {m} is of format {}, not {}", r.format, repo.format)));
                }
                Some(_) => {}
            }
        }
        if let Some(d) = &repo.default_local
            && map.get(d).is_some_and(|r| r.repo_type != RepoType::Local)
        {
            return Err(RepoError::Invalid(format!("default_local {d} is not a local repository")));
        }
        // A repository that virtual repositories list keeps its type: a member must not
        // become virtual, and a default_local must stay local.
        if let Some(v) = others().find(|v| v.members.contains(&repo.name)) {
            if repo.repo_type == RepoType::Virtual {
                return Err(RepoError::Conflict(format!("{} is a member of virtual repository {}", repo.name, v.name)));
            }
            if v.default_local.as_ref() == Some(&repo.name) && repo.repo_type != RepoType::Local {
                return Err(RepoError::Conflict(format!("{} is the default_local of {} and must stay local", repo.name, v.name)));
            }
        }
        Ok(())
    }

    /// Before a change: the definitions another node saved are what it is checked against.
    fn refresh_before_change(&self) {
        if let Err(e) = self.refresh() {
            tracing::warn!(error = %e, "shared repository definitions not re-read");
        }
    }

    pub fn create(&self, repo: Repository) -> Result<Arc<Repository>, RepoError> {
        self.refresh_before_change();
        let mut map = self.write();
        if map.contains_key(&repo.name) {
            return Err(RepoError::Conflict(format!("repository {} already exists", repo.name)));
        }
        Self::check_against(&map, &repo, None, self.reserved_port)?;
        let repo = Arc::new(repo);
        map.insert(repo.name.clone(), repo.clone());
        if let Err(e) = self.persist(&map) {
            map.remove(&repo.name);
            return Err(e);
        }
        Ok(repo)
    }

    /// Creates or replaces; returns the previous definition when there was one.
    pub fn put(&self, repo: Repository) -> Result<(Arc<Repository>, Option<Arc<Repository>>), RepoError> {
        self.refresh_before_change();
        let mut map = self.write();
        Self::check_against(&map, &repo, Some(&repo.name), self.reserved_port)?;
        let repo = Arc::new(repo);
        let old = map.insert(repo.name.clone(), repo.clone());
        if let Err(e) = self.persist(&map) {
            match &old {
                Some(o) => map.insert(o.name.clone(), o.clone()),
                None => map.remove(&repo.name),
            };
            return Err(e);
        }
        Ok((repo, old))
    }

    pub fn delete(&self, name: &str) -> Result<Arc<Repository>, RepoError> {
        self.refresh_before_change();
        let mut map = self.write();
        let key = map.get_key_value(name).map(|(k, _)| k.clone()).ok_or_else(|| RepoError::NotFound(name.to_owned()))?;
        if let Some(v) = map.values().find(|r| r.members.contains(&key)) {
            return Err(RepoError::Conflict(format!("repository {name} is a member of virtual repository {}", v.name)));
        }
        let old = map.remove(&key).ok_or_else(|| RepoError::NotFound(name.to_owned()))?;
        if let Err(e) = self.persist(&map) {
            map.insert(key, old);
            return Err(e);
        }
        Ok(old)
    }

    /// Durable before the change is acknowledged (see `storage::durable`). 0600: the file holds
    /// upstream passwords.
    fn persist(&self, map: &BTreeMap<RepoName, Arc<Repository>>) -> Result<(), RepoError> {
        let err = |source: std::io::Error| {
            tracing::error!(path = %self.path.display(), error = %source, "repository definitions not saved");
            RepoError::Persist { path: self.path.clone(), source }
        };
        let list: Vec<&Repository> = map.values().map(|r| r.as_ref()).collect();
        let json = serde_json::to_vec_pretty(&list).map_err(|e| err(std::io::Error::other(e)))?;
        if let Some(shared) = &self.shared {
            let Some(pg) = shared.meta.shared() else { return Err(err(std::io::Error::other("no shared store"))) };
            let mut seen = shared.seen.lock().unwrap_or_else(|p| p.into_inner());
            return match pg.put_document(DOCUMENT, &json, *seen) {
                Ok(v) => {
                    *seen = Some(v);
                    Ok(())
                }
                Err(e @ crate::storage::meta::MetaError::Conflict(_)) => Err(RepoError::Conflict(e.to_string())),
                Err(e) => Err(err(std::io::Error::other(e))),
            };
        }
        crate::storage::durable::replace(&self.path, &json, 0o600).map_err(err)
    }
}

/// The stored definitions document and, in a shared store, its version.
type Stored = (Vec<u8>, Option<i64>);

#[cfg(test)]
mod tests {
    use super::*;

    fn formats() -> Vec<String> {
        vec!["docker".into()]
    }

    fn input(json: &str) -> RepositoryInput {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn original_api_shape_is_accepted() {
        let r = input(r#"{"name":"docker-remote","repo_type":"remote","package_type":"docker","remote_url":"https://registry-1.docker.io/","username":"u","password":"p"}"#)
            .validate(None, &formats())
            .unwrap();
        assert_eq!(r.repo_type, RepoType::Remote);
        assert_eq!(r.url.as_deref(), Some("https://registry-1.docker.io"));
        let view = serde_json::to_string(&r.view()).unwrap();
        assert!(!view.contains("\"p\""), "{view}");
        assert!(view.contains("\"has_credentials\":true"));
    }

    #[test]
    fn bad_inputs_say_what_is_wrong() {
        let cases = [
            (r#"{"name":"x","type":"remote","format":"npm","url":"http://a"}"#, "unknown format"),
            (r#"{"name":"Bad Name","type":"local","format":"docker"}"#, "invalid repository name"),
            (r#"{"name":"x","type":"remote","format":"docker"}"#, "needs \"url\""),
            (r#"{"name":"x","type":"cache","format":"docker"}"#, "unknown repository type"),
            (r#"{"name":"x","type":"remote","format":"docker","url":"ftp://a"}"#, "invalid url"),
            (
                r#"{"name":"x","type":"remote","format":"docker","url":"https://u:p@registry.example"}"#,
                "\"username\" and \"password\" fields",
            ),
            (r#"{"name":"x","type":"remote","format":"docker","url":"https://token@registry.example"}"#, "no user:password@"),
            (r#"{"name":"x","type":"remote","format":"docker","url":"https://a","cleanup":{"keep_last":1}}"#, "only applies to local"),
            (r#"{"name":"x","type":"virtual","format":"docker","members":["y"],"cleanup":{"keep_last":1}}"#, "only applies to local"),
            (r#"{"name":"x","type":"local","format":"docker","cleanup":{"keep_last":1,"matching":"(("}}"#, "cleanup.matching"),
        ];
        for (json, want) in cases {
            let err = input(json).validate(None, &formats()).unwrap_err().to_string();
            assert!(err.contains(want), "{json}: {err}");
        }
    }

    #[test]
    fn conflicts_and_persistence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("repos.json");
        let repos = Repos::new(path.clone(), 8081);
        repos.load_or_seed(vec![]).unwrap();
        let mk = |j: &str| input(j).validate(None, &formats()).unwrap();
        repos.create(mk(r#"{"name":"a","type":"local","format":"docker","port":9000,"default":true}"#)).unwrap();
        assert!(matches!(repos.create(mk(r#"{"name":"a","type":"local","format":"docker"}"#)), Err(RepoError::Conflict(_))));
        assert!(matches!(repos.create(mk(r#"{"name":"b","type":"local","format":"docker","port":9000}"#)), Err(RepoError::Conflict(_))));
        assert!(matches!(repos.create(mk(r#"{"name":"b","type":"local","format":"docker","default":true}"#)), Err(RepoError::Conflict(_))));
        assert!(matches!(repos.create(mk(r#"{"name":"b","type":"local","format":"docker","port":8081}"#)), Err(RepoError::Conflict(_))));
        assert_eq!(repos.list().len(), 1);
        // A virtual repository whose name sorts before its member survives a restart.
        repos.create(mk(r#"{"name":"0-all","type":"virtual","format":"docker","members":["a"],"default_local":"a"}"#)).unwrap();
        let again = Repos::new(path, 8081);
        again.load_or_seed(vec![]).unwrap();
        assert_eq!(again.get("a").unwrap().port, Some(9000));
        assert_eq!(again.list().len(), 2);
    }

    /// The routes by port, host name and default follow every change, including a failed one.
    #[test]
    fn routes_follow_the_definitions() {
        let dir = tempfile::tempdir().unwrap();
        let repos = Repos::new(dir.path().join("repos.json"), 8081);
        let mk = |j: &str| input(j).validate(None, &formats()).unwrap();
        repos.load_or_seed(vec![mk(r#"{"name":"a","type":"local","format":"docker","port":9000}"#)]).unwrap();
        assert_eq!(repos.by_port(9000).unwrap().name.as_str(), "a");
        assert!(repos.by_hostname("docker.example.com").is_none() && repos.default_repository().is_none());
        repos.create(mk(r#"{"name":"b","type":"local","format":"docker","hostnames":["Docker.Example.com"],"default":true}"#)).unwrap();
        assert_eq!(repos.by_hostname("DOCKER.example.COM").unwrap().name.as_str(), "b");
        assert_eq!(repos.default_repository().unwrap().name.as_str(), "b");
        repos.put(mk(r#"{"name":"a","type":"local","format":"docker","port":9001}"#)).unwrap();
        assert!(repos.by_port(9000).is_none());
        assert_eq!(repos.by_port(9001).unwrap().name.as_str(), "a");
        assert!(repos.create(mk(r#"{"name":"c","type":"local","format":"docker","port":9001}"#)).is_err());
        assert_eq!(repos.by_port(9001).unwrap().name.as_str(), "a");
        repos.delete("b").unwrap();
        assert!(repos.by_hostname("docker.example.com").is_none() && repos.default_repository().is_none());
        assert!(repos.get("b").is_none() && repos.get("a").is_some());
    }
}
