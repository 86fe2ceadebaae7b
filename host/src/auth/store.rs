//! Where users, tokens and the signing key are kept: files in `<data_dir>/auth/` (one node), or
//! documents in the shared metadata store (several nodes), which each node re-reads when their
//! version moves (`changed`), so a user or token created through one node works on every node.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use super::files::{self, FileError, KEY_BYTES};
use crate::storage::MetaStore;
use crate::storage::meta::MetaError;

pub enum AuthStore {
    Dir(PathBuf),
    Shared {
        meta: MetaStore,
        /// The version of each document this node last read or wrote.
        seen: Mutex<HashMap<&'static str, i64>>,
    },
}

/// Documents in the shared store are named like the files, under `auth/`.
fn document(name: &str) -> String {
    format!("auth/{name}")
}

impl AuthStore {
    /// The directory (created 0700), or the shared store when `meta` is one.
    pub fn open(dir: PathBuf, meta: Option<MetaStore>) -> Result<AuthStore, FileError> {
        match meta.filter(|m| m.shared().is_some()) {
            Some(meta) => Ok(AuthStore::Shared { meta, seen: Mutex::default() }),
            None => {
                files::private_dir(&dir)?;
                Ok(AuthStore::Dir(dir))
            }
        }
    }

    pub fn read_json<T: serde::de::DeserializeOwned>(&self, name: &'static str) -> Result<Option<T>, FileError> {
        match self {
            AuthStore::Dir(dir) => files::read_json(&dir.join(name)),
            AuthStore::Shared { meta, seen } => {
                let pg = meta.shared().ok_or(FileError::Shared(MetaError::Unavailable("no shared store".into())))?;
                let Some((body, version)) = pg.document(&document(name)).map_err(FileError::Shared)? else { return Ok(None) };
                let value = serde_json::from_slice(&body).map_err(|source| FileError::Json { path: document(name).into(), source })?;
                seen.lock().unwrap_or_else(|p| p.into_inner()).insert(name, version);
                Ok(Some(value))
            }
        }
    }

    /// Saves `value`; in the shared store only over the version this node last read, so a
    /// change another node made meanwhile is never overwritten (the caller re-reads and retries).
    pub fn write_json<T: serde::Serialize>(&self, name: &'static str, value: &T) -> Result<(), FileError> {
        match self {
            AuthStore::Dir(dir) => files::write_json(&dir.join(name), value),
            AuthStore::Shared { meta, seen } => {
                let pg = meta.shared().ok_or(FileError::Shared(MetaError::Unavailable("no shared store".into())))?;
                let body = serde_json::to_vec(value).map_err(|source| FileError::Json { path: document(name).into(), source })?;
                let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                let version = pg.put_document(&document(name), &body, seen.get(name).copied()).map_err(FileError::Shared)?;
                seen.insert(name, version);
                Ok(())
            }
        }
    }

    /// Whether another node saved `name` since this node last read or wrote it.
    pub fn changed(&self, name: &'static str) -> Result<bool, FileError> {
        match self {
            AuthStore::Dir(_) => Ok(false),
            AuthStore::Shared { meta, seen } => {
                let Some(pg) = meta.shared() else { return Ok(false) };
                let current = pg.document_version(&document(name)).map_err(FileError::Shared)?;
                Ok(current != seen.lock().unwrap_or_else(|p| p.into_inner()).get(name).copied())
            }
        }
    }

    /// The token-signing key: every node signs and checks with the same one (the first node to
    /// start stores it).
    pub fn signing_key(&self) -> Result<[u8; KEY_BYTES], FileError> {
        match self {
            AuthStore::Dir(dir) => files::signing_key(&dir.join("signing.key")),
            AuthStore::Shared { meta, .. } => {
                let pg = meta.shared().ok_or(FileError::Shared(MetaError::Unavailable("no shared store".into())))?;
                let fresh = files::random_bytes::<KEY_BYTES>()?;
                let stored = pg.document_or_insert(&document("signing.key"), &fresh).map_err(FileError::Shared)?;
                let found = stored.len();
                stored.try_into().map_err(|_| FileError::KeyLength { path: document("signing.key").into(), found })
            }
        }
    }
}
