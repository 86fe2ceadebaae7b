//! Upload sessions: a staging file per session that request bodies are appended to, then
//! verified against a digest and moved into the blob store. Sessions are scoped by repository,
//! and limited per repository and in all (`UploadLimits`): each is a file on disk, and a client
//! that only ever starts uploads must not be able to fill the disk's inodes or starve the other
//! repositories' pushers.
//!
//! Each session is hashed as its bytes arrive: `<id>.sha256` beside the session file holds the
//! SHA-256 state of its first N bytes, written after those bytes were synced, so committing a
//! large blob does not read it back, and a session outlives a restart. The state is the truth
//! about what was acknowledged: bytes past N (a chunk cut short by a crash) are cut off when the
//! session is next used, and a session without a usable state is hashed again from its file.
//!
//! Nodes that share their object storage and metadata keep sessions there instead
//! (`shared_uploads`), so that every node can take a session's next chunk.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::config::UploadLimits;
use crate::digest::{Algorithm, Digest, Hasher};
use crate::storage::blobs::BlobError;
use crate::storage::resumable::{SAVED_MAX, Sha256State};
use crate::storage::shared_uploads::{ChunkAppender, SharedUploads};
use crate::storage::{BlobStore, MetaStore, durable};

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
    /// Sessions in the shared store, for nodes that share one (then nothing is under `root`).
    shared: Option<SharedUploads>,
}

impl Uploads {
    pub fn open(root: PathBuf, store: BlobStore, limits: UploadLimits) -> io::Result<Uploads> {
        fs::create_dir_all(&root)?;
        // Sessions survive a restart: count what is on disk.
        let mut open = Open::default();
        for repo in fs::read_dir(&root)?.flatten() {
            let n = fs::read_dir(repo.path()).map_or(0, |d| d.flatten().filter(|e| session_id(&e.path()).is_some()).count());
            if n > 0 {
                open.by_repo.insert(repo.file_name().to_string_lossy().into_owned(), n);
                open.total += n;
            }
        }
        Ok(Uploads { root, store, locks: Mutex::new(HashMap::new()), limits, open: Mutex::new(open), shared: None })
    }

    /// Keeps sessions in the shared store when the blob backend and `meta` are shared between
    /// nodes (S3 and PostgreSQL); otherwise they stay under the data directory.
    pub fn shared_with(mut self, meta: &MetaStore) -> Uploads {
        self.shared = SharedUploads::new(&self.store, meta, &self.limits);
        self
    }

    /// Whether sessions live in the shared store.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    fn opened(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path(&self, repo: &str, id: &UploadId) -> PathBuf {
        self.root.join(repo).join(id.as_str())
    }

    /// The disk is full: noted for readiness and refusals (see `storage::health`).
    fn note(&self, e: &io::Error) {
        self.store.health().note(e);
    }

    /// A new session, unless `repo` or the host has as many open as allowed.
    pub fn start(&self, repo: &str) -> Result<UploadId, UploadError> {
        if let Some(shared) = &self.shared {
            return shared.start(repo);
        }
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
        let dir = self.root.join(repo);
        if !dir.is_dir() {
            fs::create_dir_all(&dir)?;
            durable::sync_dir(&self.root)?;
        }
        // Durable before its URL is handed out: a restart finds the session.
        File::create(&path).inspect_err(|e| self.note(e))?;
        durable::sync_dir(&dir)?;
        *open.by_repo.entry(repo.to_owned()).or_default() += 1;
        open.total += 1;
        Ok(id)
    }

    /// How many bytes the session holds (what was acknowledged), or None when it is unknown.
    pub fn size(&self, repo: &str, id: &UploadId) -> io::Result<Option<u64>> {
        if let Some(shared) = &self.shared {
            return shared.size(repo, id);
        }
        let path = self.path(repo, id);
        let len = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        // As `reconcile` will have it: a tail past the saved state is not the session's.
        Ok(Some(read_state(&path).map_or(len, |s| s.len().min(len))))
    }

    pub fn cancel(&self, repo: &str, id: &UploadId) -> io::Result<bool> {
        if let Some(shared) = &self.shared {
            return shared.cancel(repo, id);
        }
        let path = self.path(repo, id);
        match fs::remove_file(&path) {
            Ok(()) => {
                let _ = fs::remove_file(state_path(&path));
                self.opened().removed(repo);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The session's writer lock; hold it across `open_append`, the writes and `commit`.
    pub fn lock(&self, repo: &str, id: &UploadId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry((repo.to_owned(), id.clone())).or_default().clone()
    }

    /// Opens the session for appending after checking where it ends.
    pub fn open_append(&self, repo: &str, id: &UploadId, expect_offset: Option<u64>) -> Result<Appender, UploadError> {
        if let Some(shared) = &self.shared {
            return shared.open_append(repo, id, expect_offset).map(|a| Appender(Writer::Shared(a)));
        }
        let path = self.path(repo, id);
        let file = match OpenOptions::new().read(true).append(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(UploadError::Unknown),
            Err(e) => return Err(e.into()),
        };
        let hash = reconcile(&path, &file)?.map_or_else(|| rehash_sha256(&file), Ok)?;
        if expect_offset.is_some_and(|o| o != hash.len()) {
            return Err(UploadError::OffsetMismatch(hash.len()));
        }
        Ok(Appender(Writer::Local(LocalAppender { file, hash, state: state_path(&path), store: self.store.clone() })))
    }

    /// Up to `length` bytes of the session from `offset`: shorter at its end, empty past it.
    pub fn read(&self, repo: &str, id: &UploadId, offset: u64, length: u64) -> Result<Vec<u8>, UploadError> {
        if let Some(shared) = &self.shared {
            return shared.read(repo, id, offset, length);
        }
        let file = match File::open(self.path(repo, id)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(UploadError::Unknown),
            Err(e) => return Err(e.into()),
        };
        let size = file.metadata()?.len();
        let want = length.min(size.saturating_sub(offset)) as usize;
        let mut buf = vec![0u8; want];
        file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    /// Appends `data` to the session durably (hold its lock); returns the session's new size.
    pub fn append(&self, repo: &str, id: &UploadId, data: &[u8]) -> Result<u64, UploadError> {
        let mut appender = self.open_append(repo, id, None)?;
        appender.write(data)?;
        Ok(appender.finish()?)
    }

    /// Verifies the session against `expected` and moves it into the blob store when it
    /// matches; the session ends either way. A SHA-256 comes from the saved state, without
    /// reading the file; a SHA-512 is computed from the file. Hold the session's lock.
    pub fn commit(&self, repo: &str, id: &UploadId, expected: &Digest) -> Result<u64, UploadError> {
        self.commit_as(repo, id, Some(expected)).map(|(_, size)| size)
    }

    /// As `commit`, with the digest optional: without one the session is stored under its sha256.
    pub fn commit_as(&self, repo: &str, id: &UploadId, expected: Option<&Digest>) -> Result<(Digest, u64), UploadError> {
        if let Some(shared) = &self.shared {
            return shared.commit(repo, id, expected);
        }
        self.commit_with(repo, id, expected, None)
    }

    /// `commit` right after appending the last bytes, with the appender's hash: the state is
    /// neither saved nor read back (a monolithic upload costs no more syncs than its commit).
    pub fn commit_appended(&self, repo: &str, id: &UploadId, appender: Appender, expected: &Digest) -> Result<u64, UploadError> {
        let LocalAppender { file, hash, .. } = match appender.0 {
            Writer::Local(a) => a,
            Writer::Shared(a) => return a.commit(expected).map(|(_, size)| size),
        };
        drop(file);
        self.commit_with(repo, id, Some(expected), Some(hash)).map(|(_, size)| size)
    }

    fn commit_with(
        &self,
        repo: &str,
        id: &UploadId,
        expected: Option<&Digest>,
        hashed: Option<Sha256State>,
    ) -> Result<(Digest, u64), UploadError> {
        let path = self.path(repo, id);
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(UploadError::Unknown),
            Err(e) => return Err(e.into()),
        };
        // The appender's hash is newer than the saved state (which it did not write).
        let state = match hashed {
            Some(h) => Some(h),
            None => reconcile(&path, &file)?,
        };
        let (actual, size) = match (expected.map_or(Algorithm::Sha256, Digest::algorithm), state) {
            (Algorithm::Sha256, Some(state)) => (state.finish(), state.len()),
            (Algorithm::Sha256, None) => {
                let state = rehash_sha256(&file)?;
                (state.finish(), state.len())
            }
            (algorithm, _) => {
                let mut hasher = Hasher::new(algorithm);
                let size = read_all(&file, |b| hasher.update(b))?;
                (hasher.finish(), size)
            }
        };
        drop(file);
        let state = state_path(&path);
        if expected.is_some_and(|e| *e != actual) {
            if fs::remove_file(&path).is_ok() {
                self.opened().removed(repo);
            }
            let _ = fs::remove_file(&state);
            return Err(UploadError::DigestMismatch(actual));
        }
        // Two clients pushing the same blob both succeed: the second rename replaces an
        // identical file.
        self.store.commit_verified(&path, &actual)?;
        let _ = fs::remove_file(&state);
        self.opened().removed(repo);
        Ok((actual, size))
    }

    /// Removes sessions untouched for longer than `age` (with their hash states, and temporary
    /// files a crash left); returns how many sessions.
    pub fn sweep(&self, age: Duration) -> usize {
        if let Some(shared) = &self.shared {
            return shared.sweep(age);
        }
        let mut removed = 0;
        let Ok(repos) = fs::read_dir(&self.root) else { return 0 };
        for repo in repos.flatten() {
            let Ok(entries) = fs::read_dir(repo.path()) else { continue };
            let name = repo.file_name().to_string_lossy().into_owned();
            for e in entries.flatten() {
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .is_some_and(|d| d > age);
                let path = e.path();
                match session_id(&path) {
                    Some(_) if old && fs::remove_file(&path).is_ok() => {
                        let _ = fs::remove_file(state_path(&path));
                        self.opened().removed(&name);
                        removed += 1;
                    }
                    // A state or temporary file whose session is gone.
                    None if old && !session_of(&path).is_some_and(|s| s.exists()) => {
                        let _ = fs::remove_file(&path);
                    }
                    _ => {}
                }
            }
        }
        removed
    }

    pub fn forget_repository(&self, repo: &str) {
        if let Some(shared) = &self.shared {
            shared.forget_repository(repo);
        }
        let mut open = self.opened();
        let _ = fs::remove_dir_all(self.root.join(repo));
        if let Some(n) = open.by_repo.remove(repo) {
            open.total = open.total.saturating_sub(n);
        }
    }
}

/// A session opened for appending.
pub struct Appender(Writer);

enum Writer {
    Local(LocalAppender),
    Shared(ChunkAppender),
}

impl Appender {
    /// Where the next byte goes: what the session holds.
    pub fn offset(&self) -> u64 {
        match &self.0 {
            Writer::Local(a) => a.offset(),
            Writer::Shared(a) => a.offset(),
        }
    }

    /// Appends and hashes `data`. On failure nothing of it stays.
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.0 {
            Writer::Local(a) => a.write(data),
            Writer::Shared(a) => a.write(data),
        }
    }

    /// Makes what was appended durable so the chunk may be acknowledged; returns the session's
    /// size.
    pub fn finish(self) -> io::Result<u64> {
        match self.0 {
            Writer::Local(a) => a.finish(),
            Writer::Shared(a) => a.finish(),
        }
    }
}

/// A session on this node opened for appending: its file, and the hash of what it holds so far.
struct LocalAppender {
    file: File,
    hash: Sha256State,
    state: PathBuf,
    store: BlobStore,
}

impl LocalAppender {
    fn offset(&self) -> u64 {
        self.hash.len()
    }

    /// Appends and hashes `data`. On failure nothing of it stays (a partial write is cut off).
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        if let Err(e) = self.file.write_all(data) {
            self.store.health().note(&e);
            let _ = self.file.set_len(self.hash.len());
            return Err(e);
        }
        self.hash.update(data);
        Ok(())
    }

    /// Makes what was appended durable, the bytes before the state that vouches for them, so
    /// the chunk may be acknowledged; returns the session's size.
    fn finish(self) -> io::Result<u64> {
        let saved = self.file.sync_data().and_then(|()| durable::replace(&self.state, &self.hash.save(), 0o600));
        if let Err(e) = &saved {
            self.store.health().note(e);
        }
        saved.map(|()| self.hash.len())
    }
}

/// `<id>.sha256` for the session file `<id>`.
fn state_path(session: &Path) -> PathBuf {
    session.with_extension("sha256")
}

/// The session a state or temporary file belongs to (`<id>.sha256`, `.<id>.sha256.*.tmp`).
fn session_of(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    let id = name.trim_start_matches('.').split('.').next()?;
    UploadId::parse(id).map(|id| path.with_file_name(id.as_str()))
}

/// The session id of a session file (not of its state).
fn session_id(path: &Path) -> Option<UploadId> {
    UploadId::parse(path.file_name()?.to_str()?)
}

fn read_state(session: &Path) -> Option<Sha256State> {
    let bytes = fs::read(state_path(session)).ok()?;
    if bytes.len() > SAVED_MAX {
        return None;
    }
    Sha256State::restore(&bytes)
}

/// The saved state when it vouches for the file's first bytes, cutting off a tail past it (a
/// chunk a crash cut short, never acknowledged); None when the file must be hashed again (no
/// state, or a state past the file's end: the machine lost unsynced data).
fn reconcile(session: &Path, file: &File) -> io::Result<Option<Sha256State>> {
    let len = file.metadata()?.len();
    match read_state(session) {
        Some(state) if state.len() == len => Ok(Some(state)),
        Some(state) if state.len() < len => {
            tracing::info!(session = %session.display(), kept = state.len(), cut = len - state.len(), "upload session: unacknowledged tail removed");
            file.set_len(state.len())?;
            Ok(Some(state))
        }
        _ => Ok(None),
    }
}

/// Reads the whole file through `f`; returns its length.
fn read_all(file: &File, mut f: impl FnMut(&[u8])) -> io::Result<u64> {
    let mut buf = vec![0u8; 1024 * 1024];
    let mut at = 0u64;
    loop {
        let n = file.read_at(&mut buf, at)?;
        if n == 0 {
            return Ok(at);
        }
        f(&buf[..n]);
        at += n as u64;
    }
}

fn rehash_sha256(file: &File) -> io::Result<Sha256State> {
    let mut state = Sha256State::new();
    read_all(file, |b| state.update(b))?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Algorithm;
    use crate::storage::Layout;

    #[test]
    fn append_check_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(Layout::new(dir.path())).unwrap();
        let up = Uploads::open(dir.path().join("uploads"), store.clone(), UploadLimits { per_repository: 10, total: 10 }).unwrap();
        let id = up.start("r").unwrap();
        let mut f = up.open_append("r", &id, Some(0)).unwrap();
        assert_eq!(f.offset(), 0);
        f.write(b"hello ").unwrap();
        assert_eq!(f.finish().unwrap(), 6);
        assert!(matches!(up.open_append("r", &id, Some(0)), Err(UploadError::OffsetMismatch(6))));
        let mut f = up.open_append("r", &id, Some(6)).unwrap();
        f.write(b"world").unwrap();
        f.finish().unwrap();
        let wrong = Digest::of(Algorithm::Sha256, b"nope");
        assert!(matches!(up.commit("r", &id, &wrong), Err(UploadError::DigestMismatch(_))));
        assert_eq!(up.size("r", &id).unwrap(), None, "a mismatch ends the session");
        let id = up.start("r").unwrap();
        let mut f = up.open_append("r", &id, None).unwrap();
        f.write(b"hello world").unwrap();
        f.finish().unwrap();
        let d = Digest::of(Algorithm::Sha512, b"hello world");
        assert_eq!(up.commit("r", &id, &d).unwrap(), 11);
        assert_eq!(store.stat(&d).unwrap(), Some(11));
        assert!(UploadId::parse("../../etc").is_none());
        assert!(up.cancel("r", &up.start("r").unwrap()).unwrap());
    }

    #[test]
    fn plugin_made_bytes_are_read_appended_and_committed_under_their_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(Layout::new(dir.path())).unwrap();
        let up = Uploads::open(dir.path().join("uploads"), store.clone(), UploadLimits { per_repository: 10, total: 10 }).unwrap();
        let id = up.start("r").unwrap();
        assert_eq!(up.append("r", &id, b"hello ").unwrap(), 6);
        assert_eq!(up.append("r", &id, b"world").unwrap(), 11);
        assert_eq!(up.read("r", &id, 3, 5).unwrap(), b"lo wo");
        assert_eq!(up.read("r", &id, 9, 100).unwrap(), b"ld", "shorter at the end");
        assert!(up.read("r", &id, 50, 10).unwrap().is_empty());
        assert!(matches!(up.read("other", &id, 0, 1), Err(UploadError::Unknown)), "sessions are per repository");
        let (digest, size) = up.commit_as("r", &id, None).unwrap();
        assert_eq!((digest.clone(), size), (Digest::of(Algorithm::Sha256, b"hello world"), 11));
        assert_eq!(store.read_small(&digest, 100).unwrap(), b"hello world");
        assert!(matches!(up.append("r", &id, b"x"), Err(UploadError::Unknown)), "the commit ended the session");
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

    #[test]
    fn a_session_resumes_after_a_restart_and_an_unacknowledged_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(Layout::new(dir.path())).unwrap();
        let root = dir.path().join("uploads");
        let limits = UploadLimits { per_repository: 10, total: 10 };
        let up = Uploads::open(root.clone(), store.clone(), limits.clone()).unwrap();
        let id = up.start("r").unwrap();
        let mut f = up.open_append("r", &id, Some(0)).unwrap();
        f.write(b"first chunk, ").unwrap();
        f.finish().unwrap();
        // a chunk the server was killed in the middle of: on disk, never acknowledged
        fs::OpenOptions::new().append(true).open(root.join("r").join(id.as_str())).unwrap().write_all(b"half of").unwrap();
        drop(up);
        let up = Uploads::open(root.clone(), store.clone(), limits.clone()).unwrap();
        assert_eq!(up.size("r", &id).unwrap(), Some(13), "the acknowledged bytes");
        let mut f = up.open_append("r", &id, Some(13)).unwrap();
        f.write(b"second chunk").unwrap();
        f.finish().unwrap();
        let want = Digest::of(Algorithm::Sha256, b"first chunk, second chunk");
        assert_eq!(up.commit("r", &id, &want).unwrap(), 25);
        assert_eq!(store.read_small(&want, 100).unwrap(), b"first chunk, second chunk");
        assert_eq!(fs::read_dir(root.join("r")).unwrap().count(), 0, "session and its state are gone");
        // a session whose state is lost is hashed again from its file
        let id = up.start("r").unwrap();
        let mut f = up.open_append("r", &id, None).unwrap();
        f.write(b"abc").unwrap();
        f.finish().unwrap();
        fs::remove_file(root.join("r").join(format!("{}.sha256", id.as_str()))).unwrap();
        assert_eq!(up.commit("r", &id, &Digest::of(Algorithm::Sha256, b"abc")).unwrap(), 3);
    }
}
