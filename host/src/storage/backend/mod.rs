//! Where verified blobs live: one narrow interface (stat, read a range, commit a verified
//! staged file, list, delete, presign) and its implementations, the local filesystem (the
//! default) and S3-compatible object storage.
//!
//! The interface is a trait object (`Arc<dyn Backend>`) rather than a type parameter: the blob
//! store is cloned into every module that moves bytes, and a generic would spread through all
//! of them for one virtual call per blob operation, nothing next to the I/O behind it.
//!
//! Writes are staged in a local file (the spool) by the blob store for every backend: cache
//! fills stream to their waiting clients from that file while it grows (mapped, sent with
//! `sendfile`), and uploads append to it chunk by chunk. A backend's part is the atomic,
//! verified commit of such a file under its digest: a rename on the filesystem, a multipart
//! upload completed only after every part is in on S3. Nothing else ever writes under a final
//! key, so an object under a final key always hashes to its name.
//!
//! A backend that keeps blobs elsewhere may also take a blob whose digest and length are known
//! while it is still arriving (`begin_upload`): a cache fill tells it how much of its staging
//! file is written, the backend sends it up part by part from that file behind the fill's
//! clients, and the fill completes it only once the bytes hash to the digest, so the object is
//! stored when the fill ends rather than one upload later. Until `complete` nothing is under
//! the final key; an upload dropped without it is aborted.

pub mod fs;
mod parts;
pub mod s3;

use std::fs::File;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::stream::BoxStream;

use crate::digest::Digest;

/// A blob the backend holds, opened to be served.
pub enum Stored {
    /// A local file (served from the page cache with `sendfile`), and its length.
    File(File, u64),
    /// An object elsewhere, of this length: served with `Backend::stream`.
    Object(u64),
}

/// One stored blob, as listing finds it.
pub struct Listed {
    pub digest: Digest,
    pub size: u64,
    pub modified: SystemTime,
}

pub trait Backend: Send + Sync + 'static {
    /// "filesystem" or "s3", for logs and metrics.
    fn kind(&self) -> &'static str;

    /// Size of a stored blob, or None when there is none.
    fn stat(&self, digest: &Digest) -> io::Result<Option<u64>>;

    /// Opens a blob to serve it; None when there is none.
    fn open(&self, digest: &Digest) -> io::Result<Option<Stored>>;

    /// Up to `length` bytes from `offset` (shorter at the end, empty past it); None when there
    /// is no such blob.
    fn read_range(&self, digest: &Digest, offset: u64, length: u64) -> io::Result<Option<Vec<u8>>>;

    /// Streams `length` bytes from `offset` of a blob `open` answered `Stored::Object` for.
    fn stream(&self, digest: &Digest, offset: u64, length: u64) -> BoxStream<'static, io::Result<Bytes>>;

    /// Commits the local file `staged`, whose content the caller verified hashes to `digest`,
    /// atomically under that digest: afterwards the blob is stored whole, or (on an error) not
    /// at all. The staged file is consumed either way.
    fn commit(&self, staged: &Path, digest: &Digest) -> io::Result<()>;

    /// Every stored blob, in no particular order.
    fn list(&self, visit: &mut dyn FnMut(Listed)) -> io::Result<()>;

    /// Removes a blob; whether there was one.
    fn delete(&self, digest: &Digest) -> io::Result<bool>;

    /// A URL that serves the blob to whoever holds it for `ttl`, where the backend can make one.
    fn presign(&self, digest: &Digest, ttl: Duration) -> io::Result<Option<String>>;

    /// Starts storing the blob `digest`, of `len` bytes, from the local file `staged` while it
    /// is being written, where that saves uploading the staged file afterwards; None where
    /// `commit` of the staged file is as good (the filesystem renames it; a blob small enough
    /// for one request goes up whole once verified).
    fn begin_upload(&self, _digest: &Digest, _staged: &Path, _len: u64) -> io::Result<Option<Box<dyn Upload>>> {
        Ok(None)
    }

    /// Where upload sessions can keep their bytes so that every node sharing the backend sees
    /// them; None where sessions stay on the node (the filesystem).
    fn chunks(&self) -> Option<&dyn Chunks> {
        None
    }
}

/// Objects outside the blob namespace that hold the chunks of upload sessions shared between
/// nodes (`uploads/<repo>/<id>/<first byte>-<uuid>` under the backend's root). They are never
/// served; a session's chunks become one blob only through `compose`, after the caller verified
/// that their bytes hash to its digest.
pub trait Chunks: Send + Sync {
    /// Stores the local file `staged` as the chunk `key`; the file is consumed either way.
    fn put(&self, key: &str, staged: &Path) -> io::Result<()>;

    /// Up to `length` bytes of a chunk from `offset`.
    fn read(&self, key: &str, offset: u64, length: u64) -> io::Result<Vec<u8>>;

    /// Streams a whole chunk.
    fn stream(&self, key: &str) -> BoxStream<'static, io::Result<Bytes>>;

    /// Stores the concatenation of `chunks` (`len` bytes in all) as the blob `digest`,
    /// atomically: the blob is whole afterwards, or (on an error) not there.
    fn compose(&self, chunks: &[String], digest: &Digest, len: u64) -> io::Result<()>;

    /// Removes one chunk.
    fn delete(&self, key: &str) -> io::Result<()>;

    /// Removes every chunk under `prefix` (a session's `uploads/<repo>/<id>/`, or a repository's).
    fn delete_under(&self, prefix: &str) -> io::Result<()>;

    /// Every chunk key and when it was stored.
    fn list(&self, visit: &mut dyn FnMut(&str, SystemTime)) -> io::Result<()>;
}

/// A blob on its way into the backend under a known digest and length, read from the local
/// file it is being written to. Memory stays bounded whatever the number of uploads: `staged`
/// waits while the backend's buffers are all in use, and the bytes wait in the file. Dropped
/// without `complete`, the upload is aborted and nothing is stored.
pub trait Upload: Send {
    /// The file now holds the blob's first `written` bytes: sends what the backend takes of
    /// them now (S3: whole parts, and the last one once all are there). Blocks while the
    /// backend's buffers are all in use.
    fn staged(&mut self, written: u64) -> io::Result<()>;

    /// Makes the object visible under its final key, once every byte of the file is in. The
    /// caller has verified that the file hashes to the digest; `len` is its length, checked
    /// against the length the upload began with.
    fn complete(self: Box<Self>, len: u64) -> io::Result<()>;
}

/// The key of a blob under a backend's root: `blobs/<algorithm>/<first two hex>/<hex>`.
pub fn blob_key(digest: &Digest) -> String {
    let hex = digest.hex();
    format!("blobs/{}/{}/{}", digest.algorithm().name(), &hex[..2], hex)
}

/// `[storage]`: which backend holds the blobs (`BINARYREPO_STORAGE__BACKEND=s3` and so on).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    #[serde(default)]
    pub backend: BackendKind,
    /// A repository option asks for presigned redirects; they last this long (default 300 s).
    pub presigned_redirect_seconds: Option<u64>,
    // The S3 backend's settings. Anything not given here comes from the usual `AWS_*`
    // environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
    // `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL`, `AWS_BUCKET`).
    /// `http(s)://host:port` of an S3-compatible server; AWS itself when not given.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub bucket: Option<String>,
    /// Keys go under `<prefix>/`, so one bucket can hold several installations.
    pub prefix: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    pub session_token: Option<Secret>,
    /// `https://<bucket>.<endpoint>/<key>` rather than `https://<endpoint>/<bucket>/<key>`
    /// (path style, the default: what most self-hosted servers expect).
    pub virtual_hosted_style: Option<bool>,
}

/// A value that never reaches a log or a `Debug` print.
#[derive(Clone, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    #[default]
    Filesystem,
    S3,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    S3(#[from] s3::S3ConfigError),
    #[error("blob directory: {0}")]
    Filesystem(#[from] io::Error),
}

/// The configured backend; the filesystem one keeps blobs under the data directory.
pub fn open(config: &StorageConfig, layout: &crate::storage::Layout) -> Result<std::sync::Arc<dyn Backend>, BackendError> {
    Ok(match config.backend {
        BackendKind::Filesystem => std::sync::Arc::new(fs::FsBackend::new(layout.clone())?),
        BackendKind::S3 => {
            let runtime = tokio::runtime::Handle::try_current().map_err(|e| BackendError::Filesystem(io::Error::other(e)))?;
            std::sync::Arc::new(s3::S3Backend::new(config, runtime)?)
        }
    })
}
