//! The shared metadata store for several nodes: PostgreSQL (`[metadata] backend = "postgres"`).
//!
//! Holds what the embedded store (redb) holds on one machine — per-repository keys, blob access
//! times — plus the documents a single node keeps as files in its data directory (repository
//! definitions, users, tokens, the token-signing key), so that every node behind a load balancer
//! serves the same repositories to the same users.
//!
//! Nothing is cached in memory here: a read is a query, so a tag moved through one node is what
//! every node reads next. Each write also advances the repository's row in `generations` in the
//! same transaction; nodes poll that table to expire what they derived from metadata (reused
//! plans), which bounds how long a node may act on an old value to the poll interval.

use std::collections::HashMap;
use std::time::Duration;

use r2d2_postgres::PostgresConnectionManager;

use super::meta::MetaError;
use super::postgres_tls::{self, PgTls};

type Pool = r2d2::Pool<PostgresConnectionManager<PgTls>>;

/// How long a caller waits for a free connection before the store counts as failing.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(5);

/// Serialises schema creation between nodes that start at once (`CREATE TABLE IF NOT EXISTS`
/// races on the catalog otherwise). Any constant: it names this lock among the server's.
const SCHEMA_LOCK: i64 = 0x6269_6e72_6570_6f01;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS binaryrepo_meta (
    repo  text COLLATE "C" NOT NULL,
    key   text COLLATE "C" NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (repo, key)
);
CREATE TABLE IF NOT EXISTS binaryrepo_generations (
    repo text COLLATE "C" PRIMARY KEY,
    n    bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS binaryrepo_access (
    repo   text COLLATE "C" NOT NULL,
    digest text COLLATE "C" NOT NULL,
    at     bigint NOT NULL,
    PRIMARY KEY (repo, digest)
);
CREATE TABLE IF NOT EXISTS binaryrepo_uploads (
    repo    text COLLATE "C" NOT NULL,
    id      text COLLATE "C" NOT NULL,
    size    bigint NOT NULL,
    state   bytea NOT NULL,
    chunks  text[] NOT NULL,
    touched bigint NOT NULL,
    PRIMARY KEY (repo, id)
);
CREATE TABLE IF NOT EXISTS binaryrepo_touches (
    digest text COLLATE "C" PRIMARY KEY,
    at     bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS binaryrepo_documents (
    name    text PRIMARY KEY,
    body    bytea NOT NULL,
    version bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS binaryrepo_nodes (
    id   text PRIMARY KEY,
    seen timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS binaryrepo_collections (
    id      text PRIMARY KEY,
    node    text NOT NULL,
    started timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS binaryrepo_collection_acks (
    run  text NOT NULL,
    node text NOT NULL,
    PRIMARY KEY (run, node)
);
CREATE TABLE IF NOT EXISTS binaryrepo_collection_refs (
    run    text NOT NULL,
    digest text COLLATE "C" NOT NULL,
    PRIMARY KEY (run, digest)
);
"#;

const BUMP: &str =
    "INSERT INTO binaryrepo_generations (repo, n) VALUES ($1, 1) ON CONFLICT (repo) DO UPDATE SET n = binaryrepo_generations.n + 1";

/// Serialises the starts of upload sessions between nodes, so the limits hold across them.
const UPLOAD_START_LOCK: i64 = 0x6269_6e72_6570_6f02;

/// An upload session as the shared store keeps it (see `storage::shared_uploads`).
pub struct UploadRow {
    pub size: u64,
    /// The saved SHA-256 state of the session's bytes.
    pub state: Vec<u8>,
    /// The keys of its chunk objects, in order.
    pub chunks: Vec<String>,
}

fn secs(now: std::time::SystemTime) -> i64 {
    now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn count(n: i64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// The connection URL, kept out of `Debug` output: it usually holds a password.
#[derive(Clone)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn new(url: String) -> DatabaseUrl {
        DatabaseUrl(url)
    }
}

#[cfg(test)]
impl DatabaseUrl {
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatabaseUrl(…)")
    }
}

/// Runs a blocking client call where it may block: the client drives its connection on a
/// runtime of its own, which tokio forbids inside another's threads, and a metadata call can
/// come from an async task (start-up, a cheap read). Outside a runtime (tests, the blocking
/// pool's threads, when there is no handle) the call just runs.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        Ok(_) => std::thread::scope(|s| s.spawn(f).join()).unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
        Err(_) => f(),
    }
}

/// The least string above every string that starts with `prefix` (byte order, which is code
/// point order in UTF-8): the prefix with its last character advanced, dropping characters that
/// cannot be. None when nothing is above (an empty prefix, or one of only U+10FFFF).
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        // the next scalar value, stepping over the surrogates
        let next = match last {
            '\u{D7FF}' => Some('\u{E000}'),
            c => char::from_u32(u32::from(c) + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// An error with its causes: the client library's own text is only its kind ("db error").
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

fn pg(e: postgres::Error) -> MetaError {
    MetaError::Postgres(Box::new(e))
}

pub struct PgMeta {
    /// Some until the store is dropped (see `Drop`).
    pool: Option<Pool>,
}

impl Drop for PgMeta {
    /// Closing the pooled connections shuts their clients' own runtimes down, which tokio refuses
    /// on one of its threads: a node stopping on SIGTERM would panic here.
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            off_runtime(move || drop(pool));
        }
    }
}

impl PgMeta {
    /// Connects (at most `connections` at once) and creates the tables that are missing.
    /// TLS as the connection string's libpq options say (see `postgres_tls`). Blocking.
    pub fn connect(url: &DatabaseUrl, connections: u32) -> Result<PgMeta, MetaError> {
        let (conn, tls) = postgres_tls::split(&url.0)?;
        let mut config: postgres::Config = conn.parse().map_err(pg)?;
        tls.apply(&mut config);
        let connector = tls.connector()?;
        // One connection first, outside the pool: its error says at once what is wrong (the
        // pool would retry for CHECKOUT_TIMEOUT and keep only the last error's text). It also
        // creates the schema. Dropped where it may shut its runtime down (see `Drop`).
        off_runtime(|| -> Result<(), MetaError> {
            let mut first = config.connect(connector.clone()).map_err(|e| match tls.explain(&e, &config) {
                Some(tls) => MetaError::from(tls),
                None => MetaError::Connect(chain(&e)),
            })?;
            let mut txn = first.transaction().map_err(pg)?;
            txn.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK]).map_err(pg)?;
            txn.batch_execute(SCHEMA).map_err(pg)?;
            txn.commit().map_err(pg)
        })?;
        let manager = PostgresConnectionManager::new(config, connector);
        let pool = r2d2::Pool::builder()
            .max_size(connections.max(1))
            .min_idle(Some(1))
            .connection_timeout(CHECKOUT_TIMEOUT)
            // No round trip per checkout: a connection the server closed reports itself broken
            // when it fails, and the pool replaces it.
            .test_on_check_out(false)
            .build(manager)
            .map_err(MetaError::Pool)?;
        Ok(PgMeta { pool: Some(pool) })
    }

    fn conn(&self) -> Result<r2d2::PooledConnection<PostgresConnectionManager<PgTls>>, MetaError> {
        let pool = self.pool.as_ref().ok_or_else(|| MetaError::Unavailable("the shared metadata store is closed".into()))?;
        pool.get().map_err(MetaError::Pool)
    }

    pub fn get(&self, repo: &str, key: &str) -> Result<Option<Vec<u8>>, MetaError> {
        off_runtime(|| {
            let row =
                self.conn()?.query_opt("SELECT value FROM binaryrepo_meta WHERE repo = $1 AND key = $2", &[&repo, &key]).map_err(pg)?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    pub fn put(&self, repo: &str, key: &str, value: &[u8]) -> Result<(), MetaError> {
        off_runtime(|| {
            let mut c = self.conn()?;
            let mut txn = c.transaction().map_err(pg)?;
            txn.execute(
                "INSERT INTO binaryrepo_meta (repo, key, value) VALUES ($1, $2, $3) ON CONFLICT (repo, key) DO UPDATE SET value = excluded.value",
                &[&repo, &key, &value],
            )
            .map_err(pg)?;
            txn.execute(BUMP, &[&repo]).map_err(pg)?;
            txn.commit().map_err(pg)
        })
    }

    pub fn delete(&self, repo: &str, key: &str) -> Result<(), MetaError> {
        off_runtime(|| {
            let mut c = self.conn()?;
            let mut txn = c.transaction().map_err(pg)?;
            txn.execute("DELETE FROM binaryrepo_meta WHERE repo = $1 AND key = $2", &[&repo, &key]).map_err(pg)?;
            txn.execute(BUMP, &[&repo]).map_err(pg)?;
            txn.commit().map_err(pg)
        })
    }

    /// Keys of `repo` starting with `prefix`, in byte order (the columns collate as "C").
    pub fn list(&self, repo: &str, prefix: &str) -> Result<Vec<String>, MetaError> {
        off_runtime(|| {
            let rows = self
                .conn()?
                .query("SELECT key FROM binaryrepo_meta WHERE repo = $1 AND starts_with(key, $2) ORDER BY key", &[&repo, &prefix])
                .map_err(pg)?;
            Ok(rows.into_iter().map(|r| r.get(0)).collect())
        })
    }

    /// One page of the keys of `repo` under `prefix` after `start_after` (at or above the
    /// prefix), in byte order. Both bounds are on the primary key's `key` column, so the page is
    /// one index range scan that stops after `limit` rows.
    pub fn list_page(&self, repo: &str, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<Vec<String>, MetaError> {
        let upper = prefix_end(prefix);
        let (lower_op, lower) = match start_after {
            Some(a) => (">", a),
            None => (">=", prefix),
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        off_runtime(|| {
            let mut c = self.conn()?;
            let rows = match &upper {
                Some(upper) => c.query(
                    &format!("SELECT key FROM binaryrepo_meta WHERE repo = $1 AND key {lower_op} $2 AND key < $3 ORDER BY key LIMIT $4"),
                    &[&repo, &lower, upper, &limit],
                ),
                None => c.query(
                    &format!("SELECT key FROM binaryrepo_meta WHERE repo = $1 AND key {lower_op} $2 ORDER BY key LIMIT $3"),
                    &[&repo, &lower, &limit],
                ),
            }
            .map_err(pg)?;
            Ok(rows.into_iter().map(|r| r.get(0)).collect())
        })
    }

    pub fn delete_repository(&self, repo: &str) -> Result<(), MetaError> {
        off_runtime(|| {
            let mut c = self.conn()?;
            let mut txn = c.transaction().map_err(pg)?;
            txn.execute("DELETE FROM binaryrepo_meta WHERE repo = $1", &[&repo]).map_err(pg)?;
            txn.execute(BUMP, &[&repo]).map_err(pg)?;
            txn.commit().map_err(pg)
        })
    }

    /// A write the store must take for the node to count as ready.
    pub fn probe(&self) -> Result<(), MetaError> {
        off_runtime(|| {
            self.conn()?
                .execute(
                    "INSERT INTO binaryrepo_documents (name, body, version) VALUES ('probe', '\\x31', 1) ON CONFLICT (name) DO UPDATE SET version = binaryrepo_documents.version",
                    &[],
                )
                .map(drop)
                .map_err(pg)
        })
    }

    /// Every repository's write counter.
    pub fn generations(&self) -> Result<HashMap<String, i64>, MetaError> {
        off_runtime(|| {
            let rows = self.conn()?.query("SELECT repo, n FROM binaryrepo_generations", &[]).map_err(pg)?;
            Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    /// Records last pulls; a node never moves a time backwards that another node recorded later.
    pub fn record_access(&self, batch: &[(String, String, u64)]) -> Result<(), MetaError> {
        off_runtime(|| {
            let mut c = self.conn()?;
            let mut txn = c.transaction().map_err(pg)?;
            let stmt = txn
                .prepare(
                    "INSERT INTO binaryrepo_access (repo, digest, at) VALUES ($1, $2, $3)
                     ON CONFLICT (repo, digest) DO UPDATE SET at = GREATEST(binaryrepo_access.at, excluded.at)",
                )
                .map_err(pg)?;
            for (repo, digest, at) in batch {
                let at = i64::try_from(*at).unwrap_or(i64::MAX);
                txn.execute(&stmt, &[repo, digest, &at]).map_err(pg)?;
            }
            txn.commit().map_err(pg)
        })
    }

    pub fn access_of(&self, repo: &str) -> Result<Vec<(String, u64)>, MetaError> {
        off_runtime(|| {
            let rows = self.conn()?.query("SELECT digest, at FROM binaryrepo_access WHERE repo = $1", &[&repo]).map_err(pg)?;
            Ok(rows.into_iter().map(|r| (r.get::<_, String>(0), u64::try_from(r.get::<_, i64>(1)).unwrap_or(0))).collect())
        })
    }

    pub fn forget_access(&self, repo: &str, digests: &[String]) -> Result<(), MetaError> {
        off_runtime(|| {
            self.conn()?
                .execute("DELETE FROM binaryrepo_access WHERE repo = $1 AND digest = ANY($2)", &[&repo, &digests])
                .map(drop)
                .map_err(pg)
        })
    }

    /// A document and its version (which every replacement advances).
    pub fn document(&self, name: &str) -> Result<Option<(Vec<u8>, i64)>, MetaError> {
        off_runtime(|| {
            let row = self.conn()?.query_opt("SELECT body, version FROM binaryrepo_documents WHERE name = $1", &[&name]).map_err(pg)?;
            Ok(row.map(|r| (r.get(0), r.get(1))))
        })
    }

    /// The version of a document, without its body (for polling).
    pub fn document_version(&self, name: &str) -> Result<Option<i64>, MetaError> {
        off_runtime(|| {
            let row = self.conn()?.query_opt("SELECT version FROM binaryrepo_documents WHERE name = $1", &[&name]).map_err(pg)?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    /// Replaces a document if it is still at version `seen` (None: it does not exist yet), and
    /// returns its new version; `Conflict` when another node changed it in between.
    pub fn put_document(&self, name: &str, body: &[u8], seen: Option<i64>) -> Result<i64, MetaError> {
        off_runtime(|| {
            let mut c = self.conn()?;
            let row = match seen {
                Some(v) => c.query_opt(
                    "UPDATE binaryrepo_documents SET body = $2, version = version + 1 WHERE name = $1 AND version = $3 RETURNING version",
                    &[&name, &body, &v],
                ),
                None => c.query_opt(
                    "INSERT INTO binaryrepo_documents (name, body, version) VALUES ($1, $2, 1) ON CONFLICT (name) DO NOTHING RETURNING version",
                    &[&name, &body],
                ),
            }
            .map_err(pg)?;
            row.map(|r| r.get(0)).ok_or_else(|| MetaError::Conflict(name.to_owned()))
        })
    }

    /// Stores `body` only when no document of that name exists yet (the first node to start
    /// seeds it, e.g. the token-signing key); returns the stored one either way.
    pub fn document_or_insert(&self, name: &str, body: &[u8]) -> Result<Vec<u8>, MetaError> {
        off_runtime(|| {
            let mut c = self.conn()?;
            c.execute(
                "INSERT INTO binaryrepo_documents (name, body, version) VALUES ($1, $2, 1) ON CONFLICT (name) DO NOTHING",
                &[&name, &body],
            )
            .map_err(pg)?;
            let row = c.query_one("SELECT body FROM binaryrepo_documents WHERE name = $1", &[&name]).map_err(pg)?;
            Ok(row.get(0))
        })
    }
}

/// Blob references for garbage collection (`storage::touch`).
impl PgMeta {
    /// Records references (digest, unix seconds); a later time of any node wins.
    pub fn record_touches(&self, batch: &[(String, u64)]) -> Result<(), MetaError> {
        let (digests, ats): (Vec<&str>, Vec<i64>) =
            batch.iter().map(|(d, at)| (d.as_str(), i64::try_from(*at).unwrap_or(i64::MAX))).unzip();
        off_runtime(|| {
            self.conn()?
                .execute(
                    "INSERT INTO binaryrepo_touches (digest, at) SELECT * FROM unnest($1::text[], $2::bigint[])
                     ON CONFLICT (digest) DO UPDATE SET at = GREATEST(binaryrepo_touches.at, excluded.at)",
                    &[&digests, &ats],
                )
                .map(drop)
                .map_err(pg)
        })
    }

    /// When any node last referenced the blob (unix seconds).
    pub fn touched_at(&self, digest: &str) -> Result<Option<u64>, MetaError> {
        off_runtime(|| {
            let row = self.conn()?.query_opt("SELECT at FROM binaryrepo_touches WHERE digest = $1", &[&digest]).map_err(pg)?;
            Ok(row.map(|r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0)))
        })
    }

    pub fn forget_touches_before(&self, at: u64) -> Result<(), MetaError> {
        let at = i64::try_from(at).unwrap_or(i64::MAX);
        off_runtime(|| self.conn()?.execute("DELETE FROM binaryrepo_touches WHERE at < $1", &[&at]).map(drop).map_err(pg))
    }
}

/// The lock space of per-blob locks (`pg_advisory_xact_lock(int, int)`, apart from the
/// single-key locks above): a reference during a collection and the collection's removal of
/// the same blob take the same lock, so one of them comes first.
const BLOB_LOCK_SPACE: i32 = 0x6272_6566;

/// Collections that several nodes take part in (`gc`, `storage::touch`): a run is announced
/// here, every live node acknowledges it once its own references are written synchronously
/// (`collection_reference`), and the run removes a blob only under that blob's lock and only
/// if no node referenced it since.
impl PgMeta {
    /// This node is alive; returns the runs in progress. Runs whose node stopped heartbeating
    /// for `expiry` end here (with what they recorded), so a crashed collector does not keep
    /// the other nodes writing references synchronously. Times are the server's: the nodes'
    /// clocks need not agree.
    pub fn heartbeat(&self, node: &str, expiry: Duration) -> Result<Vec<String>, MetaError> {
        let expiry = expiry.as_secs_f64();
        off_runtime(|| {
            let mut c = self.conn()?;
            let mut txn = c.transaction().map_err(pg)?;
            txn.execute("INSERT INTO binaryrepo_nodes (id, seen) VALUES ($1, now()) ON CONFLICT (id) DO UPDATE SET seen = now()", &[&node])
                .map_err(pg)?;
            let expired = txn
                .query(
                    "DELETE FROM binaryrepo_collections c WHERE NOT EXISTS
                       (SELECT 1 FROM binaryrepo_nodes n WHERE n.id = c.node AND n.seen > now() - make_interval(secs => $1::float8))
                     RETURNING id",
                    &[&expiry],
                )
                .map_err(pg)?;
            if !expired.is_empty() {
                let ids: Vec<String> = expired.into_iter().map(|r| r.get(0)).collect();
                tracing::warn!(runs = ?ids, "collections whose node stopped heartbeating ended");
                txn.execute("DELETE FROM binaryrepo_collection_acks WHERE run = ANY($1)", &[&ids]).map_err(pg)?;
                txn.execute("DELETE FROM binaryrepo_collection_refs WHERE run = ANY($1)", &[&ids]).map_err(pg)?;
            }
            txn.execute("DELETE FROM binaryrepo_nodes WHERE seen < now() - make_interval(secs => $1::float8 * 10)", &[&expiry])
                .map_err(pg)?;
            let rows = txn.query("SELECT id FROM binaryrepo_collections ORDER BY id", &[]).map_err(pg)?;
            txn.commit().map_err(pg)?;
            Ok(rows.into_iter().map(|r| r.get(0)).collect())
        })
    }

    /// `node` stopped serving (a clean shutdown): a run that starts now need not wait for its
    /// acknowledgement until its heartbeat lapses.
    pub fn node_left(&self, node: &str) -> Result<(), MetaError> {
        off_runtime(|| self.conn()?.execute("DELETE FROM binaryrepo_nodes WHERE id = $1", &[&node]).map(drop).map_err(pg))
    }

    /// Announces a run of `node`.
    pub fn collection_begin(&self, run: &str, node: &str) -> Result<(), MetaError> {
        off_runtime(|| {
            self.conn()?
                .execute("INSERT INTO binaryrepo_collections (id, node, started) VALUES ($1, $2, now())", &[&run, &node])
                .map(drop)
                .map_err(pg)
        })
    }

    /// `node` writes its references for `run` synchronously now, and every request it began
    /// before has finished.
    pub fn collection_ack(&self, run: &str, node: &str) -> Result<(), MetaError> {
        off_runtime(|| {
            self.conn()?
                .execute(
                    "INSERT INTO binaryrepo_collection_acks (run, node)
                     SELECT $1, $2 WHERE EXISTS (SELECT 1 FROM binaryrepo_collections WHERE id = $1) ON CONFLICT DO NOTHING",
                    &[&run, &node],
                )
                .map(drop)
                .map_err(pg)
        })
    }

    /// The live nodes (heartbeat within `expiry`) other than the run's own that have not
    /// acknowledged `run` yet. An error if the run is gone (expired).
    pub fn collection_waiting_for(&self, run: &str, expiry: Duration) -> Result<Vec<String>, MetaError> {
        let expiry = expiry.as_secs_f64();
        off_runtime(|| {
            let mut c = self.conn()?;
            let Some(owner) =
                c.query_opt("SELECT node FROM binaryrepo_collections WHERE id = $1", &[&run]).map_err(pg)?.map(|r| r.get::<_, String>(0))
            else {
                return Err(MetaError::Unavailable(format!("collection {run} was ended by another node (its heartbeat lapsed)")));
            };
            let rows = c
                .query(
                    "SELECT n.id FROM binaryrepo_nodes n
                     WHERE n.seen > now() - make_interval(secs => $2::float8) AND n.id <> $3
                       AND NOT EXISTS (SELECT 1 FROM binaryrepo_collection_acks a WHERE a.run = $1 AND a.node = n.id)
                     ORDER BY n.id",
                    &[&run, &expiry, &owner],
                )
                .map_err(pg)?;
            Ok(rows.into_iter().map(|r| r.get(0)).collect())
        })
    }

    /// Records that a request is about to reference `digest`, for every run in progress, under
    /// the blob's lock: a removal by any run either finished before (the request then finds the
    /// blob gone) or will see this row and keep the blob.
    pub fn collection_reference(&self, digest: &str) -> Result<(), MetaError> {
        off_runtime(|| {
            let mut c = self.conn()?;
            let mut txn = c.transaction().map_err(pg)?;
            txn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", &[&BLOB_LOCK_SPACE, &digest]).map_err(pg)?;
            txn.execute(
                "INSERT INTO binaryrepo_collection_refs (run, digest) SELECT id, $1 FROM binaryrepo_collections ON CONFLICT DO NOTHING",
                &[&digest],
            )
            .map_err(pg)?;
            txn.commit().map_err(pg)
        })
    }

    /// Runs `remove` under the blob's lock unless a node referenced `digest` during `run`;
    /// `Ok(None)` when it was referenced. The run's row is held (shared) meanwhile, so the run
    /// cannot be expired (and the nodes go back to batching their references) mid-removal; a
    /// run already expired removes nothing (an error).
    pub fn collection_remove<T>(&self, run: &str, digest: &str, remove: impl FnOnce() -> T + Send) -> Result<Option<T>, MetaError>
    where
        T: Send,
    {
        off_runtime(|| {
            let mut c = self.conn()?;
            let mut txn = c.transaction().map_err(pg)?;
            if txn.query_opt("SELECT 1 FROM binaryrepo_collections WHERE id = $1 FOR SHARE", &[&run]).map_err(pg)?.is_none() {
                return Err(MetaError::Unavailable(format!("collection {run} was ended by another node (its heartbeat lapsed)")));
            }
            txn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", &[&BLOB_LOCK_SPACE, &digest]).map_err(pg)?;
            let referenced = txn
                .query_opt("SELECT 1 FROM binaryrepo_collection_refs WHERE run = $1 AND digest = $2", &[&run, &digest])
                .map_err(pg)?
                .is_some();
            if referenced {
                return Ok(None);
            }
            let out = remove();
            txn.commit().map_err(pg)?;
            Ok(Some(out))
        })
    }

    /// Ends a run: the nodes go back to batching their references.
    pub fn collection_end(&self, run: &str) -> Result<(), MetaError> {
        off_runtime(|| {
            let mut c = self.conn()?;
            let mut txn = c.transaction().map_err(pg)?;
            txn.execute("DELETE FROM binaryrepo_collections WHERE id = $1", &[&run]).map_err(pg)?;
            txn.execute("DELETE FROM binaryrepo_collection_acks WHERE run = $1", &[&run]).map_err(pg)?;
            txn.execute("DELETE FROM binaryrepo_collection_refs WHERE run = $1", &[&run]).map_err(pg)?;
            txn.commit().map_err(pg)
        })
    }
}

/// Upload sessions shared between nodes.
impl PgMeta {
    /// Records a new empty session unless `repo` holds `per_repo` sessions or all repositories
    /// `total`; then `Err((open, in_repo))` says how many are open and whether the repository's
    /// limit was the one reached.
    pub fn upload_start(
        &self,
        repo: &str,
        id: &str,
        state: &[u8],
        per_repo: usize,
        total: usize,
    ) -> Result<Result<(), (usize, bool)>, MetaError> {
        off_runtime(|| {
            let mut c = self.conn()?;
            let mut txn = c.transaction().map_err(pg)?;
            txn.execute("SELECT pg_advisory_xact_lock($1)", &[&UPLOAD_START_LOCK]).map_err(pg)?;
            let row = txn.query_one("SELECT count(*) FILTER (WHERE repo = $1), count(*) FROM binaryrepo_uploads", &[&repo]).map_err(pg)?;
            let (in_repo, all) = (count(row.get(0)), count(row.get(1)));
            if in_repo >= per_repo {
                return Ok(Err((in_repo, true)));
            }
            if all >= total {
                return Ok(Err((all, false)));
            }
            let now = secs(std::time::SystemTime::now());
            txn.execute(
                "INSERT INTO binaryrepo_uploads (repo, id, size, state, chunks, touched) VALUES ($1, $2, 0, $3, '{}', $4)",
                &[&repo, &id, &state, &now],
            )
            .map_err(pg)?;
            txn.commit().map_err(pg)?;
            Ok(Ok(()))
        })
    }

    pub fn upload(&self, repo: &str, id: &str) -> Result<Option<UploadRow>, MetaError> {
        off_runtime(|| {
            let row = self
                .conn()?
                .query_opt("SELECT size, state, chunks FROM binaryrepo_uploads WHERE repo = $1 AND id = $2", &[&repo, &id])
                .map_err(pg)?;
            Ok(row.map(|r| UploadRow { size: u64::try_from(r.get::<_, i64>(0)).unwrap_or(0), state: r.get(1), chunks: r.get(2) }))
        })
    }

    /// Moves a session from `from` bytes to `to` (with the hash state of those bytes and the
    /// chunk that holds the new ones, if any); false when the session is gone or no longer
    /// holds `from` bytes (another node appended or ended it first).
    pub fn upload_advance(&self, repo: &str, id: &str, from: u64, to: u64, state: &[u8], chunk: Option<&str>) -> Result<bool, MetaError> {
        let (from, to) = (i64::try_from(from).unwrap_or(i64::MAX), i64::try_from(to).unwrap_or(i64::MAX));
        let now = secs(std::time::SystemTime::now());
        off_runtime(|| {
            let n = self
                .conn()?
                .execute(
                    "UPDATE binaryrepo_uploads SET size = $4, state = $5, touched = $6,
                            chunks = CASE WHEN $3::text IS NULL THEN chunks ELSE array_append(chunks, $3::text) END
                     WHERE repo = $1 AND id = $2 AND size = $7",
                    &[&repo, &id, &chunk, &to, &state, &now, &from],
                )
                .map_err(pg)?;
            Ok(n == 1)
        })
    }

    /// Ends a session; whether it existed.
    pub fn upload_end(&self, repo: &str, id: &str) -> Result<bool, MetaError> {
        off_runtime(|| {
            let n = self.conn()?.execute("DELETE FROM binaryrepo_uploads WHERE repo = $1 AND id = $2", &[&repo, &id]).map_err(pg)?;
            Ok(n == 1)
        })
    }

    /// Ends the sessions untouched since `before`; their repositories and ids.
    pub fn upload_expire(&self, before: std::time::SystemTime) -> Result<Vec<(String, String)>, MetaError> {
        let before = secs(before);
        off_runtime(|| {
            let rows =
                self.conn()?.query("DELETE FROM binaryrepo_uploads WHERE touched < $1 RETURNING repo, id", &[&before]).map_err(pg)?;
            Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    /// Every open session's repository and id.
    pub fn upload_ids(&self) -> Result<Vec<(String, String)>, MetaError> {
        off_runtime(|| {
            let rows = self.conn()?.query("SELECT repo, id FROM binaryrepo_uploads", &[]).map_err(pg)?;
            Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    /// Ends every session of a repository.
    pub fn upload_forget_repository(&self, repo: &str) -> Result<(), MetaError> {
        off_runtime(|| self.conn()?.execute("DELETE FROM binaryrepo_uploads WHERE repo = $1", &[&repo]).map(drop).map_err(pg))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::{DatabaseUrl, PgMeta, prefix_end};

    /// Guards `Drop for PgMeta`: a node dropping its store on a runtime thread (shutdown) used to
    /// panic with "Cannot start a runtime from within a runtime".
    #[test]
    fn the_store_drops_cleanly_on_a_runtime_thread() {
        let Some(url) = crate::storage::meta::tests::postgres_url() else { return };
        let store = PgMeta::connect(&url, 2).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
        runtime.block_on(async move { tokio::spawn(async move { drop(store) }).await }).unwrap();
    }

    /// A database of its own: heartbeats end the runs of every node they find stale.
    pub(crate) fn fresh_url() -> Option<DatabaseUrl> {
        let url = crate::storage::meta::tests::postgres_url()?;
        let name = format!("t{}", uuid::Uuid::new_v4().simple());
        let mut admin = postgres::Client::connect(&url.0, postgres::NoTls).unwrap();
        admin.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        Some(DatabaseUrl::new(format!("{}/{name}", url.0.rsplit_once('/').unwrap().0)))
    }

    fn fresh() -> Option<PgMeta> {
        Some(PgMeta::connect(&fresh_url()?, 4).unwrap())
    }

    /// Guards the cross-node part of garbage collection: a run waits for every live node's
    /// acknowledgement, a blob a node referenced during the run is not removed, and a reference
    /// made while a removal holds the blob's lock waits for the removal to commit.
    #[test]
    fn a_run_waits_for_live_nodes_and_keeps_what_they_referenced() {
        let Some(store) = fresh() else { return };
        let expiry = std::time::Duration::from_secs(15);
        assert!(store.heartbeat("a", expiry).unwrap().is_empty());
        store.heartbeat("b", expiry).unwrap();
        store.collection_begin("a/1", "a").unwrap();
        assert_eq!(store.heartbeat("b", expiry).unwrap(), ["a/1"], "b sees the run");
        assert_eq!(store.collection_waiting_for("a/1", expiry).unwrap(), ["b"], "the run waits for b, not for its own node");
        store.collection_reference("sha256:kept").unwrap();
        store.collection_ack("a/1", "b").unwrap();
        assert!(store.collection_waiting_for("a/1", expiry).unwrap().is_empty());
        assert_eq!(store.collection_remove("a/1", "sha256:kept", || "removed").unwrap(), None, "referenced during the run");
        assert_eq!(store.collection_remove("a/1", "sha256:other", || "removed").unwrap(), Some("removed"));
        // A node that stopped cleanly is not waited for, though its heartbeat is recent.
        store.heartbeat("c", expiry).unwrap();
        assert_eq!(store.collection_waiting_for("a/1", expiry).unwrap(), ["c"]);
        store.node_left("c").unwrap();
        assert!(store.collection_waiting_for("a/1", expiry).unwrap().is_empty(), "c left");

        // A reference that comes while a removal holds the lock waits for it.
        let store = std::sync::Arc::new(store);
        let (tx, rx) = std::sync::mpsc::channel();
        let remover = {
            let store = store.clone();
            std::thread::spawn(move || {
                store
                    .collection_remove("a/1", "sha256:raced", || {
                        tx.send(()).unwrap();
                        std::thread::sleep(std::time::Duration::from_millis(500));
                        std::time::Instant::now()
                    })
                    .unwrap()
                    .unwrap()
            })
        };
        rx.recv().unwrap();
        store.collection_reference("sha256:raced").unwrap();
        let referenced = std::time::Instant::now();
        assert!(referenced >= remover.join().unwrap(), "the reference waited for the removal to commit");

        // A run whose node stopped heartbeating ends, and removes nothing more.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert!(store.heartbeat("b", std::time::Duration::from_secs(1)).unwrap().is_empty(), "a's run expired");
        assert!(store.collection_remove("a/1", "sha256:late", || ()).is_err());
        assert!(store.collection_waiting_for("a/1", expiry).is_err());
        store.collection_end("a/1").unwrap();
    }

    #[test]
    fn prefix_ends_bound_exactly_the_prefixed_strings() {
        assert_eq!(prefix_end("tag/app:").as_deref(), Some("tag/app;"));
        assert_eq!(prefix_end("a\u{D7FF}").as_deref(), Some("a\u{E000}"));
        assert_eq!(prefix_end("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_end(""), None);
        assert_eq!(prefix_end("\u{10FFFF}"), None);
    }
}
