//! Upload sessions: a staging file per session that request bodies are appended to, then
//! verified against a digest and moved into the blob store. Sessions are scoped by repository,
//! and limited per repository and in all (`UploadLimits`): each is a file on disk, and a client
//! that only ever starts uploads must not be able to fill the disk's inodes or starve the other
//! repositories' pushers.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::config::UploadLimits;
use crate::digest::{Digest, Hasher};
use crate::storage::BlobStore;
use crate::storage::blobs::BlobError;

/// A session id: 32 lowercase hex digits, safe to join into a path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UploadId(String);

impl UploadId {
    pub fn new() -> UploadId {
        UploadId(uuid::Uuid::new_v4().simple().to_string())
    }

    pub fn parse(s: &str) -> Option<UploadId> {
        (s.len() == 32 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))).then(|| UploadId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for UploadId {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("upload session unknown")]
    Unknown,
    #[error("upload holds {0} bytes, not the offset the chunk starts at")]
    OffsetMismatch(u64),
    #[error("upload hashes to {0}")]
    DigestMismatch(Digest),
    #[error("upload storage: {0}")]
    Io(#[from] io::Error),
    #[error("upload commit: {0}")]
    Blob(#[from] BlobError),
    /// The client's (or its peers') fault: too many sessions left open.
    #[error("{open} upload sessions are open {scope}, the most allowed; finish or cancel one, or retry later")]
    TooMany { open: usize, scope: &'static str },
}

/// Sessions open, counted as their files are created and removed (and from the disk at start).
#[derive(Default)]
struct Open {
    by_repo: HashMap<String, usize>,
    total: usize,
}

impl Open {
    fn removed(&mut self, repo: &str) {
        if let Some(n) = self.by_repo.get_mut(repo) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.by_repo.remove(repo);
            }
        }
        self.total = self.total.saturating_sub(1);
    }
}

type SessionLock = Arc<tokio::sync::Mutex<()>>;

pub struct Uploads {
    root: PathBuf,
    store: BlobStore,
    /// One writer per session at a time: concurrent chunks for one session are serialised.
    locks: Mutex<HashMap<(String, UploadId), SessionLock>>,
    limits: UploadLimits,
    open: Mutex<Open>,
}

impl Uploads {
    pub fn open(root: PathBuf, store: BlobStore, limits: UploadLimits) -> io::Result<Uploads> {
        fs::create_dir_all(&root)?;
        // Sessions survive a restart: count what is on disk.
        let mut open = Open::default();
        for repo in fs::read_dir(&root)?.flatten() {
            let n = fs::read_dir(repo.path()).map_or(0, |d| d.flatten().count());
            if n > 0 {
                open.by_repo.insert(repo.file_name().to_string_lossy().into_owned(), n);
                open.total += n;
            }
        }
        Ok(Uploads { root, store, locks: Mutex::new(HashMap::new()), limits, open: Mutex::new(open) })
    }

    fn opened(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path(&self, repo: &str, id: &UploadId) -> PathBuf {
        self.root.join(repo).join(id.as_str())
    }

    /// A new session, unless `repo` or the host has as many open as allowed.
    pub fn start(&self, repo: &str) -> Result<UploadId, UploadError> {
        // Held across the file's creation: concurrent starts cannot both take the last place.
        let mut open = self.opened();
        let in_repo = open.by_repo.get(repo).copied().unwrap_or(0);
        if in_repo >= self.limits.per_repository {
            return Err(UploadError::TooMany { open: in_repo, scope: "in this repository" });
        }
        if open.total >= self.limits.total {
            return Err(UploadError::TooMany { open: open.total, scope: "on this server" });
        }
        let id = UploadId::new();
        let path = self.path(repo, &id);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        File::create(&path)?;
        *open.by_repo.entry(repo.to_owned()).or_default() += 1;
        open.total += 1;
        Ok(id)
    }

    pub fn size(&self, repo: &str, id: &UploadId) -> io::Result<Option<u64>> {
        match fs::metadata(self.path(repo, id)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn cancel(&self, repo: &str, id: &UploadId) -> io::Result<bool> {
        match fs::remove_file(self.path(repo, id)) {
            Ok(()) => {
                self.opened().removed(repo);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The session's writer lock; hold it across `open_append` and the writes.
    pub fn lock(&self, repo: &str, id: &UploadId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry((repo.to_owned(), id.clone())).or_default().clone()
    }

    /// Opens the session for appending after checking where it ends.
    pub fn open_append(&self, repo: &str, id: &UploadId, expect_offset: Option<u64>) -> Result<(File, u64), UploadError> {
        let path = self.path(repo, id);
        let file = match OpenOptions::new().append(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(UploadError::Unknown),
            Err(e) => return Err(e.into()),
        };
        let size = file.metadata()?.len();
        if expect_offset.is_some_and(|o| o != size) {
            return Err(UploadError::OffsetMismatch(size));
        }
        Ok((file, size))
    }

    /// Hashes the whole session, and moves it into the blob store when it matches; the
    /// session ends either way.
    pub fn commit(&self, repo: &str, id: &UploadId, expected: &Digest) -> Result<u64, UploadError> {
        let path = self.path(repo, id);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(UploadError::Unknown),
            Err(e) => return Err(e.into()),
        };
        let mut hasher = Hasher::new(expected.algorithm());
        let mut buf = vec![0u8; 1024 * 1024];
        let mut size = 0u64;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        let actual = hasher.finish();
        if actual != *expected {
            if fs::remove_file(&path).is_ok() {
                self.opened().removed(repo);
            }
            return Err(UploadError::DigestMismatch(actual));
        }
        // Two clients pushing the same blob both succeed: the second rename replaces an
        // identical file.
        self.store.commit_verified(&path, expected)?;
        self.opened().removed(repo);
        Ok(size)
    }

    /// Removes sessions untouched for longer than `age`; returns how many.
    pub fn sweep(&self, age: Duration) -> usize {
        let mut removed = 0;
        let Ok(repos) = fs::read_dir(&self.root) else { return 0 };
        for repo in repos.flatten() {
            let Ok(sessions) = fs::read_dir(repo.path()) else { continue };
            let name = repo.file_name().to_string_lossy().into_owned();
            for s in sessions.flatten() {
                let old = s
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .is_some_and(|d| d > age);
                if old && fs::remove_file(s.path()).is_ok() {
                    self.opened().removed(&name);
                    removed += 1;
                }
            }
        }
        removed
    }

    pub fn forget_repository(&self, repo: &str) {
        let mut open = self.opened();
        let _ = fs::remove_dir_all(self.root.join(repo));
        if let Some(n) = open.by_repo.remove(repo) {
            open.total = open.total.saturating_sub(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Algorithm;
    use crate::storage::Layout;
    use std::io::Write;

    #[test]
    fn append_check_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(Layout::new(dir.path())).unwrap();
        let up = Uploads::open(dir.path().join("uploads"), store.clone(), UploadLimits { per_repository: 10, total: 10 }).unwrap();
        let id = up.start("r").unwrap();
        let (mut f, at) = up.open_append("r", &id, Some(0)).unwrap();
        assert_eq!(at, 0);
        f.write_all(b"hello ").unwrap();
        assert!(matches!(up.open_append("r", &id, Some(0)), Err(UploadError::OffsetMismatch(6))));
        let (mut f, _) = up.open_append("r", &id, Some(6)).unwrap();
        f.write_all(b"world").unwrap();
        let wrong = Digest::of(Algorithm::Sha256, b"nope");
        assert!(matches!(up.commit("r", &id, &wrong), Err(UploadError::DigestMismatch(_))));
        assert_eq!(up.size("r", &id).unwrap(), None, "a mismatch ends the session");
        let id = up.start("r").unwrap();
        up.open_append("r", &id, None).unwrap().0.write_all(b"hello world").unwrap();
        let d = Digest::of(Algorithm::Sha512, b"hello world");
        assert_eq!(up.commit("r", &id, &d).unwrap(), 11);
        assert_eq!(store.stat(&d).unwrap(), Some(11));
        assert!(UploadId::parse("../../etc").is_none());
        assert!(up.cancel("r", &up.start("r").unwrap()).unwrap());
    }

    #[test]
    fn sessions_are_limited_per_repository_and_in_all() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(Layout::new(dir.path())).unwrap();
        let root = dir.path().join("uploads");
        let up = Uploads::open(root.clone(), store.clone(), UploadLimits { per_repository: 2, total: 3 }).unwrap();
        let a1 = up.start("a").unwrap();
        let _a2 = up.start("a").unwrap();
        assert!(matches!(up.start("a"), Err(UploadError::TooMany { open: 2, scope: "in this repository" })));
        let _b1 = up.start("b").unwrap();
        assert!(matches!(up.start("b"), Err(UploadError::TooMany { open: 3, scope: "on this server" })));
        // ending a session gives its place back, whichever way it ends
        assert!(up.cancel("a", &a1).unwrap());
        assert!(!up.cancel("a", &a1).unwrap(), "a session is only counted off once");
        let a3 = up.start("a").unwrap();
        let wrong = Digest::of(Algorithm::Sha256, b"nope");
        assert!(matches!(up.commit("a", &a3, &wrong), Err(UploadError::DigestMismatch(_))));
        let a4 = up.start("a").unwrap();
        let d = Digest::of(Algorithm::Sha256, b"");
        up.commit("a", &a4, &d).unwrap();
        up.start("a").unwrap();
        assert!(up.start("a").is_err());
        // sessions survive a restart, and so does their count
        drop(up);
        let up = Uploads::open(root, store, UploadLimits { per_repository: 2, total: 3 }).unwrap();
        assert!(up.start("a").is_err() && up.start("b").is_err(), "the count is read from disk");
        up.forget_repository("a");
        up.start("b").unwrap();
    }
}
