//! The content-addressed blob store on the local filesystem.
//!
//! A blob is written to a staging file, hashed as it is written, and renamed into place only
//! when its digest matches: a file under `blobs/` always hashes to its name.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::digest::{Algorithm, Digest, Hasher};
use crate::storage::Layout;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {0} is not in the store")]
    Unknown(Digest),
    #[error("content hashes to {actual}, expected {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("blob is {size} bytes, more than the {limit} byte limit")]
    TooLarge { size: u64, limit: u64 },
    #[error("storage I/O on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BlobError + '_ {
    move |source| BlobError::Io { path: path.to_owned(), source }
}

#[derive(Debug, Clone)]
pub struct BlobStore {
    layout: Layout,
}

impl BlobStore {
    /// Opens the store, creating its directories and discarding staged files left by a crash
    /// (they were never verified, so they are never served).
    pub fn open(layout: Layout) -> Result<BlobStore, BlobError> {
        let staging = layout.staging();
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
        }
        for dir in [layout.blobs(), staging] {
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        Ok(BlobStore { layout })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.layout.blob(digest)
    }

    /// Size of a stored blob, or None.
    pub fn stat(&self, digest: &Digest) -> Result<Option<u64>, BlobError> {
        let path = self.path(digest);
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BlobError::Io { path, source: e }),
        }
    }

    pub fn open_blob(&self, digest: &Digest) -> Result<(File, u64), BlobError> {
        let path = self.path(digest);
        match File::open(&path) {
            Ok(f) => {
                let len = f.metadata().map_err(io_err(&path))?.len();
                Ok((f, len))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(BlobError::Unknown(digest.clone())),
            Err(e) => Err(BlobError::Io { path, source: e }),
        }
    }

    /// Reads a small blob whole (manifests), refusing anything over `limit`.
    pub fn read_small(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>, BlobError> {
        let (file, len) = self.open_blob(digest)?;
        if len > limit {
            return Err(BlobError::TooLarge { size: len, limit });
        }
        let mut buf = Vec::with_capacity(len as usize);
        io::Read::read_to_end(&mut io::Read::take(file, limit + 1), &mut buf).map_err(io_err(&self.path(digest)))?;
        Ok(buf)
    }

    /// Stores a small document, verified against `expected` when given.
    pub fn write_small(&self, data: &[u8], expected: Option<&Digest>) -> Result<Digest, BlobError> {
        let algorithm = expected.map_or(Algorithm::Sha256, Digest::algorithm);
        let mut staged = self.stage(algorithm)?;
        staged.write_all(data).map_err(io_err(&staged.path))?;
        staged.commit(expected)
    }

    /// A staging file to write a blob into.
    pub fn stage(&self, algorithm: Algorithm) -> Result<StagedBlob, BlobError> {
        let path = self.layout.staged();
        let file = File::create(&path).map_err(io_err(&path))?;
        Ok(StagedBlob { store: self.clone(), path, file: Some(file), hasher: Some(Hasher::new(algorithm)), len: 0 })
    }

    /// Moves a staged file whose digest the caller has verified into place.
    pub fn commit_verified(&self, staged: &Path, digest: &Digest) -> Result<(), BlobError> {
        let dest = self.path(digest);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        // Data reaches the disk before the name does, so a crash cannot leave a named blob
        // with unwritten content.
        File::open(staged).and_then(|f| f.sync_all()).map_err(io_err(staged))?;
        fs::rename(staged, &dest).map_err(io_err(&dest))?;
        Ok(())
    }

    pub fn remove(&self, digest: &Digest) -> Result<bool, BlobError> {
        let path = self.path(digest);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(BlobError::Io { path, source: e }),
        }
    }
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
        let hasher = self.hasher.take().ok_or_else(|| BlobError::Io {
            path: self.path.clone(),
            source: io::Error::other("staged blob committed twice"),
        })?;
        let actual = hasher.finish();
        if let Some(expected) = expected {
            if *expected != actual {
                return Err(BlobError::DigestMismatch { expected: expected.clone(), actual });
            }
        }
        if let Some(file) = self.file.take() {
            file.sync_all().map_err(io_err(&self.path))?;
        }
        self.store.commit_verified(&self.path, &actual)?;
        Ok(actual)
    }
}

impl Write for StagedBlob {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let file = self.file.as_mut().ok_or_else(|| io::Error::other("staged blob already committed"))?;
        let n = file.write(buf)?;
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
}
