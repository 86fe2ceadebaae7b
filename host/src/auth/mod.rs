//! Identities, tokens and permissions.
//!
//! [`Auth`] answers "who is calling": it checks an `Authorization` header (Basic password,
//! Basic or Bearer API token, Bearer signed token) and returns an [`Identity`]. [`permits`]
//! answers "may they": an identity against a repository's [`Grant`]s. [`token_endpoint`] is the
//! Docker token service, and [`audit`] writes the audit trail.
//!
//! Users come from three places: `<data_dir>/auth/users.json` (managed through the API), the
//! configuration file's `[[users]]` and an htpasswd file (both read-only here, and shadowing an
//! API user of the same name). A first start with no users at all creates `admin`.

mod access;
mod api_tokens;
mod audit;
mod cache;
mod endpoint;
mod error;
mod files;
mod header;
mod identity;
mod names;
mod password;
mod signed;
mod store;
mod throttle;
mod users;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub use access::{Access, Grant, Principal, PrincipalError, permits};
pub use api_tokens::{TokenSecret, TokenView};
pub use audit::{AuditEvent, Outcome, audit};
pub use endpoint::token_endpoint;
pub use error::{AuthError, AuthFailure, UserError};
pub use identity::{Identity, UserIdentity, Via};
pub use names::{GroupName, NameError, UserName};
pub use signed::{Scope, ScopeError};
pub use users::{NewUser, Source, UserUpdate, UserView};

use crate::config::AuthConfig;
use api_tokens::{StoredToken, TokenHash, TokensFile};
use cache::CredentialCache;
use password::{Hasher, PasswordHash};
use signed::{Claims, Signer, TokenError};
use throttle::Throttle;
use users::{FixedUser, StoredUser, UserRecord, UsersFile};

/// The environment variable that sets the first admin's password.
pub const ADMIN_PASSWORD_ENV: &str = "BINARYREPO_ADMIN_PASSWORD";
/// The user a first start creates.
pub const FIRST_ADMIN: &str = "admin";

/// A token from the token endpoint.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    /// Seconds.
    pub expires_in: u64,
    pub issued_at: SystemTime,
}

struct UsersState {
    /// What `users.json` holds, shadowed entries included.
    api: BTreeMap<UserName, StoredUser>,
    /// Every user that can sign in, by name.
    effective: HashMap<UserName, Arc<UserRecord>>,
}

/// Users, API tokens, the signing key, and the state that makes checking them cheap and safe.
/// Shared by all requests (`Arc<Auth>`).
pub struct Auth {
    store: store::AuthStore,
    /// The users of the configuration and htpasswd files (they win over stored users of the
    /// same name), kept to rebuild the set when another node changes the stored ones.
    fixed: Vec<Arc<UserRecord>>,
    users: RwLock<UsersState>,
    /// API tokens by the SHA-256 of their secret; `tokens.json` holds the values.
    tokens: RwLock<HashMap<TokenHash, StoredToken>>,
    /// Serialises changes: read, change, save, then publish.
    writer: Mutex<()>,
    hasher: Hasher,
    cache: CredentialCache,
    throttle: Throttle,
    signer: Signer,
    token_ttl: Duration,
    generation: AtomicU64,
    /// Changes made to the users and API tokens: credentials may authenticate differently, or
    /// not at all, after one (see `epoch`).
    epoch: AtomicU64,
    /// Seconds added to the clock, so tests can step past expiry times.
    #[cfg(test)]
    clock_skew: AtomicU64,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

fn random_hex<const N: usize>() -> Result<String, files::FileError> {
    Ok(hex::encode(files::random_bytes::<N>()?))
}

/// Why `check` refused, and the user name that was tried (for the audit line).
struct Refused {
    failure: AuthFailure,
    tried: Option<String>,
}

impl From<AuthFailure> for Refused {
    fn from(failure: AuthFailure) -> Refused {
        Refused { failure, tried: None }
    }
}

impl From<password::HasherGone> for Refused {
    fn from(e: password::HasherGone) -> Refused {
        Refused { failure: e.into(), tried: None }
    }
}

enum TokenLookup {
    NotFound,
    Expired,
    Found(Arc<UserIdentity>),
}

impl Auth {
    /// Opens `<data_dir>/auth/` (created 0700): `users.json`, `tokens.json`, `signing.key`
    /// (32 random bytes, generated on first start), plus the users of the configuration file
    /// and of `htpasswd_file`. With no users at all, creates `admin` with the password from
    /// `BINARYREPO_ADMIN_PASSWORD`, or a generated one logged once.
    pub fn open(data_dir: &Path, config: &AuthConfig) -> Result<Auth, AuthError> {
        Auth::open_inner(data_dir, config, std::env::var(ADMIN_PASSWORD_ENV).ok().filter(|p| !p.is_empty()), None)
    }

    /// Like `open`, with users, tokens and the signing key in the shared metadata store when
    /// `meta` is one (several nodes).
    pub fn open_shared(data_dir: &Path, config: &AuthConfig, meta: crate::storage::MetaStore) -> Result<Auth, AuthError> {
        Auth::open_inner(data_dir, config, std::env::var(ADMIN_PASSWORD_ENV).ok().filter(|p| !p.is_empty()), Some(meta))
    }

    #[cfg(test)]
    fn open_with(data_dir: &Path, config: &AuthConfig, admin_password: Option<String>) -> Result<Auth, AuthError> {
        Auth::open_inner(data_dir, config, admin_password, None)
    }

    fn open_inner(
        data_dir: &Path,
        config: &AuthConfig,
        admin_password: Option<String>,
        meta: Option<crate::storage::MetaStore>,
    ) -> Result<Auth, AuthError> {
        let store = store::AuthStore::open(data_dir.join("auth"), meta)?;
        let key = store.signing_key()?;
        let hasher = Hasher::new(config.password_hash_cost);
        let generation = AtomicU64::new(1);
        let next = || generation.fetch_add(1, Ordering::Relaxed);

        let mut api = BTreeMap::new();
        for user in store.read_json::<UsersFile>("users.json")?.unwrap_or_default().users {
            api.insert(user.name.clone(), user);
        }
        let mut fixed: Vec<FixedUser> = match &config.htpasswd_file {
            Some(path) => users::load_htpasswd(path)?,
            None => Vec::new(),
        };
        let mut from_config = Vec::new();
        for user in &config.users {
            let user = users::from_config(user)?;
            if from_config.iter().any(|u: &FixedUser| u.name == user.name) {
                return Err(AuthError::DuplicateConfigUser(user.name));
            }
            from_config.push(user);
        }
        // The configuration file's entry wins over the htpasswd file's.
        fixed.retain(|h| !from_config.iter().any(|c| c.name == h.name));
        fixed.extend(from_config);

        if api.is_empty() && fixed.is_empty() {
            let user = first_admin(&hasher, admin_password)?;
            api.insert(user.name.clone(), user);
            match store.write_json("users.json", &UsersFile { users: api.values().cloned().collect() }) {
                Ok(()) => {}
                // Another node started at the same time and created the first admin: theirs.
                Err(e) if e.is_conflict() => {
                    api.clear();
                    for user in store.read_json::<UsersFile>("users.json")?.unwrap_or_default().users {
                        api.insert(user.name.clone(), user);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }

        let mut effective = HashMap::new();
        for u in api.values() {
            effective.insert(u.name.clone(), Arc::new(UserRecord::from_api(u, next())));
        }
        let mut fixed_records = Vec::new();
        for u in fixed {
            if effective.contains_key(&u.name) {
                tracing::warn!(user = %u.name, "user defined in users.json is replaced by the {} file's", u.source.as_str());
            }
            let record = Arc::new(UserRecord::from_fixed(u, next()));
            fixed_records.push(record.clone());
            effective.insert(record.name().clone(), record);
        }

        // Tokens whose owner is gone (a config user removed, say) or that have expired are
        // dropped, so that a user of the same name added later does not inherit them.
        let now = unix_now();
        let stored = store.read_json::<TokensFile>("tokens.json")?.unwrap_or_default().tokens;
        let before = stored.len();
        let mut tokens = HashMap::new();
        for t in stored {
            let owner_ok = effective.get(&t.user).is_some_and(|r| r.id == t.user_id);
            let hash = hex::decode(&t.sha256).ok().and_then(|h| TokenHash::try_from(h.as_slice()).ok());
            if let (true, false, Some(hash)) = (owner_ok, t.expired(now), hash) {
                tokens.insert(hash, t);
            }
        }
        if tokens.len() != before
            && let Err(e) = store.write_json("tokens.json", &TokensFile { tokens: tokens.values().cloned().collect() })
            && !e.is_conflict()
        {
            return Err(e.into());
        }

        Ok(Auth {
            store,
            fixed: fixed_records,
            users: RwLock::new(UsersState { api, effective }),
            tokens: RwLock::new(tokens),
            writer: Mutex::new(()),
            hasher,
            // A fresh key per process: cache keys mean nothing outside it.
            cache: CredentialCache::new(&files::random_bytes::<32>()?, config.credential_cache_entries, config.credential_cache_ttl),
            throttle: Throttle::new(config.login_failures_before_delay, config.login_failure_window),
            signer: Signer::new(&key),
            token_ttl: config.token_ttl,
            generation,
            epoch: AtomicU64::new(0),
            #[cfg(test)]
            clock_skew: AtomicU64::new(0),
        })
    }

    fn now(&self) -> u64 {
        #[cfg(test)]
        return unix_now() + self.clock_skew.load(Ordering::Relaxed);
        #[cfg(not(test))]
        unix_now()
    }

    fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::Relaxed)
    }

    /// How many changes the users and API tokens have seen. An answer given to credentials may
    /// be given again to the same credentials without checking them while this stays the same
    /// and their `trusted_until` has not passed (`server::front`).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Called after the users or tokens in use changed (their lock released or not: a reader
    /// that sees the new epoch takes its lock after the change, and so sees it).
    fn changed(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    fn user_record(&self, name: &UserName) -> Option<Arc<UserRecord>> {
        read(&self.users).effective.get(name).cloned()
    }

    // ---- authentication ----------------------------------------------------------------

    /// Who sent a request with this `Authorization` header (none: anonymous). Accepts Basic
    /// `user:password`, Basic `user:<API token>`, Bearer `<API token>` and Bearer `<signed token>`.
    ///
    /// A password verified once is then recognised for `credential_cache_seconds` by a keyed
    /// hash and a map look-up; bcrypt runs only on a miss, on the blocking pool, and once for a
    /// burst of requests that bring the same new credentials together. A refusal is
    /// logged as an audit line and, past `login_failures_before_delay` failures from the same
    /// address, answered only after a growing delay (1 s … 10 s).
    pub async fn authenticate(&self, authorization: Option<&http::HeaderValue>, client: IpAddr) -> Result<Identity, AuthFailure> {
        let Some(value) = authorization else { return Ok(Identity::Anonymous) };
        let refused = match self.check(value.as_bytes()).await {
            Ok(identity) => return Ok(identity),
            Err(refused) => refused,
        };
        if let AuthFailure::Unavailable(_) = refused.failure {
            return Err(refused.failure);
        }
        let delay = self.throttle.failure(client);
        let detail = if delay.is_zero() { refused.failure.to_string() } else { format!("{}; answered after {:?}", refused.failure, delay) };
        audit(&AuditEvent {
            user: refused.tried.as_deref().unwrap_or("-"),
            client,
            repository: None,
            action: "login",
            outcome: Outcome::Failed,
            detail: Some(&detail),
        });
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Err(refused.failure)
    }

    async fn check(&self, header: &[u8]) -> Result<Identity, Refused> {
        match header::parse(header).map_err(AuthFailure::Malformed)? {
            header::Credentials::Anonymous => Ok(Identity::Anonymous),
            header::Credentials::Basic { user, password } => self.basic(&user, &password).await,
            header::Credentials::Bearer(token) => self.bearer(token).map_err(Refused::from),
        }
    }

    async fn basic(&self, user: &str, password: &[u8]) -> Result<Identity, Refused> {
        let bad = |failure| Refused { failure, tried: Some(user.chars().take(64).collect()) };
        let Ok(name) = UserName::parse(user) else {
            self.hasher.decoy().await?;
            return Err(bad(AuthFailure::BadCredentials));
        };
        // An API token in place of the password; a password that merely starts like one is
        // checked as a password below.
        if let Some(secret) = std::str::from_utf8(password).ok().filter(|p| p.starts_with(api_tokens::PREFIX)) {
            match self.api_token(secret) {
                TokenLookup::Found(identity) if identity.name == name => return Ok(Identity::User(identity)),
                TokenLookup::Found(_) => return Err(bad(AuthFailure::BadCredentials)),
                TokenLookup::Expired => return Err(bad(AuthFailure::ExpiredToken)),
                TokenLookup::NotFound => {}
            }
        }
        let Some(record) = self.user_record(&name) else {
            self.hasher.decoy().await?;
            return Err(bad(AuthFailure::BadCredentials));
        };
        let key = self.cache.key(name.as_str(), password);
        if self.cache.hit(&key, record.generation) {
            return Ok(Identity::User(record.by_password.clone()));
        }
        let _turn = self.cache.turn(&key).await;
        if self.cache.hit(&key, record.generation) {
            return Ok(Identity::User(record.by_password.clone()));
        }
        if !self.hasher.verify(password.to_vec(), record.hash.clone()).await? {
            return Err(bad(AuthFailure::BadCredentials));
        }
        self.cache.insert(key, record.generation);
        Ok(Identity::User(record.by_password.clone()))
    }

    fn bearer(&self, token: &str) -> Result<Identity, AuthFailure> {
        if token.starts_with(api_tokens::PREFIX) {
            return match self.api_token(token) {
                TokenLookup::Found(identity) => Ok(Identity::User(identity)),
                TokenLookup::Expired => Err(AuthFailure::ExpiredToken),
                TokenLookup::NotFound => Err(AuthFailure::InvalidToken),
            };
        }
        let claims = self.signer.verify(token, self.now()).map_err(|e| match e {
            TokenError::Expired => AuthFailure::ExpiredToken,
            TokenError::Invalid => AuthFailure::InvalidToken,
        })?;
        if claims.sub.is_empty() {
            return Ok(Identity::Anonymous);
        }
        // The user must still exist, as the same record: deleting a user ends their tokens.
        let name = UserName::parse(&claims.sub).map_err(|_| AuthFailure::InvalidToken)?;
        match self.user_record(&name) {
            Some(record) if record.id == claims.uid => Ok(Identity::User(record.by_bearer.clone())),
            _ => Err(AuthFailure::InvalidToken),
        }
    }

    fn api_token(&self, secret: &str) -> TokenLookup {
        let hash = api_tokens::hash(secret);
        // Copied out so the two locks are never held together.
        let Some((user, user_id, expired)) =
            read(&self.tokens).get(&hash).map(|t| (t.user.clone(), t.user_id.clone(), t.expired(self.now())))
        else {
            return TokenLookup::NotFound;
        };
        if expired {
            return TokenLookup::Expired;
        }
        match self.user_record(&user) {
            Some(record) if record.id == user_id => TokenLookup::Found(record.by_api_token.clone()),
            _ => TokenLookup::NotFound,
        }
    }

    /// Until when (Unix seconds) the identity that `authorization` authenticated as may be
    /// taken again for the same header without checking it, as long as no user or token
    /// changes (`epoch`): `credential_cache_seconds` from now, as for a verified password,
    /// and no later than the API token or signed token it carries expires. None: check it on
    /// every request (the credential cache is off, or the header is not one that authenticates).
    pub fn trusted_until(&self, authorization: &http::HeaderValue) -> Option<u64> {
        let now = self.now();
        let until = now.saturating_add(self.cache.ttl()?.as_secs());
        let expires = match header::parse(authorization.as_bytes()).ok()? {
            header::Credentials::Anonymous => None,
            header::Credentials::Basic { password, .. } => {
                let secret = std::str::from_utf8(&password).ok().filter(|p| p.starts_with(api_tokens::PREFIX));
                // A password that merely starts like a token is a password (see `basic`).
                secret.and_then(|s| read(&self.tokens).get(&api_tokens::hash(s)).map(|t| t.expires_at)).flatten()
            }
            header::Credentials::Bearer(token) if token.starts_with(api_tokens::PREFIX) => {
                read(&self.tokens).get(&api_tokens::hash(token))?.expires_at
            }
            header::Credentials::Bearer(token) => Some(self.signer.verify(token, now).ok()?.exp),
        };
        Some(expires.map_or(until, |at| at.min(until))).filter(|&at| at > now)
    }

    /// bcrypt runs so far (checks, hashes and decoys).
    pub fn bcrypt_runs(&self) -> u64 {
        self.hasher.runs()
    }

    // ---- signed tokens -----------------------------------------------------------------

    /// A signed token for `identity`, valid for `token_ttl_seconds`, for the distribution token
    /// spec: `iss` binaryrepo, `sub` the user (empty for anonymous), `aud` the service, `exp`,
    /// `nbf`, `iat`, `jti`, and `access` echoing the scopes asked. It proves who the bearer is,
    /// nothing more: permissions are checked per request.
    pub fn issue_token(&self, identity: &Identity, service: &str, scopes: &[Scope]) -> IssuedToken {
        let issued_at = SystemTime::now();
        let now = self.now();
        let ttl = self.token_ttl.as_secs().max(1);
        let (sub, uid) = match identity {
            Identity::Anonymous => (String::new(), String::new()),
            Identity::User(u) => (u.name.to_string(), self.user_record(&u.name).map(|r| r.id.clone()).unwrap_or_default()),
        };
        let jti = files::random_bytes::<16>().map_or_else(|_| format!("{now}-{}", self.next_generation()), |b| URL_SAFE_NO_PAD.encode(b));
        let claims = Claims {
            iss: signed::ISSUER.into(),
            sub,
            aud: service.into(),
            exp: now + ttl,
            nbf: now,
            iat: now,
            jti,
            access: scopes.to_vec(),
            uid,
        };
        IssuedToken { token: self.signer.sign(&claims), expires_in: ttl, issued_at }
    }

    // ---- users -------------------------------------------------------------------------

    /// Every user, by name.
    pub fn users(&self) -> Vec<UserView> {
        let mut all: Vec<UserView> = read(&self.users).effective.values().map(|r| r.view()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    pub fn user(&self, name: &str) -> Option<UserView> {
        let name = UserName::parse(name).ok()?;
        self.user_record(&name).map(|r| r.view())
    }

    fn lock_writer(&self) -> MutexGuard<'_, ()> {
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        // A change starts from what other nodes saved (with a shared store), so it keeps theirs.
        if let Err(e) = self.refresh_locked() {
            tracing::warn!(error = %e, "shared users and tokens not re-read");
        }
        writer
    }

    /// Takes the users and tokens another node saved since this node last read them (with a
    /// shared store; nothing to do otherwise). Blocking.
    pub fn refresh(&self) -> Result<(), files::FileError> {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.refresh_locked()
    }

    fn refresh_locked(&self) -> Result<(), files::FileError> {
        if self.store.changed("users.json")? {
            let stored = self.store.read_json::<UsersFile>("users.json")?.unwrap_or_default().users;
            let mut users = write(&self.users);
            let mut effective = HashMap::new();
            let mut api = BTreeMap::new();
            for u in stored {
                // An unchanged user keeps its record, and so its cached credentials.
                let kept = users
                    .effective
                    .get(&u.name)
                    .filter(|r| r.source == Source::Api && users.api.get(&u.name).is_some_and(|old| same_user(old, &u)))
                    .cloned();
                let record = kept.unwrap_or_else(|| Arc::new(UserRecord::from_api(&u, self.next_generation())));
                effective.insert(u.name.clone(), record);
                api.insert(u.name.clone(), u);
            }
            for f in &self.fixed {
                effective.insert(f.name().clone(), f.clone());
            }
            *users = UsersState { api, effective };
            drop(users);
            self.changed();
        }
        if self.store.changed("tokens.json")? {
            let stored = self.store.read_json::<TokensFile>("tokens.json")?.unwrap_or_default().tokens;
            let mut tokens = HashMap::new();
            for t in stored {
                if let Some(hash) = hex::decode(&t.sha256).ok().and_then(|h| TokenHash::try_from(h.as_slice()).ok()) {
                    tokens.insert(hash, t);
                }
            }
            *write(&self.tokens) = tokens;
            self.changed();
        }
        Ok(())
    }

    /// Hashes a new password (on the blocking pool) or validates a given hash.
    async fn new_hash(&self, password: Option<String>, hash: Option<String>) -> Result<Option<PasswordHash>, UserError> {
        match (password, hash) {
            (Some(_), Some(_)) => Err(UserError::PasswordAndHash),
            (Some(password), None) => {
                password::check_new_password(&password)?;
                Ok(Some(self.hasher.hash(password).await?))
            }
            (None, Some(hash)) => Ok(Some(PasswordHash::parse(&hash)?)),
            (None, None) => Ok(None),
        }
    }

    /// Saves `api` as `users.json`, then makes it current (`changed`: the user whose record
    /// is replaced or removed). Called with the writer lock held.
    fn commit_users(&self, api: BTreeMap<UserName, StoredUser>, changed: &UserName) -> Result<(), UserError> {
        self.store.write_json("users.json", &UsersFile { users: api.values().cloned().collect() })?;
        let record = api.get(changed).map(|u| Arc::new(UserRecord::from_api(u, self.next_generation())));
        let mut users = write(&self.users);
        users.api = api;
        match record {
            Some(r) => users.effective.insert(changed.clone(), r),
            None => users.effective.remove(changed),
        };
        drop(users);
        self.changed();
        Ok(())
    }

    /// The API user `name`, or why it cannot be changed here.
    fn api_user(&self, name: &str) -> Result<(UserName, BTreeMap<UserName, StoredUser>), UserError> {
        let name = UserName::parse(name)?;
        let users = read(&self.users);
        match users.effective.get(&name) {
            None => Err(UserError::NoSuchUser(name.to_string())),
            Some(r) if r.source != Source::Api => Err(UserError::ReadOnly { name, defined_in: r.source.as_str() }),
            Some(_) => Ok((name, users.api.clone())),
        }
    }

    /// Whether removing `name`'s admin rights would leave no admin (and so nobody who can
    /// manage users).
    fn last_admin(&self, name: &UserName) -> bool {
        let users = read(&self.users);
        users.effective.get(name).is_some_and(|r| r.admin()) && !users.effective.values().any(|r| r.admin() && r.name() != name)
    }

    /// Creates a user with a password (at least 8 characters, hashed with bcrypt) or a
    /// bcrypt hash. Saves `users.json` before returning.
    pub async fn create_user(&self, input: NewUser) -> Result<UserView, UserError> {
        let name = UserName::parse(&input.name)?;
        let groups = input.groups.iter().map(|g| GroupName::parse(g)).collect::<Result<Vec<_>, _>>()?;
        if read(&self.users).effective.contains_key(&name) {
            return Err(UserError::Exists(name));
        }
        let hash = self.new_hash(input.password, input.password_hash).await?.ok_or(UserError::NoPassword)?;
        let _writer = self.lock_writer();
        let mut api = {
            let users = read(&self.users);
            if users.effective.contains_key(&name) || users.api.contains_key(&name) {
                return Err(UserError::Exists(name));
            }
            users.api.clone()
        };
        let user = StoredUser {
            name: name.clone(),
            id: random_hex::<16>()?,
            password_hash: hash,
            groups,
            admin: input.admin,
            created_at: self.now(),
        };
        api.insert(name.clone(), user);
        self.commit_users(api, &name)?;
        self.user(name.as_str()).ok_or(UserError::NoSuchUser(name.to_string()))
    }

    /// Changes a user's password, groups or admin flag. Cached credentials and outstanding
    /// signed tokens of the user keep working only if the password stayed the same.
    pub async fn update_user(&self, name: &str, change: UserUpdate) -> Result<UserView, UserError> {
        self.api_user(name)?;
        let groups = match &change.groups {
            Some(g) => Some(g.iter().map(|g| GroupName::parse(g)).collect::<Result<Vec<_>, _>>()?),
            None => None,
        };
        let hash = self.new_hash(change.password, change.password_hash).await?;
        let _writer = self.lock_writer();
        let (name, mut api) = self.api_user(name)?;
        if change.admin == Some(false) && self.last_admin(&name) {
            return Err(UserError::LastAdmin(name));
        }
        let Some(user) = api.get_mut(&name) else { return Err(UserError::NoSuchUser(name.to_string())) };
        if let Some(hash) = hash {
            user.password_hash = hash;
        }
        if let Some(groups) = groups {
            user.groups = groups;
        }
        if let Some(admin) = change.admin {
            user.admin = admin;
        }
        self.commit_users(api, &name)?;
        self.user(name.as_str()).ok_or(UserError::NoSuchUser(name.to_string()))
    }

    /// Deletes a user and their API tokens; their signed tokens stop working at once.
    pub fn delete_user(&self, name: &str) -> Result<(), UserError> {
        let _writer = self.lock_writer();
        let (name, mut api) = self.api_user(name)?;
        if self.last_admin(&name) {
            return Err(UserError::LastAdmin(name));
        }
        api.remove(&name);
        self.commit_users(api, &name)?;
        // Already unusable (their owner is gone); removed so tokens.json does not keep them.
        let mut tokens = read(&self.tokens).clone();
        tokens.retain(|_, t| t.user != name);
        self.commit_tokens(tokens)
    }

    // ---- API tokens --------------------------------------------------------------------

    fn commit_tokens(&self, tokens: HashMap<TokenHash, StoredToken>) -> Result<(), UserError> {
        let mut list: Vec<StoredToken> = tokens.values().cloned().collect();
        list.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        self.store.write_json("tokens.json", &TokensFile { tokens: list })?;
        *write(&self.tokens) = tokens;
        self.changed();
        Ok(())
    }

    /// Creates an API token for `user`; the secret is returned here and never again.
    pub fn create_token(&self, user: &str, name: &str, expires_in_seconds: Option<u64>) -> Result<(TokenView, TokenSecret), UserError> {
        let user = UserName::parse(user)?;
        if !api_tokens::valid_name(name) {
            return Err(UserError::TokenName);
        }
        if expires_in_seconds == Some(0) {
            return Err(UserError::TokenExpiry);
        }
        let _writer = self.lock_writer();
        let record = self.user_record(&user).ok_or_else(|| UserError::NoSuchUser(user.to_string()))?;
        let mut tokens = read(&self.tokens).clone();
        let now = self.now();
        tokens.retain(|_, t| !t.expired(now));
        if tokens.values().filter(|t| t.user == user).count() >= api_tokens::MAX_PER_USER {
            return Err(UserError::TooManyTokens(user));
        }
        let secret = api_tokens::secret_from(&files::random_bytes::<32>()?);
        let hash = api_tokens::hash(secret.expose());
        let stored = StoredToken {
            id: random_hex::<8>()?,
            user,
            user_id: record.id.clone(),
            name: name.into(),
            sha256: hex::encode(hash),
            created_at: now,
            expires_at: expires_in_seconds.map(|s| now.saturating_add(s)),
        };
        let view = stored.view();
        tokens.insert(hash, stored);
        self.commit_tokens(tokens)?;
        Ok((view, secret))
    }

    /// `user`'s tokens, oldest first (expired ones included until they are cleaned up).
    pub fn tokens(&self, user: &str) -> Vec<TokenView> {
        let mut list: Vec<TokenView> = read(&self.tokens).values().filter(|t| t.user.as_str() == user).map(|t| t.view()).collect();
        list.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        list
    }

    /// One token by id (for checking its owner before revoking it).
    pub fn token(&self, id: &str) -> Option<TokenView> {
        read(&self.tokens).values().find(|t| t.id == id).map(|t| t.view())
    }

    /// Revokes a token: it fails from the next request on.
    pub fn revoke_token(&self, id: &str) -> Result<TokenView, UserError> {
        let _writer = self.lock_writer();
        let mut tokens = read(&self.tokens).clone();
        let hash = tokens
            .iter()
            .find(|(_, t)| t.id == id)
            .map(|(h, _)| *h)
            .ok_or_else(|| UserError::NoSuchToken(id.chars().take(64).collect()))?;
        let removed = tokens.remove(&hash).map(|t| t.view());
        self.commit_tokens(tokens)?;
        removed.ok_or_else(|| UserError::NoSuchToken(id.into()))
    }
}

/// Whether two stored versions of a user sign in the same way with the same rights.
fn same_user(a: &StoredUser, b: &StoredUser) -> bool {
    serde_json::to_vec(a).ok() == serde_json::to_vec(b).ok()
}

/// The first admin: the password from the environment, or a generated one logged once (the
/// user is saved before this returns, so later starts never see this branch again).
fn first_admin(hasher: &Hasher, password: Option<String>) -> Result<StoredUser, AuthError> {
    let (password, generated) = match password {
        Some(p) => {
            password::check_new_password(&p).map_err(AuthError::AdminPassword)?;
            (p, false)
        }
        None => (URL_SAFE_NO_PAD.encode(files::random_bytes::<18>()?), true),
    };
    let user = StoredUser {
        name: UserName::first_admin(),
        id: random_hex::<16>()?,
        password_hash: hasher.hash_now(&password)?,
        groups: Vec::new(),
        admin: true,
        created_at: unix_now(),
    };
    if generated {
        tracing::warn!(
            "no users yet: created user {FIRST_ADMIN} with password {password} (shown only this once; change it with the API, \
             or set {ADMIN_PASSWORD_ENV} on a first start)"
        );
    } else {
        tracing::info!("no users yet: created user {FIRST_ADMIN} with the password from {ADMIN_PASSWORD_ENV}");
    }
    Ok(user)
}

#[cfg(test)]
mod tests;
