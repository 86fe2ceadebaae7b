//! Durable per-repository metadata: small values under string keys, scoped by repository name.
//! Plugins own the keys (tag links, media types); the host only scopes and stores them.
//!
//! Two backends: embedded (redb, one file in the data directory: the default, no service to run)
//! and shared (PostgreSQL, `postgres`: several nodes serving the same repositories).
//!
//! With the embedded store, reads are answered from memory when they can: a warm manifest GET by
//! tag reads its tag link on every request, and a redb read transaction costs more than the rest
//! of the look-up. This process is the store's only user (redb locks the file), so every write
//! passes here and drops what it changed from the cache. The shared store has no such cache:
//! other nodes write to it too.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use quick_cache::Weighter;
use quick_cache::sync::Cache;
use redb::{Database, TableDefinition};

use super::postgres::{DatabaseUrl, PgMeta};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Separates the repository from the plugin's key; neither may contain it.
const SEP: char = '\u{0}';

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// Boxed: redb's error is large, and every metadata read returns this type.
    #[error("metadata store: {0}")]
    Store(Box<redb::Error>),
    #[error("metadata key {0:?} contains a NUL byte")]
    BadKey(String),
    /// The store failed a write and is being reopened: retry later.
    #[error("metadata store unavailable: {0}")]
    Unavailable(String),
    /// The shared store (PostgreSQL) refused or failed a statement.
    #[error("shared metadata store: {0}")]
    Postgres(Box<postgres::Error>),
    /// Another node changed a shared document since this one read it: read again and retry.
    #[error("{0} was changed by another node at the same time; retry")]
    Conflict(String),
    /// TLS to the shared store is misconfigured or was refused (start-up). Boxed, as `Store`.
    #[error("shared metadata store: {0}")]
    Tls(Box<super::postgres_tls::PgTlsError>),
    /// The first connection to the shared store failed (start-up), with its causes.
    #[error("shared metadata store: cannot connect: {0}")]
    Connect(String),
    /// No connection to the shared store could be had in time.
    #[error("shared metadata store: no connection: {0}")]
    Pool(r2d2::Error),
}

impl From<super::postgres_tls::PgTlsError> for MetaError {
    fn from(e: super::postgres_tls::PgTlsError) -> MetaError {
        MetaError::Tls(Box::new(e))
    }
}

impl MetaError {
    /// The store itself failed (not the caller's key): counts against readiness.
    fn is_store_failure(&self) -> bool {
        matches!(self, MetaError::Store(_) | MetaError::Postgres(_) | MetaError::Pool(_))
    }
}

fn db_err<E: Into<redb::Error>>(e: E) -> MetaError {
    MetaError::Store(Box::new(e.into()))
}

impl From<redb::Error> for MetaError {
    fn from(e: redb::Error) -> MetaError {
        db_err(e)
    }
}

/// Values up to this size are cached (tag links and media types are ~200 bytes).
const CACHE_ENTRY_MAX: usize = 16 * 1024;
/// Bytes cached in all.
const CACHE_TOTAL: u64 = 4 << 20;

#[derive(Clone)]
struct ByLength;

impl Weighter<String, Option<Vec<u8>>> for ByLength {
    fn weight(&self, key: &String, value: &Option<Vec<u8>>) -> u64 {
        (key.len() + value.as_ref().map_or(0, Vec::len) + 64) as u64
    }
}

/// Recently read values, absent ones included (blob links are looked up before they are written).
struct ReadCache {
    values: Cache<String, Option<Vec<u8>>, ByLength>,
    /// Counts writes. A reader caches what it read only if no write ran since it started reading,
    /// checked under this lock, which writers hold while they drop their key: so a value read
    /// before a write committed is either never cached or dropped by that write.
    writes: Mutex<u64>,
}

impl ReadCache {
    fn writes(&self) -> u64 {
        *self.writes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert_if_unchanged(&self, key: String, value: &Option<Vec<u8>>, seen: u64) {
        if value.as_ref().is_some_and(|v| v.len() > CACHE_ENTRY_MAX) {
            return;
        }
        let writes = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        if *writes == seen {
            self.values.insert(key, value.clone());
        }
    }

    /// Call after a write to `key` committed (None: after removing many keys).
    fn written(&self, key: Option<&str>) {
        let mut writes = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        *writes += 1;
        match key {
            Some(k) => {
                self.values.remove(k);
            }
            None => self.values.clear(),
        }
    }
}

/// A counter per repository that every write to its metadata advances once committed, so that
/// what was decided from that metadata (a plugin's reusable plan) can tell it is out of date.
pub type Generation = Arc<AtomicU64>;

type Opener = Box<dyn Fn() -> Result<Database, Box<redb::Error>> + Send + Sync>;

/// The open database, and how to open it again. redb latches the first I/O error of a commit (a
/// full disk) and refuses every later write until the database is reopened, which needs the old
/// handle gone first (redb locks the file): so the handle is swapped here, and a failed write
/// marks the store failed until `recover` succeeds.
struct Handle {
    current: RwLock<Option<Arc<Database>>>,
    open: Opener,
}

/// Where the metadata lives.
enum Backend {
    Embedded(Handle),
    Shared(PgMeta),
}

/// How long a node may keep acting on what it derived from a repository's metadata after
/// another node wrote it (the shared store's generation poll).
pub const SHARED_CHECK_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Clone)]
pub struct MetaStore {
    backend: Arc<Backend>,
    /// Why the last write failed, while the store has not taken a write since.
    failed: Arc<Mutex<Option<String>>>,
    cache: Arc<ReadCache>,
    generations: Arc<RwLock<HashMap<String, Generation>>>,
}

/// The host's own key (no repository may be named "api"): probe writes go there.
const PROBE: (&str, &str) = ("api", "ready");

impl MetaStore {
    /// Opens (or creates) the store at `path`. Commits use redb's default durability
    /// (`Immediate`: synced before `commit` returns), so an acknowledged tag survives a crash.
    pub fn open(path: &Path) -> Result<MetaStore, MetaError> {
        let path = path.to_owned();
        Self::open_with(Box::new(move || Database::create(&path).map_err(|e| Box::new(e.into()))))
    }

    fn open_with(open: Opener) -> Result<MetaStore, MetaError> {
        let db = open().map_err(MetaError::Store)?;
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(META).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        let values = Cache::with_weighter((CACHE_TOTAL / 512) as usize, CACHE_TOTAL, ByLength);
        let cache = Arc::new(ReadCache { values, writes: Mutex::new(0) });
        let handle = Handle { current: RwLock::new(Some(Arc::new(db))), open };
        Ok(MetaStore::with_backend(Backend::Embedded(handle), cache))
    }

    fn with_backend(backend: Backend, cache: Arc<ReadCache>) -> MetaStore {
        MetaStore { backend: Arc::new(backend), failed: Default::default(), cache, generations: Default::default() }
    }

    /// Connects to the shared store (PostgreSQL) with at most `connections` connections, and
    /// starts following the writes of other nodes. Blocking.
    pub fn connect(url: &DatabaseUrl, connections: u32) -> Result<MetaStore, MetaError> {
        let pg = PgMeta::connect(url, connections)?;
        let cache = Arc::new(ReadCache { values: Cache::with_weighter(1, 1, ByLength), writes: Mutex::new(0) });
        let store = MetaStore::with_backend(Backend::Shared(pg), cache);
        store.follow_other_nodes();
        Ok(store)
    }

    /// The shared store, when this is one.
    pub fn shared(&self) -> Option<&PgMeta> {
        match &*self.backend {
            Backend::Shared(pg) => Some(pg),
            Backend::Embedded(_) => None,
        }
    }

    /// Polls the shared store's write counters and advances ours for what other nodes wrote,
    /// so that plans reused from a repository's metadata expire within `SHARED_CHECK_WINDOW`.
    /// The thread ends with the store.
    fn follow_other_nodes(&self) {
        let backend = Arc::downgrade(&self.backend);
        let generations = Arc::downgrade(&self.generations);
        let spawned = std::thread::Builder::new().name("meta-generations".into()).spawn(move || {
            let mut seen: HashMap<String, i64> = HashMap::new();
            loop {
                std::thread::sleep(SHARED_CHECK_WINDOW);
                let (Some(backend), Some(generations)) = (backend.upgrade(), generations.upgrade()) else { return };
                let Backend::Shared(pg) = &*backend else { return };
                match pg.generations() {
                    Ok(now) => {
                        let local = generations.read().unwrap_or_else(|p| p.into_inner());
                        for (repo, n) in &now {
                            if seen.get(repo) != Some(n)
                                && let Some(g) = local.get(repo)
                            {
                                g.fetch_add(1, Ordering::Release);
                            }
                        }
                        drop(local);
                        seen = now;
                    }
                    Err(e) => tracing::warn!(error = %e, "shared metadata: write counters not read"),
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "shared metadata: cannot follow other nodes' writes");
        }
    }

    fn db(&self) -> Result<Arc<Database>, MetaError> {
        match &*self.backend {
            Backend::Embedded(h) => {
                h.current.read().unwrap_or_else(|p| p.into_inner()).clone().ok_or_else(|| MetaError::Unavailable("being reopened".into()))
            }
            Backend::Shared(_) => Err(MetaError::Unavailable("no embedded database with a shared metadata store".into())),
        }
    }

    /// Why the store does not take writes, while it does not.
    pub fn failing(&self) -> Option<String> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether a point read may run on an async thread: the embedded store answers from memory
    /// or its page cache; the shared one goes over the network.
    pub fn reads_inline(&self) -> bool {
        matches!(&*self.backend, Backend::Embedded(_))
    }

    /// Records the outcome of a write: a failure marks the store failed (for readiness, and for
    /// `recover`), a success clears that.
    fn outcome<T>(&self, result: Result<T, MetaError>) -> Result<T, MetaError> {
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        match &result {
            Ok(_) => *failed = None,
            Err(e) if e.is_store_failure() => {
                if failed.is_none() {
                    tracing::error!(error = %e, "metadata store write failed; it is reopened until writes work again");
                }
                *failed = Some(e.to_string());
            }
            Err(_) => {}
        }
        result
    }

    /// Makes a failed store take writes again: a probe write on the open database (the error
    /// may have been transient), else the database is closed and opened again, which also
    /// repairs it. True when writes work. Blocking; called by the health watch.
    pub fn recover(&self) -> bool {
        let handle = match &*self.backend {
            Backend::Embedded(h) => h,
            Backend::Shared(pg) => {
                let ok = pg.probe().is_ok();
                if ok {
                    *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = None;
                }
                return ok;
            }
        };
        if let Ok(db) = self.db()
            && Self::probe(&db).is_ok()
        {
            *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = None;
            return true;
        }
        let mut slot = handle.current.write().unwrap_or_else(|p| p.into_inner());
        if let Some(db) = slot.take() {
            match Arc::try_unwrap(db) {
                Ok(db) => drop(db),
                // A reader still holds it (briefly): put it back, try again next time.
                Err(db) => {
                    *slot = Some(db);
                    return false;
                }
            }
        }
        let reopened = (handle.open)().map_err(MetaError::Store).and_then(|db| Self::probe(&db).map(|()| db));
        let ok = match reopened {
            Ok(db) => {
                *slot = Some(Arc::new(db));
                tracing::info!("metadata store reopened: writes are accepted");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "metadata store could not be reopened yet");
                false
            }
        };
        drop(slot);
        // What was cached may predate a commit whose outcome was unknown.
        self.cache.written(None);
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        if ok {
            *failed = None;
        }
        ok
    }

    fn probe(db: &Database) -> Result<(), MetaError> {
        let k = Self::key(PROBE.0, PROBE.1)?;
        let txn = db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(META).map_err(db_err)?;
            table.insert(k.as_str(), &b"1"[..]).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    /// The database, for host records kept in their own tables (`access`). Take it for each
    /// transaction: a failed write reopens it.
    pub fn database(&self) -> Result<Arc<Database>, MetaError> {
        self.db()
    }

    /// The write counter of `repo`'s metadata (one per name, created on first use).
    pub fn generation(&self, repo: &str) -> Generation {
        if let Some(g) = self.generations.read().unwrap_or_else(|p| p.into_inner()).get(repo) {
            return g.clone();
        }
        self.generations.write().unwrap_or_else(|p| p.into_inner()).entry(repo.to_owned()).or_default().clone()
    }

    /// After a write committed (or failed to, which may have landed): never before, or a reader
    /// could note the new count and still have read the old value.
    fn advance(&self, repo: &str) {
        if let Some(g) = self.generations.read().unwrap_or_else(|p| p.into_inner()).get(repo) {
            g.fetch_add(1, Ordering::Release);
        }
    }

    fn key(repo: &str, key: &str) -> Result<String, MetaError> {
        if key.contains(SEP) || repo.contains(SEP) {
            return Err(MetaError::BadKey(key.to_owned()));
        }
        // Built by hand: once per plugin metadata call, where `format!` cost ~1.4k instructions.
        let mut k = String::with_capacity(repo.len() + 1 + key.len());
        k.push_str(repo);
        k.push(SEP);
        k.push_str(key);
        Ok(k)
    }

    pub fn get(&self, repo: &str, key: &str) -> Result<Option<Vec<u8>>, MetaError> {
        let k = Self::key(repo, key)?;
        if let Some(pg) = self.shared() {
            return pg.get(repo, key);
        }
        if let Some(v) = self.cache.values.get(k.as_str()) {
            return Ok(v);
        }
        let seen = self.cache.writes();
        let txn = self.db()?.begin_read().map_err(db_err)?;
        let table = txn.open_table(META).map_err(db_err)?;
        let value = table.get(k.as_str()).map_err(db_err)?.map(|v| v.value().to_vec());
        self.cache.insert_if_unchanged(k, &value, seen);
        Ok(value)
    }

    pub fn put(&self, repo: &str, key: &str, value: &[u8]) -> Result<(), MetaError> {
        let k = Self::key(repo, key)?;
        if let Some(pg) = self.shared() {
            let committed = pg.put(repo, key, value);
            self.advance(repo);
            return self.outcome(committed);
        }
        let committed = self.db().and_then(|db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut table = txn.open_table(META).map_err(db_err)?;
                table.insert(k.as_str(), value).map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        });
        // Dropped even after a failed commit: whether it landed is not known.
        self.cache.written(Some(&k));
        self.advance(repo);
        self.outcome(committed)
    }

    pub fn delete(&self, repo: &str, key: &str) -> Result<(), MetaError> {
        let k = Self::key(repo, key)?;
        if let Some(pg) = self.shared() {
            let committed = pg.delete(repo, key);
            self.advance(repo);
            return self.outcome(committed);
        }
        let committed = self.db().and_then(|db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut table = txn.open_table(META).map_err(db_err)?;
                table.remove(k.as_str()).map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        });
        self.cache.written(Some(&k));
        self.advance(repo);
        self.outcome(committed)
    }

    /// The repository's keys starting with `prefix`, in lexical order.
    pub fn list(&self, repo: &str, prefix: &str) -> Result<Vec<String>, MetaError> {
        let start = Self::key(repo, prefix)?;
        if let Some(pg) = self.shared() {
            return pg.list(repo, prefix);
        }
        let txn = self.db()?.begin_read().map_err(db_err)?;
        let table = txn.open_table(META).map_err(db_err)?;
        let skip = repo.len() + SEP.len_utf8();
        let mut out = Vec::new();
        for entry in table.range(start.as_str()..).map_err(db_err)? {
            let (k, _) = entry.map_err(db_err)?;
            let k = k.value();
            if !k.starts_with(start.as_str()) {
                break;
            }
            out.push(k[skip..].to_owned());
        }
        Ok(out)
    }

    /// One page of the repository's keys starting with `prefix`, in lexical (byte) order: those
    /// after `start_after` when given, at most `limit`. A range scan that reads only the keys it
    /// returns, however many the repository holds.
    pub fn list_page(&self, repo: &str, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<Vec<String>, MetaError> {
        let start = Self::key(repo, prefix)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        // A `start_after` below the prefix starts the page at the prefix.
        let after = start_after.filter(|a| *a >= prefix);
        if let Some(pg) = self.shared() {
            return pg.list_page(repo, prefix, after, limit);
        }
        let after = after.map(|a| Self::key(repo, a)).transpose()?;
        let txn = self.db()?.begin_read().map_err(db_err)?;
        let table = txn.open_table(META).map_err(db_err)?;
        let lower = match &after {
            Some(a) => std::ops::Bound::Excluded(a.as_str()),
            None => std::ops::Bound::Included(start.as_str()),
        };
        let skip = repo.len() + SEP.len_utf8();
        let mut out = Vec::with_capacity(limit.min(1024));
        for entry in table.range::<&str>((lower, std::ops::Bound::Unbounded)).map_err(db_err)? {
            let (k, _) = entry.map_err(db_err)?;
            let k = k.value();
            if !k.starts_with(start.as_str()) {
                break;
            }
            out.push(k[skip..].to_owned());
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    /// Removes everything a repository stored (the repository was deleted).
    pub fn delete_repository(&self, repo: &str) -> Result<(), MetaError> {
        Self::key(repo, "")?;
        if let Some(pg) = self.shared() {
            let committed = pg.delete_repository(repo);
            self.advance(repo);
            return self.outcome(committed);
        }
        let keys = self.list(repo, "")?;
        let committed = self.db().and_then(|db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut table = txn.open_table(META).map_err(db_err)?;
                for key in keys {
                    let k = Self::key(repo, &key)?;
                    table.remove(k.as_str()).map_err(db_err)?;
                }
            }
            txn.commit().map_err(db_err)
        });
        self.cache.written(None);
        self.advance(repo);
        self.outcome(committed)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The PostgreSQL server the shared store's half of the conformance tests runs against
    /// (`tests/postgres.sh run cargo test …` starts one); without it those halves are skipped.
    pub(crate) fn postgres_url() -> Option<DatabaseUrl> {
        match std::env::var("BINARYREPO_TEST_POSTGRES_URL") {
            Ok(url) if !url.is_empty() => Some(DatabaseUrl::new(url)),
            _ => {
                eprintln!("BINARYREPO_TEST_POSTGRES_URL not set: the PostgreSQL backend is not tested");
                None
            }
        }
    }

    /// Every backend, each with repository names of its own (the shared database outlives a
    /// test and serves tests running at once): `name("a")` is this run's repository "a".
    fn backends() -> Vec<(MetaStore, String, Option<tempfile::TempDir>)> {
        let dir = tempfile::tempdir().unwrap();
        let mut out = vec![(MetaStore::open(&dir.path().join("m.redb")).unwrap(), String::new(), Some(dir))];
        if let Some(url) = postgres_url() {
            out.push((MetaStore::connect(&url, 4).unwrap(), format!("t{}-", uuid::Uuid::new_v4().simple()), None));
        }
        out
    }

    #[test]
    fn scoped_by_repository() {
        for (m, p, _dir) in backends() {
            let (a, ab) = (format!("{p}a"), format!("{p}ab"));
            m.put(&a, "tag/x:1", b"one").unwrap();
            m.put(&a, "tag/x:2", b"two").unwrap();
            m.put(&a, "tag/y", b"").unwrap();
            m.put(&ab, "tag/x:3", b"three").unwrap();
            assert_eq!(m.get(&a, "tag/x:1").unwrap().as_deref(), Some(&b"one"[..]));
            assert_eq!(m.get(&a, "tag/y").unwrap().as_deref(), Some(&b""[..]), "an empty value is not an absent one");
            assert_eq!(m.get(&ab, "tag/x:1").unwrap(), None);
            assert_eq!(m.list(&a, "tag/x").unwrap(), vec!["tag/x:1", "tag/x:2"]);
            m.delete(&a, "tag/x:1").unwrap();
            m.delete(&a, "tag/never").unwrap();
            assert_eq!(m.list(&a, "").unwrap(), vec!["tag/x:2", "tag/y"]);
            m.delete_repository(&a).unwrap();
            assert!(m.list(&a, "").unwrap().is_empty());
            assert_eq!(m.list(&ab, "").unwrap().len(), 1);
            assert!(matches!(m.put(&a, "bad\0key", b""), Err(MetaError::BadKey(_))));
            assert!(m.failing().is_none(), "a caller's bad key is not a store failure");
        }
    }

    #[test]
    fn keys_list_in_byte_order_and_prefixes_are_literal() {
        for (m, p, _dir) in backends() {
            let r = format!("{p}r");
            for k in ["b", "a/2", "a/10", "A", "a%", "a_", "é", "a/1"] {
                m.put(&r, k, k.as_bytes()).unwrap();
            }
            assert_eq!(m.list(&r, "").unwrap(), vec!["A", "a%", "a/1", "a/10", "a/2", "a_", "b", "é"]);
            // LIKE's wildcards mean nothing in a prefix
            assert_eq!(m.list(&r, "a%").unwrap(), vec!["a%"]);
            assert_eq!(m.list(&r, "a_").unwrap(), vec!["a_"]);
            assert_eq!(m.list(&r, "a/1").unwrap(), vec!["a/1", "a/10"]);
            let big = vec![7u8; 1024 * 1024];
            m.put(&r, "big", &big).unwrap();
            assert_eq!(m.get(&r, "big").unwrap().as_deref(), Some(&big[..]));
            m.delete_repository(&r).unwrap();
        }
    }

    #[test]
    fn pages_walk_every_key_once_in_order() {
        for (m, p, _dir) in backends() {
            let (r, rb) = (format!("{p}r"), format!("{p}r\u{1}"));
            let mut keys: Vec<String> = (0..250).map(|i| format!("tag/app:{i}")).collect();
            keys.extend(["tag/app/web:1", "tag/app:\u{10FFFF}", "tag/ap:1", "tag/apq:1", "tag/app;x", "image/app", "u"].map(String::from));
            for k in &keys {
                m.put(&r, k, b"{}").unwrap();
            }
            // a neighbouring repository's keys never show through the range
            m.put(&rb, "tag/app:zz", b"{}").unwrap();
            let mut want: Vec<String> = keys.iter().filter(|k| k.starts_with("tag/app:")).cloned().collect();
            want.sort();
            let mut seen = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let page = m.list_page(&r, "tag/app:", after.as_deref(), 7).unwrap();
                assert!(page.len() <= 7);
                seen.extend(page.iter().cloned());
                if page.len() < 7 {
                    break;
                }
                after = page.last().cloned();
            }
            assert_eq!(seen, want, "every key under the prefix exactly once, in byte order");
            assert_eq!(m.list_page(&r, "tag/app:", Some("tag/app:5"), 3).unwrap(), vec!["tag/app:50", "tag/app:51", "tag/app:52"]);
            assert_eq!(
                m.list_page(&r, "tag/app:", Some("a"), 1).unwrap(),
                vec!["tag/app:0"],
                "an earlier start-after starts at the prefix"
            );
            assert!(m.list_page(&r, "tag/app:", Some("tag/app;"), 5).unwrap().is_empty(), "past the prefix: nothing");
            assert!(m.list_page(&r, "tag/app:", None, 0).unwrap().is_empty());
            assert_eq!(m.list_page(&r, "", Some("tag/app;x"), 5).unwrap(), vec!["tag/apq:1", "u"]);
            assert_eq!(m.list_page(&r, "tag/", None, 2).unwrap(), vec!["tag/ap:1", "tag/app/web:1"]);
            assert_eq!(m.list_page(&r, "tag/app:\u{10FFFF}", None, 2).unwrap(), vec!["tag/app:\u{10FFFF}"]);
            assert!(m.list_page(&r, "bad\0", None, 2).is_err());
            m.delete_repository(&r).unwrap();
            m.delete_repository(&rb).unwrap();
        }
    }

    #[test]
    fn cached_reads_follow_writes() {
        for (m, p, _dir) in backends() {
            let a = format!("{p}a");
            assert_eq!(m.get(&a, "tag/x:1").unwrap(), None);
            m.put(&a, "tag/x:1", b"one").unwrap();
            assert_eq!(m.get(&a, "tag/x:1").unwrap().as_deref(), Some(&b"one"[..]));
            m.put(&a, "tag/x:1", b"two").unwrap();
            assert_eq!(m.get(&a, "tag/x:1").unwrap().as_deref(), Some(&b"two"[..]));
            m.delete(&a, "tag/x:1").unwrap();
            assert_eq!(m.get(&a, "tag/x:1").unwrap(), None);
            m.put(&a, "tag/x:2", b"three").unwrap();
            assert!(m.get(&a, "tag/x:2").unwrap().is_some());
            m.delete_repository(&a).unwrap();
            assert_eq!(m.get(&a, "tag/x:2").unwrap(), None);
        }
    }

    #[test]
    fn every_write_advances_the_generation() {
        for (m, p, _dir) in backends() {
            let a = format!("{p}a");
            let g = m.generation(&a);
            let other = m.generation(&format!("{p}b"));
            let at = |g: &Generation| g.load(Ordering::Acquire);
            let (g0, o0) = (at(&g), at(&other));
            m.put(&a, "k", b"v").unwrap();
            assert!(at(&g) > g0);
            let g1 = at(&g);
            m.delete(&a, "k").unwrap();
            assert!(at(&g) > g1);
            let g2 = at(&g);
            m.delete_repository(&a).unwrap();
            assert!(at(&g) > g2);
            m.get(&a, "k").unwrap();
            m.list(&a, "").unwrap();
            assert_eq!(at(&other), o0, "another repository's counter stays");
            assert!(m.recover(), "a working store probes fine");
        }
    }

    /// Two nodes on one shared store: a write through one is what the other reads next, and its
    /// counter advances within the check window, so plans reused there expire.
    #[test]
    fn shared_store_nodes_see_each_others_writes() {
        let Some(url) = postgres_url() else { return };
        let (a, b) = (MetaStore::connect(&url, 2).unwrap(), MetaStore::connect(&url, 2).unwrap());
        let repo = format!("t{}-r", uuid::Uuid::new_v4().simple());
        let on_b = b.generation(&repo);
        let before = on_b.load(Ordering::Acquire);
        a.put(&repo, "tag/latest", b"sha256:1").unwrap();
        assert_eq!(b.get(&repo, "tag/latest").unwrap().as_deref(), Some(&b"sha256:1"[..]));
        a.put(&repo, "tag/latest", b"sha256:2").unwrap();
        assert_eq!(b.get(&repo, "tag/latest").unwrap().as_deref(), Some(&b"sha256:2"[..]), "a moved tag is never stale");
        let deadline = std::time::Instant::now() + SHARED_CHECK_WINDOW * 4;
        while on_b.load(Ordering::Acquire) == before {
            assert!(std::time::Instant::now() < deadline, "node B's counter did not follow node A's write");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        a.delete_repository(&repo).unwrap();
        assert!(b.list(&repo, "").unwrap().is_empty());
    }

    #[test]
    fn an_unreachable_shared_store_is_a_start_error_not_a_hang() {
        let started = std::time::Instant::now();
        let url = DatabaseUrl::new("postgresql://nobody@127.0.0.1:9/none?connect_timeout=1".into());
        assert!(MetaStore::connect(&url, 1).is_err());
        assert!(started.elapsed() < std::time::Duration::from_secs(15));
    }

    /// A file backend whose writes and syncs fail while `fail` is set, as on a full disk.
    #[derive(Debug)]
    struct Flaky {
        inner: redb::backends::FileBackend,
        fail: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Flaky {
        fn check(&self) -> std::io::Result<()> {
            if self.fail.load(Ordering::SeqCst) { Err(std::io::Error::from_raw_os_error(libc::ENOSPC)) } else { Ok(()) }
        }
    }

    impl redb::StorageBackend for Flaky {
        fn len(&self) -> std::io::Result<u64> {
            self.inner.len()
        }
        fn read(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
            self.inner.read(offset, len)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.check()?;
            self.inner.set_len(len)
        }
        fn sync_data(&self, eventual: bool) -> std::io::Result<()> {
            self.check()?;
            self.inner.sync_data(eventual)
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.check()?;
            self.inner.write(offset, data)
        }
    }

    #[test]
    fn a_failed_write_is_recovered_by_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.redb");
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = fail.clone();
        let m = MetaStore::open_with(Box::new(move || {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| Box::new(redb::Error::Io(e)))?;
            let inner = redb::backends::FileBackend::new(file).map_err(|e| Box::new(redb::Error::from(e)))?;
            Database::builder().create_with_backend(Flaky { inner, fail: f.clone() }).map_err(|e| Box::new(e.into()))
        }))
        .unwrap();
        m.put("a", "tag/x:1", b"one").unwrap();
        fail.store(true, Ordering::SeqCst);
        assert!(m.put("a", "tag/x:2", b"two").is_err());
        assert!(m.failing().is_some(), "a failed write marks the store failed");
        fail.store(false, Ordering::SeqCst);
        // redb latched the error: writes keep failing although the disk is fine again...
        assert!(m.put("a", "tag/x:3", b"three").is_err());
        // ...until the store is reopened
        assert!(m.recover());
        assert!(m.failing().is_none());
        m.put("a", "tag/x:4", b"four").unwrap();
        assert_eq!(m.get("a", "tag/x:1").unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(m.get("a", "tag/x:4").unwrap().as_deref(), Some(&b"four"[..]));
    }
}
