//! The content-addressed blob store, on the configured backend (storage/backend).
//!
//! A blob is written to a local staging file, hashed as it is written, and committed to the
//! backend under its digest only when the digest matches: a stored blob always hashes to its name.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::digest::{Algorithm, Digest, Hasher};
use crate::storage::backend::{self, Backend, Listed, Stored, Upload};
use crate::storage::health::Health;
use crate::storage::small_cache::{self, SmallCache};
use crate::storage::touch::Touches;
use crate::storage::{Layout, durable};

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {0} is not in the store")]
    Unknown(Digest),
    #[error("content hashes to {actual}, expected {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("blob is {size} bytes, more than the {limit} byte limit")]
    TooLarge { size: u64, limit: u64 },
    /// Said without the path (this reaches clients); `io_err` logs it.
    #[error("storage I/O failed: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl BlobError {
    /// The disk is full: the server is unavailable for writes until space is freed.
    pub fn is_out_of_space(&self) -> bool {
        matches!(self, BlobError::Io { source, .. } if durable::is_out_of_space(source))
    }
}

/// Errors of the backend are said like the filesystem's (the path is the blob's local name).
fn backend_err(path: &Path) -> impl FnOnce(io::Error) -> BlobError + '_ {
    io_err(path)
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BlobError + '_ {
    move |source| {
        tracing::warn!(path = %path.display(), error = %source, "blob storage I/O failed");
        BlobError::Io { path: path.to_owned(), source }
    }
}

#[derive(Clone)]
pub struct BlobStore {
    layout: Layout,
    backend: Arc<dyn Backend>,
    small: Arc<SmallCache>,
    /// Advanced whenever blobs were removed: what was decided knowing a blob present is stale.
    removals: Arc<AtomicU64>,
    health: Arc<Health>,
    /// References garbage collection must see (see `touch`).
    touches: Arc<Touches>,
}

/// A stored blob opened for serving: small ones whole from memory, others as a file, or as an
/// object the backend streams (`BlobStore::stream`).
pub enum Opened {
    Small(Bytes),
    File(File, u64),
    Object(u64),
}

impl BlobStore {
    /// Opens the store, creating its directories and discarding staged files left by a crash
    /// (they were never verified, so they are never served).
    pub fn open(layout: Layout) -> Result<BlobStore, BlobError> {
        let backend = Arc::new(backend::fs::FsBackend::new(layout.clone()).map_err(io_err(&layout.blobs()))?);
        BlobStore::on(layout, backend)
    }

    /// Opens the store on `backend`; staging stays local under `layout`.
    pub fn on(layout: Layout, backend: Arc<dyn Backend>) -> Result<BlobStore, BlobError> {
        let staging = layout.staging();
        fs::create_dir_all(&staging).map_err(io_err(&staging))?;
        sweep_staging(&staging).map_err(io_err(&staging))?;
        Ok(BlobStore {
            layout,
            backend,
            small: Arc::new(SmallCache::new()),
            removals: Arc::default(),
            health: Arc::new(Health::new()),
            touches: Arc::default(),
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// A URL the blob can be fetched from for `ttl` without binaryrepo, where the backend has one.
    pub fn presign(&self, digest: &Digest, ttl: std::time::Duration) -> Result<Option<String>, BlobError> {
        self.backend.presign(digest, ttl).map_err(backend_err(&self.path(digest)))
    }

    /// Streams `length` bytes from `offset` of a blob opened as `Opened::Object`.
    pub fn stream(&self, digest: &Digest, offset: u64, length: u64) -> futures_util::stream::BoxStream<'static, io::Result<Bytes>> {
        self.backend.stream(digest, offset, length)
    }

    /// Every stored blob.
    pub fn list(&self, visit: &mut dyn FnMut(Listed)) -> Result<(), BlobError> {
        self.backend.list(visit).map_err(backend_err(&self.layout.blobs()))
    }

    /// Whether the data volume takes writes (shared by every clone of the store).
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    pub fn touches(&self) -> &Arc<Touches> {
        &self.touches
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.layout.blob(digest)
    }

    /// A small blob from memory, when it is there: no disk access, so callers on async threads
    /// try this before going to the blocking pool.
    pub fn cached(&self, digest: &Digest) -> Option<Bytes> {
        self.small.get(digest)
    }

    /// Size of a stored blob, or None.
    pub fn stat(&self, digest: &Digest) -> Result<Option<u64>, BlobError> {
        if let Some(b) = self.small.get(digest) {
            return Ok(Some(b.len() as u64));
        }
        self.backend.stat(digest).map_err(backend_err(&self.path(digest)))
    }

    fn open_stored(&self, digest: &Digest) -> Result<Stored, BlobError> {
        match self.backend.open(digest) {
            Ok(Some(stored)) => Ok(stored),
            Ok(None) => Err(BlobError::Unknown(digest.clone())),
            Err(e) => Err(backend_err(&self.path(digest))(e)),
        }
    }

    /// Opens a blob to serve it; a small one is read whole (and kept in memory).
    pub fn open_for_serving(&self, digest: &Digest) -> Result<Opened, BlobError> {
        if let Some(b) = self.small.get(digest) {
            return Ok(Opened::Small(b));
        }
        let seen = self.small.generation();
        let (file, len) = match self.open_stored(digest)? {
            Stored::File(file, len) if len > small_cache::ENTRY_MAX => return Ok(Opened::File(file, len)),
            Stored::Object(len) if len > small_cache::ENTRY_MAX => return Ok(Opened::Object(len)),
            Stored::File(file, len) => (Some(file), len),
            Stored::Object(len) => (None, len),
        };
        let bytes = self.read_whole(digest, file, len)?;
        self.small.insert_if_unchanged(digest, &bytes, seen);
        Ok(Opened::Small(bytes))
    }

    /// Reads a small blob whole (manifests), refusing anything over `limit`.
    pub fn read_small(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>, BlobError> {
        if let Some(b) = self.small.get(digest) {
            return match b.len() as u64 {
                size if size > limit => Err(BlobError::TooLarge { size, limit }),
                _ => Ok(b.to_vec()),
            };
        }
        let seen = self.small.generation();
        let (file, len) = match self.open_stored(digest)? {
            Stored::File(file, len) => (Some(file), len),
            Stored::Object(len) => (None, len),
        };
        if len > limit {
            return Err(BlobError::TooLarge { size: len, limit });
        }
        let bytes = self.read_whole(digest, file, len)?;
        self.small.insert_if_unchanged(digest, &bytes, seen);
        Ok(bytes.to_vec())
    }

    /// Up to `length` bytes of a blob of any size from `offset`: shorter at its end, empty past it.
    pub fn read_range(&self, digest: &Digest, offset: u64, length: u64) -> Result<Vec<u8>, BlobError> {
        if let Some(b) = self.small.get(digest) {
            let from = (offset.min(b.len() as u64)) as usize;
            let to = (offset.saturating_add(length).min(b.len() as u64)) as usize;
            return Ok(b[from..to].to_vec());
        }
        match self.backend.read_range(digest, offset, length) {
            Ok(Some(bytes)) => Ok(bytes),
            Ok(None) => Err(BlobError::Unknown(digest.clone())),
            Err(e) => Err(backend_err(&self.path(digest))(e)),
        }
    }

    /// A small blob whole: from its open file, else from the backend.
    fn read_whole(&self, digest: &Digest, file: Option<File>, len: u64) -> Result<Bytes, BlobError> {
        let Some(file) = file else {
            return self.read_range(digest, 0, len).map(Bytes::from);
        };
        let mut buf = Vec::with_capacity(len as usize);
        // Never more than the size seen at open, even if the file were replaced meanwhile.
        io::Read::read_to_end(&mut io::Read::take(file, len), &mut buf).map_err(io_err(&self.path(digest)))?;
        Ok(Bytes::from(buf))
    }

    /// Call after blob files were removed behind the store's back (garbage collection).
    pub fn forget_cached(&self) {
        self.small.clear();
        self.removals.fetch_add(1, Ordering::Release);
    }

    /// How many times blobs were removed so far (see `forget_cached`).
    pub fn removals(&self) -> u64 {
        self.removals.load(Ordering::Acquire)
    }

    /// Stores a small document, verified against `expected` when given.
    pub fn write_small(&self, data: &[u8], expected: Option<&Digest>) -> Result<Digest, BlobError> {
        let algorithm = expected.map_or(Algorithm::Sha256, Digest::algorithm);
        let mut staged = self.stage(algorithm)?;
        staged.write_all(data).map_err(io_err(&staged.path))?;
        staged.commit(expected)
    }

    /// A new staging file, marked in use for as long as the returned file stays open.
    pub fn create_staged(&self) -> io::Result<(PathBuf, File)> {
        let path = self.layout.staged();
        let file = File::create(&path)?;
        hold_staged(&file)?;
        Ok((path, file))
    }

    /// A staging file to write a blob into.
    pub fn stage(&self, algorithm: Algorithm) -> Result<StagedBlob, BlobError> {
        let (path, file) = self.create_staged().inspect_err(|e| _ = self.health.note(e)).map_err(io_err(&self.layout.staging()))?;
        Ok(StagedBlob { store: self.clone(), path, file: Some(file), hasher: Some(Hasher::new(algorithm)), len: 0 })
    }

    /// Commits a staged file whose digest the caller has verified to the backend, durably and
    /// atomically (on the filesystem: the data, then the name, then any directory made for it
    /// reach the disk before this returns). The staged file is consumed.
    pub fn commit_verified(&self, staged: &Path, digest: &Digest) -> Result<(), BlobError> {
        // What a client just stored is about to be referenced: a collection running now keeps it.
        self.reference(digest)?;
        self.backend.commit(staged, digest).inspect_err(|e| _ = self.health.note(e)).map_err(backend_err(&self.path(digest)))
    }

    /// An upload of `digest` fed while its bytes arrive, where the backend takes one (S3); None
    /// where committing the staged file afterwards is the way (the filesystem), or when the
    /// backend cannot start one now (then the staged file is committed as usual).
    pub fn begin_upload(&self, digest: &Digest, staged: &Path, len: u64) -> Option<Box<dyn Upload>> {
        self.backend.begin_upload(digest, staged, len).unwrap_or_else(|e| {
            tracing::warn!(%digest, error = %e, "cannot start an upload while the blob streams; it goes up once verified");
            None
        })
    }

    /// Completes an upload whose `len` bytes the caller verified hash to `digest`, and removes
    /// the staged copy. On an error the staged file is kept, for `commit_verified`.
    pub fn complete_upload(&self, upload: Box<dyn Upload>, staged: &Path, digest: &Digest, len: u64) -> Result<(), BlobError> {
        self.reference(digest)?;
        upload.complete(len).inspect_err(|e| _ = self.health.note(e)).map_err(backend_err(&self.path(digest)))?;
        let _ = fs::remove_file(staged);
        Ok(())
    }

    /// Stores the concatenation of an upload session's chunks, whose `len` bytes the caller
    /// verified hash to `digest`, as that blob (backends that keep chunks: `Backend::chunks`).
    pub fn compose(&self, chunks: &[String], digest: &Digest, len: u64) -> Result<(), BlobError> {
        self.reference(digest)?;
        let Some(store) = self.backend.chunks() else {
            return Err(backend_err(&self.path(digest))(io::Error::other("this backend keeps no upload chunks")));
        };
        store.compose(chunks, digest, len).inspect_err(|e| _ = self.health.note(e)).map_err(backend_err(&self.path(digest)))
    }

    /// The blob is about to be referenced (`touch`); a reference a collection in progress must
    /// see but that could not be recorded fails the write.
    fn reference(&self, digest: &Digest) -> Result<(), BlobError> {
        self.touches.touch(digest).map_err(|e| BlobError::Io { path: self.path(digest), source: io::Error::other(e) })
    }

    pub fn remove(&self, digest: &Digest) -> Result<bool, BlobError> {
        let removed = self.backend.delete(digest);
        self.small.removed(digest);
        removed.map_err(backend_err(&self.path(digest)))
    }
}

/// Marks a staging file in use by this process: an exclusive `flock` on it, released by the
/// kernel when the file is closed or the process dies. Several nodes may share one data
/// directory (docs/scale.md); a node starting up removes only the staging files nobody holds.
pub fn hold_staged(file: &File) -> io::Result<()> {
    rustix::fs::flock(file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(io::Error::from)
}

/// Removes what writes cut short (by a crash or a restart) left in the staging directory, and
/// keeps what another live node on the same directory is writing: a file whose lock can be
/// taken is nobody's.
fn sweep_staging(staging: &Path) -> io::Result<()> {
    for entry in fs::read_dir(staging)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(&path)?;
            continue;
        }
        let abandoned = match File::open(&path) {
            Ok(f) => hold_staged(&f).is_ok(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(_) => true,
        };
        if abandoned {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        } else {
            tracing::debug!(path = %path.display(), "staging file in use by another node: kept");
        }
    }
    Ok(())
}

/// A blob being written; dropped without `commit` it leaves nothing behind.
pub struct StagedBlob {
    store: BlobStore,
    path: PathBuf,
    file: Option<File>,
    hasher: Option<Hasher>,
    len: u64,
}

impl StagedBlob {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Verifies and moves the blob into place; on a mismatch nothing is kept.
    pub fn commit(mut self, expected: Option<&Digest>) -> Result<Digest, BlobError> {
        let hasher = self
            .hasher
            .take()
            .ok_or_else(|| BlobError::Io { path: self.path.clone(), source: io::Error::other("staged blob committed twice") })?;
        let actual = hasher.finish();
        if let Some(expected) = expected
            && *expected != actual
        {
            return Err(BlobError::DigestMismatch { expected: expected.clone(), actual });
        }
        if let Some(file) = &self.file {
            file.sync_all().inspect_err(|e| _ = self.store.health.note(e)).map_err(io_err(&self.path))?;
        }
        self.store.commit_verified(&self.path, &actual)?;
        // Held open (in use) until the commit consumed it.
        self.file = None;
        Ok(actual)
    }
}

impl Write for StagedBlob {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let file = self.file.as_mut().ok_or_else(|| io::Error::other("staged blob already committed"))?;
        let n = file.write(buf).inspect_err(|e| _ = self.store.health.note(e))?;
        if let Some(h) = self.hasher.as_mut() {
            h.update(&buf[..n]);
        }
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().map_or(Ok(()), Write::flush)
    }
}

impl Drop for StagedBlob {
    fn drop(&mut self) {
        // Not committed (or commit failed): the staged bytes are unverified, remove them.
        if self.path.exists() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, BlobStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(Layout::new(dir.path())).unwrap();
        (dir, store)
    }

    #[test]
    fn write_verify_read() {
        let (_d, s) = store();
        let d = s.write_small(b"hello", None).unwrap();
        assert_eq!(d, Digest::of(Algorithm::Sha256, b"hello"));
        assert_eq!(s.read_small(&d, 10).unwrap(), b"hello");
        assert_eq!(s.stat(&d).unwrap(), Some(5));
        assert!(matches!(s.read_small(&d, 2), Err(BlobError::TooLarge { .. })));
    }

    #[test]
    fn ranges_of_a_blob_are_shorter_at_its_end() {
        let (_d, s) = store();
        let d = s.write_small(b"0123456789", None).unwrap();
        s.forget_cached();
        assert_eq!(s.read_range(&d, 2, 3).unwrap(), b"234");
        assert_eq!(s.read_range(&d, 8, 100).unwrap(), b"89");
        assert!(s.read_range(&d, 10, 5).unwrap().is_empty() && s.read_range(&d, u64::MAX, u64::MAX).unwrap().is_empty());
        s.read_small(&d, 100).unwrap();
        assert_eq!(s.read_range(&d, 8, u64::MAX).unwrap(), b"89", "from the small cache too");
        let absent = Digest::of(Algorithm::Sha256, b"absent");
        assert!(matches!(s.read_range(&absent, 0, 1), Err(BlobError::Unknown(_))));
    }

    #[test]
    fn mismatch_leaves_nothing() {
        let (dir, s) = store();
        let wrong = Digest::of(Algorithm::Sha256, b"other");
        assert!(matches!(s.write_small(b"hello", Some(&wrong)), Err(BlobError::DigestMismatch { .. })));
        assert_eq!(s.stat(&wrong).unwrap(), None);
        assert_eq!(fs::read_dir(dir.path().join("staging")).unwrap().count(), 0);
    }

    #[test]
    fn sha512_expected() {
        let (_d, s) = store();
        let d = Digest::of(Algorithm::Sha512, b"x");
        assert_eq!(s.write_small(b"x", Some(&d)).unwrap(), d);
    }

    #[test]
    fn staging_is_emptied_on_open() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("staging")).unwrap();
        fs::write(dir.path().join("staging/partial"), b"junk").unwrap();
        BlobStore::open(Layout::new(dir.path())).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("staging")).unwrap().count(), 0);
    }

    #[test]
    fn opening_keeps_what_another_node_is_staging() {
        let dir = tempfile::tempdir().unwrap();
        let first = BlobStore::open(Layout::new(dir.path())).unwrap();
        let mut writing = first.stage(Algorithm::Sha256).unwrap();
        writing.write_all(b"half a blob").unwrap();
        let (held, _open) = first.create_staged().unwrap();
        fs::write(dir.path().join("staging/left-by-a-crash"), b"junk").unwrap();
        // a second node starting on the same data directory
        let second = BlobStore::open(Layout::new(dir.path())).unwrap();
        assert!(held.exists(), "a staging file another node holds open is kept");
        assert!(!dir.path().join("staging/left-by-a-crash").exists(), "an abandoned one is removed");
        assert_eq!(fs::read_dir(dir.path().join("staging")).unwrap().count(), 2);
        writing.write_all(b" and the rest").unwrap();
        let d = writing.commit(None).unwrap();
        assert_eq!(second.read_small(&d, 100).unwrap(), b"half a blob and the rest");
    }
}
