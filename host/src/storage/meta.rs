//! Durable per-repository metadata: small values under string keys, scoped by repository name.
//! Plugins own the keys (tag links, media types); the host only scopes and stores them.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, TableDefinition};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Separates the repository from the plugin's key; neither may contain it.
const SEP: char = '\u{0}';

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("metadata store: {0}")]
    Store(#[from] redb::Error),
    #[error("metadata key {0:?} contains a NUL byte")]
    BadKey(String),
}

fn db_err<E: Into<redb::Error>>(e: E) -> MetaError {
    MetaError::Store(e.into())
}

#[derive(Clone)]
pub struct MetaStore {
    db: Arc<Database>,
}

impl MetaStore {
    pub fn open(path: &Path) -> Result<MetaStore, MetaError> {
        let db = Database::create(path).map_err(db_err)?;
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(META).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        Ok(MetaStore { db: Arc::new(db) })
    }

    fn key(repo: &str, key: &str) -> Result<String, MetaError> {
        if key.contains(SEP) || repo.contains(SEP) {
            return Err(MetaError::BadKey(key.to_owned()));
        }
        Ok(format!("{repo}{SEP}{key}"))
    }

    pub fn get(&self, repo: &str, key: &str) -> Result<Option<Vec<u8>>, MetaError> {
        let k = Self::key(repo, key)?;
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(META).map_err(db_err)?;
        Ok(table.get(k.as_str()).map_err(db_err)?.map(|v| v.value().to_vec()))
    }

    pub fn put(&self, repo: &str, key: &str, value: &[u8]) -> Result<(), MetaError> {
        let k = Self::key(repo, key)?;
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(META).map_err(db_err)?;
            table.insert(k.as_str(), value).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    pub fn delete(&self, repo: &str, key: &str) -> Result<(), MetaError> {
        let k = Self::key(repo, key)?;
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(META).map_err(db_err)?;
            table.remove(k.as_str()).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    /// The repository's keys starting with `prefix`, in lexical order.
    pub fn list(&self, repo: &str, prefix: &str) -> Result<Vec<String>, MetaError> {
        let start = Self::key(repo, prefix)?;
        let txn = self.db.begin_read().map_err(db_err)?;
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

    /// Removes everything a repository stored (the repository was deleted).
    pub fn delete_repository(&self, repo: &str) -> Result<(), MetaError> {
        let keys = self.list(repo, "")?;
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(META).map_err(db_err)?;
            for key in keys {
                let k = Self::key(repo, &key)?;
                table.remove(k.as_str()).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoped_by_repository() {
        let dir = tempfile::tempdir().unwrap();
        let m = MetaStore::open(&dir.path().join("m.redb")).unwrap();
        m.put("a", "tag/x:1", b"one").unwrap();
        m.put("a", "tag/x:2", b"two").unwrap();
        m.put("ab", "tag/x:3", b"three").unwrap();
        assert_eq!(m.get("a", "tag/x:1").unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(m.get("ab", "tag/x:1").unwrap(), None);
        assert_eq!(m.list("a", "tag/").unwrap(), vec!["tag/x:1", "tag/x:2"]);
        m.delete("a", "tag/x:1").unwrap();
        assert_eq!(m.list("a", "").unwrap(), vec!["tag/x:2"]);
        m.delete_repository("a").unwrap();
        assert!(m.list("a", "").unwrap().is_empty());
        assert_eq!(m.list("ab", "").unwrap().len(), 1);
        assert!(m.put("a", "bad\0key", b"").is_err());
    }
}
