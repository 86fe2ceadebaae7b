//! Upload sessions that every node sees, for nodes that share object storage and a metadata
//! store (S3 and PostgreSQL, docs/scale.md): a chunked push may start on one node, take its
//! chunks on others and finish on yet another.
//!
//! A session is a row in the shared store (its size, the saved SHA-256 state of its bytes, the
//! keys of its chunks) and its bytes are chunk objects beside the blobs, one per request that
//! appended to it. A chunk is spooled to a local file while it arrives (hashed as it comes),
//! stored as an object, and only then added to the row, with a compare-and-set on the size the
//! chunk started at: two nodes appending to one session at once cannot both succeed, and a
//! chunk that was not added (a lost race, a crash) is never part of the blob. The commit checks
//! the digest against the saved state without reading the bytes back, then has the object
//! store assemble the blob: a copy for a session of one chunk (a monolithic push, or one
//! PATCH), else one multipart upload that streams the chunks in order. Either appears whole or
//! not at all under the blob's key.
//!
//! The limits on open sessions are counted in the shared store, so they hold for the nodes
//! together; a session nobody touched for `upload_expiry` is ended by whichever node sweeps
//! first, and its chunks are removed with it.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::config::UploadLimits;
use crate::digest::{Algorithm, Digest, Hasher};
use crate::storage::backend::Chunks;
use crate::storage::meta::MetaError;
use crate::storage::postgres::{PgMeta, UploadRow};
use crate::storage::resumable::Sha256State;
use crate::storage::uploads::{UploadError, UploadId};
use crate::storage::{BlobStore, MetaStore};

/// How much of a chunk is read at once when a session must be hashed from its chunks.
const READ_PIECE: u64 = 4 * 1024 * 1024;

#[derive(Clone)]
pub struct SharedUploads {
    store: BlobStore,
    meta: MetaStore,
    limits: UploadLimits,
}

fn meta_io(e: MetaError) -> io::Error {
    io::Error::other(e.to_string())
}

impl From<MetaError> for UploadError {
    fn from(e: MetaError) -> Self {
        UploadError::Io(meta_io(e))
    }
}

/// `uploads/<repo>/<id>/`: where a session's chunks are.
fn session_prefix(repo: &str, id: &str) -> String {
    format!("uploads/{repo}/{id}/")
}

/// The first byte of the session a chunk holds, from its key (`<prefix><start>-<uuid>`).
fn chunk_start(key: &str) -> Option<u64> {
    key.rsplit('/').next()?.split('-').next()?.parse().ok()
}

impl SharedUploads {
    /// Sessions in the shared store, when the blobs' backend keeps chunks and the metadata store
    /// is shared; None when either is node-local (then sessions stay on the node).
    pub fn new(store: &BlobStore, meta: &MetaStore, limits: &UploadLimits) -> Option<SharedUploads> {
        (store.backend().chunks().is_some() && meta.shared().is_some()).then(|| SharedUploads {
            store: store.clone(),
            meta: meta.clone(),
            limits: limits.clone(),
        })
    }

    fn pg(&self) -> io::Result<&PgMeta> {
        self.meta.shared().ok_or_else(|| io::Error::other("the metadata store is not shared"))
    }

    fn chunks(&self) -> io::Result<&dyn Chunks> {
        self.store.backend().chunks().ok_or_else(|| io::Error::other("the blob backend keeps no chunks"))
    }

    pub fn start(&self, repo: &str) -> Result<UploadId, UploadError> {
        let id = UploadId::new();
        match self.pg()?.upload_start(repo, id.as_str(), &Sha256State::new().save(), self.limits.per_repository, self.limits.total)? {
            Ok(()) => Ok(id),
            Err((open, true)) => Err(UploadError::TooMany { open, scope: "in this repository" }),
            Err((open, false)) => Err(UploadError::TooMany { open, scope: "on this server" }),
        }
    }

    fn row(&self, repo: &str, id: &UploadId) -> Result<UploadRow, UploadError> {
        self.pg()?.upload(repo, id.as_str())?.ok_or(UploadError::Unknown)
    }

    pub fn size(&self, repo: &str, id: &UploadId) -> io::Result<Option<u64>> {
        Ok(self.pg()?.upload(repo, id.as_str()).map_err(meta_io)?.map(|r| r.size))
    }

    pub fn cancel(&self, repo: &str, id: &UploadId) -> io::Result<bool> {
        let ended = self.pg()?.upload_end(repo, id.as_str()).map_err(meta_io)?;
        self.remove_chunks(repo, id.as_str());
        Ok(ended)
    }

    /// Removes a session's chunks once it ended; what is left (the store failing now) goes with
    /// the next sweep, as the chunks of a session that is no more.
    fn remove_chunks(&self, repo: &str, id: &str) {
        if let Err(e) = self.chunks().and_then(|c| c.delete_under(&session_prefix(repo, id))) {
            tracing::warn!(repo, id, error = %e, "the chunks of an ended upload session were not removed; the next sweep removes them");
        }
    }

    pub fn open_append(&self, repo: &str, id: &UploadId, expect_offset: Option<u64>) -> Result<ChunkAppender, UploadError> {
        let row = self.row(repo, id)?;
        if expect_offset.is_some_and(|o| o != row.size) {
            return Err(UploadError::OffsetMismatch(row.size));
        }
        let hash = match Sha256State::restore(&row.state).filter(|s| s.len() == row.size) {
            Some(state) => state,
            None => self.rehash(&row)?,
        };
        Ok(ChunkAppender {
            uploads: self.clone(),
            repo: repo.to_owned(),
            id: id.clone(),
            base: row.size,
            earlier: row.chunks.len(),
            hash,
            spool: None,
            failed: false,
        })
    }

    /// Reads a session's bytes in order through `f`, from its chunks.
    fn read_chunks(&self, row: &UploadRow, mut f: impl FnMut(&[u8])) -> io::Result<()> {
        let chunks = self.chunks()?;
        for (key, len) in chunk_lengths(row) {
            let mut at = 0;
            while at < len {
                let piece = chunks.read(key, at, READ_PIECE.min(len - at))?;
                if piece.is_empty() {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("upload chunk {key} ends early")));
                }
                at += piece.len() as u64;
                f(&piece);
            }
        }
        Ok(())
    }

    /// The hash of a session whose saved state is not usable, from its bytes.
    fn rehash(&self, row: &UploadRow) -> io::Result<Sha256State> {
        let mut state = Sha256State::new();
        self.read_chunks(row, |b| state.update(b))?;
        Ok(state)
    }

    pub fn read(&self, repo: &str, id: &UploadId, offset: u64, length: u64) -> Result<Vec<u8>, UploadError> {
        let row = self.row(repo, id)?;
        let chunks = self.chunks()?;
        let end = offset.saturating_add(length).min(row.size);
        let mut out = Vec::new();
        let mut start = 0u64;
        for (key, len) in chunk_lengths(&row) {
            let (from, to) = (offset.max(start), end.min(start + len));
            if from < to {
                out.extend_from_slice(&chunks.read(key, from - start, to - from)?);
            }
            start += len;
        }
        Ok(out)
    }

    /// Verifies the session against `expected` (without it, it is stored under its sha256)
    /// and stores it as that blob when it matches; the session ends either way.
    pub fn commit(&self, repo: &str, id: &UploadId, expected: Option<&Digest>) -> Result<(Digest, u64), UploadError> {
        let row = self.row(repo, id)?;
        let (actual, size) = match expected.map_or(Algorithm::Sha256, Digest::algorithm) {
            Algorithm::Sha256 => {
                let state = match Sha256State::restore(&row.state).filter(|s| s.len() == row.size) {
                    Some(s) => s,
                    None => self.rehash(&row)?,
                };
                (state.finish(), state.len())
            }
            algorithm => {
                let mut hasher = Hasher::new(algorithm);
                self.read_chunks(&row, |b| hasher.update(b))?;
                (hasher.finish(), row.size)
            }
        };
        if expected.is_some_and(|e| *e != actual) {
            self.end(repo, id);
            return Err(UploadError::DigestMismatch(actual));
        }
        // Two clients pushing the same blob both succeed: the blob is there already. Either way
        // this push references it, before looking (a collection keeps it for the manifest).
        self.store.touches().touch(&actual).map_err(|e| UploadError::Io(std::io::Error::other(e)))?;
        if self.store.stat(&actual)? != Some(size) {
            self.store.compose(&row.chunks, &actual, size)?;
        }
        self.end(repo, id);
        Ok((actual, size))
    }

    fn end(&self, repo: &str, id: &UploadId) {
        if let Err(e) = self.pg().and_then(|pg| pg.upload_end(repo, id.as_str()).map_err(meta_io)) {
            tracing::warn!(repo, id = id.as_str(), error = %e, "an ended upload session was not removed; it expires");
        }
        self.remove_chunks(repo, id.as_str());
    }

    /// Ends the sessions untouched for longer than `age` and removes their chunks, and the
    /// chunks older than that of sessions that are no more; returns how many sessions.
    pub fn sweep(&self, age: Duration) -> usize {
        let Some(before) = SystemTime::now().checked_sub(age) else { return 0 };
        let pg = match self.pg() {
            Ok(pg) => pg,
            Err(_) => return 0,
        };
        let expired = match pg.upload_expire(before) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "expired upload sessions not read");
                return 0;
            }
        };
        for (repo, id) in &expired {
            self.remove_chunks(repo, id);
        }
        // Chunks whose session ended without removing them (a node stopped in between).
        let Ok(live) = pg.upload_ids() else { return expired.len() };
        let live: HashSet<String> = live.into_iter().map(|(repo, id)| session_prefix(&repo, &id)).collect();
        let mut orphans = HashSet::new();
        if let Ok(chunks) = self.chunks() {
            let listed = chunks.list(&mut |key, modified| {
                let Some(cut) = key.rfind('/') else { return };
                let prefix = &key[..=cut];
                if modified < before && !live.contains(prefix) {
                    orphans.insert(prefix.to_owned());
                }
            });
            if let Err(e) = listed {
                tracing::warn!(error = %e, "upload chunks not listed");
            }
            for prefix in orphans {
                if let Err(e) = chunks.delete_under(&prefix) {
                    tracing::warn!(prefix, error = %e, "chunks of an ended upload session not removed");
                }
            }
        }
        expired.len()
    }

    pub fn forget_repository(&self, repo: &str) {
        if let Err(e) = self.pg().and_then(|pg| pg.upload_forget_repository(repo).map_err(meta_io)) {
            tracing::warn!(repo, error = %e, "upload sessions of a removed repository not ended; they expire");
        }
        if let Err(e) = self.chunks().and_then(|c| c.delete_under(&format!("uploads/{repo}/"))) {
            tracing::warn!(repo, error = %e, "upload chunks of a removed repository not removed; the next sweep removes them");
        }
    }
}

/// Each chunk's key and length (from where the next one starts, the last to the session's end).
fn chunk_lengths(row: &UploadRow) -> Vec<(&str, u64)> {
    let starts: Vec<u64> = row.chunks.iter().map(|k| chunk_start(k).unwrap_or(0)).collect();
    row.chunks
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let end = starts.get(i + 1).copied().unwrap_or(row.size);
            (k.as_str(), end.saturating_sub(starts[i]))
        })
        .collect()
}

/// A request's bytes on their way into a shared session: spooled to a local staging file and
/// hashed as they arrive, stored as one chunk by `finish`.
pub struct ChunkAppender {
    uploads: SharedUploads,
    repo: String,
    id: UploadId,
    /// What the session held when this chunk started.
    base: u64,
    /// How many chunks the session held then.
    earlier: usize,
    hash: Sha256State,
    spool: Option<(PathBuf, File)>,
    /// A write failed: the chunk is dropped whole, and the appender takes nothing more.
    failed: bool,
}

impl ChunkAppender {
    pub fn offset(&self) -> u64 {
        self.hash.len()
    }

    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other("an earlier write of this chunk failed"));
        }
        if data.is_empty() {
            return Ok(());
        }
        let (path, mut file) = match self.spool.take() {
            Some(s) => s,
            None => self.uploads.store.create_staged().inspect_err(|e| _ = self.uploads.store.health().note(e))?,
        };
        if let Err(e) = file.write_all(data) {
            self.uploads.store.health().note(&e);
            let _ = std::fs::remove_file(&path);
            self.failed = true;
            return Err(e);
        }
        self.spool = Some((path, file));
        self.hash.update(data);
        Ok(())
    }

    /// Stores the chunk and adds it to the session, so it may be acknowledged; returns the
    /// session's size.
    pub fn finish(mut self) -> io::Result<u64> {
        if self.failed {
            return Err(io::Error::other("an earlier write of this chunk failed"));
        }
        let len = self.hash.len();
        let pg = self.uploads.pg()?;
        let Some((path, file)) = self.spool.take() else {
            // Nothing arrived: the session is touched, so it does not expire under its client.
            return if pg.upload_advance(&self.repo, self.id.as_str(), self.base, len, &self.hash.save(), None).map_err(meta_io)? {
                Ok(len)
            } else {
                Err(lost(&self.repo, &self.id))
            };
        };
        drop(file);
        let key = format!("{}{:020}-{}", session_prefix(&self.repo, self.id.as_str()), self.base, uuid::Uuid::new_v4().simple());
        let chunks = self.uploads.chunks()?;
        chunks.put(&key, &path).inspect_err(|e| _ = self.uploads.store.health().note(e))?;
        let added = pg.upload_advance(&self.repo, self.id.as_str(), self.base, len, &self.hash.save(), Some(&key));
        if !matches!(added, Ok(true)) {
            // Not part of the session: its object goes now (or with the sweep).
            let _ = chunks.delete(&key);
            return Err(added.err().map_or_else(|| lost(&self.repo, &self.id), meta_io));
        }
        Ok(len)
    }

    /// The commit of a request that ends a session: a session whose bytes all came with this
    /// request (a monolithic push) is stored from the spool file; otherwise the chunk is added
    /// first and the session's chunks are assembled.
    pub fn commit(mut self, expected: &Digest) -> Result<(Digest, u64), UploadError> {
        if self.base == 0 && self.earlier == 0 && !self.failed && expected.algorithm() == Algorithm::Sha256 {
            let actual = self.hash.finish();
            let size = self.hash.len();
            let uploads = self.uploads.clone();
            let (repo, id) = (self.repo.clone(), self.id.clone());
            if *expected != actual {
                drop(self.spool.take().map(|(p, _)| std::fs::remove_file(p)));
                uploads.end(&repo, &id);
                return Err(UploadError::DigestMismatch(actual));
            }
            match self.spool.take() {
                Some((path, file)) => {
                    drop(file);
                    uploads.store.commit_verified(&path, &actual)?;
                }
                None => uploads.store.write_small(b"", Some(&actual)).map(drop)?,
            }
            uploads.end(&repo, &id);
            return Ok((actual, size));
        }
        let (repo, id) = (self.repo.clone(), self.id.clone());
        let uploads = self.uploads.clone();
        self.finish()?;
        uploads.commit(&repo, &id, Some(expected))
    }
}

impl Drop for ChunkAppender {
    fn drop(&mut self) {
        if let Some((path, _)) = self.spool.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn lost(repo: &str, id: &UploadId) -> io::Error {
    io::Error::other(format!("upload session {repo}/{} changed on another node while this chunk arrived", id.as_str()))
}

#[cfg(test)]
mod tests {
    use super::chunk_start;

    #[test]
    fn chunk_keys_name_their_first_byte() {
        assert_eq!(chunk_start("uploads/r/0123/00000000000000001024-abcd"), Some(1024));
        assert_eq!(chunk_start("uploads/r/0123/junk"), None);
    }
}
