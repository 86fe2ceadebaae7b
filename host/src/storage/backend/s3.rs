//! The S3 backend: blobs as objects `<prefix>/blobs/<algorithm>/<xx>/<hex>` in one bucket of an
//! S3-compatible store (AWS S3, MinIO, Ceph, SeaweedFS, s3s), through `object_store`.
//!
//! A commit uploads the verified spool file: small ones with one PUT, larger ones as a
//! multipart upload that is completed only once every part is in (and aborted otherwise), so
//! a failed commit leaves no object under the final key. A cache fill, whose digest and length
//! are known before its bytes arrive, uploads as it streams instead (`begin_upload`): a blob
//! larger than one part goes up as a multipart upload, each part read back from the fill's
//! staging file once the fill wrote it, completed only after the fill verified the digest and
//! aborted otherwise. Part buffers come out of one budget per node (`parts.rs`), so memory
//! stays bounded however many fills and commits run at once; an upload that waits for a
//! buffer falls behind its fill, never the other way round. An upload cut by a crash stays
//! incomplete, invisible under the key: the bucket's lifecycle rule for incomplete multipart
//! uploads removes its parts (docs/storage.md).
//! Reads are ranged GETs streamed to the client. The blob store's interface is synchronous (the filesystem's is, and its callers run
//! on blocking threads); this backend runs each request on the server's runtime and waits.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::signer::Signer;
use object_store::{ClientOptions, GetOptions, GetRange, MultipartUpload, ObjectStore, PutPayload, WriteMultipart};

use super::parts::PartBudget;
use super::{Backend, Chunks, Listed, StorageConfig, Stored, Upload, blob_key};
use crate::digest::Digest;

/// S3's least part size: every part of a multipart upload but the last is at least this.
const MIN_PART: u64 = 5 * 1024 * 1024;
/// S3's most parts in one multipart upload.
const MAX_PARTS: u64 = 10_000;
/// Part buffers a node holds at most, over all of its uploads, in MiB: two 5 MiB parts, so an
/// upload can keep a part in flight while it reads the next. Past it uploads wait; their bytes
/// wait in the local file, not in memory. (A node's RSS while streaming is meant to stay under
/// 64 MiB: docs/performance.md, O3.)
const PART_BUDGET_MIB: u32 = 10;
/// Parts of one upload in flight at once: one being sent while the next one is read.
const PARTS_PER_UPLOAD: usize = 2;
/// The largest object S3 copies in one request; a session of one larger chunk is composed by
/// streaming it instead.
const COPY_MAX: u64 = 5 * 1024 * 1024 * 1024;

/// The part size for a blob of `len` bytes: S3's least, or what keeps a very large blob
/// within S3's part count (in whole MiB).
fn part_size(len: u64) -> u64 {
    MIN_PART.max(len.div_ceil(MAX_PARTS).next_multiple_of(1024 * 1024))
}

#[derive(Debug, thiserror::Error)]
pub enum S3ConfigError {
    #[error("[storage] backend = \"s3\" needs a bucket (storage.bucket or AWS_BUCKET)")]
    NoBucket,
    #[error("S3 backend: {0}")]
    Client(#[from] object_store::Error),
}

pub struct S3Backend {
    store: Arc<AmazonS3>,
    prefix: String,
    runtime: tokio::runtime::Handle,
    /// What every upload of this node takes its part buffers from.
    budget: Arc<PartBudget>,
}

impl S3Backend {
    /// Builds the client (no request is made); `runtime` runs its requests.
    pub fn new(config: &StorageConfig, runtime: tokio::runtime::Handle) -> Result<S3Backend, S3ConfigError> {
        let mut b = AmazonS3Builder::from_env();
        if let Some(v) = &config.endpoint {
            b = b.with_endpoint(v);
        }
        if let Some(v) = &config.region {
            b = b.with_region(v);
        }
        match &config.bucket {
            Some(v) => b = b.with_bucket_name(v),
            None if std::env::var_os("AWS_BUCKET").is_none() && std::env::var_os("AWS_BUCKET_NAME").is_none() => {
                return Err(S3ConfigError::NoBucket);
            }
            None => {}
        }
        if let Some(v) = &config.access_key_id {
            b = b.with_access_key_id(v);
        }
        if let Some(v) = &config.secret_access_key {
            b = b.with_secret_access_key(&v.0);
        }
        if let Some(v) = &config.session_token {
            b = b.with_token(&v.0);
        }
        let endpoint =
            config.endpoint.clone().or_else(|| std::env::var("AWS_ENDPOINT_URL").ok()).or_else(|| std::env::var("AWS_ENDPOINT").ok());
        let plain_http = endpoint.as_deref().is_some_and(|e| e.starts_with("http://"));
        b = b
            .with_virtual_hosted_style_request(config.virtual_hosted_style.unwrap_or(false))
            .with_client_options(ClientOptions::new().with_allow_http(plain_http));
        let prefix = config.prefix.as_deref().unwrap_or("").trim_matches('/').to_owned();
        Ok(S3Backend { store: Arc::new(b.build()?), prefix, runtime, budget: Arc::new(PartBudget::new(PART_BUDGET_MIB)) })
    }

    fn key(&self, digest: &Digest) -> Key {
        self.under_prefix(&blob_key(digest))
    }

    fn under_prefix(&self, key: &str) -> Key {
        match self.prefix.as_str() {
            "" => Key::from(key),
            prefix => Key::from(format!("{prefix}/{key}")),
        }
    }

    /// Runs a request on the runtime and waits for it (callers are on blocking threads, or
    /// on a runtime thread that may block in place).
    fn block<F: Future>(&self, f: F) -> F::Output {
        block_on(&self.runtime, f)
    }

    async fn upload(&self, staged: &Path, key: &Key) -> io::Result<()> {
        let file = std::fs::File::open(staged)?;
        let len = file.metadata()?.len();
        if len <= part_size(len) {
            let bytes = self.budget.read(&file, 0, len as usize).await?;
            self.store.put(key, PutPayload::from_bytes(bytes)).await.map_err(to_io)?;
            return Ok(());
        }
        let mut parts = Parts::new(self, key.clone(), file, len);
        match parts.finish(len).await {
            Ok(()) => Ok(()),
            Err(e) => {
                parts.abort().await;
                Err(e)
            }
        }
    }
}

/// Runs `f` to completion on `runtime` from a thread that may or may not be one of its own.
fn block_on<F: Future>(runtime: &tokio::runtime::Handle, f: F) -> F::Output {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(|| h.block_on(f)),
        _ => runtime.block_on(f),
    }
}

/// The parts of one multipart upload of a local file, each read from the file into a buffer
/// from the node's budget once the file holds its bytes. The upload is started with its first
/// part; nothing is under the key until `finish` completes it.
struct Parts {
    store: Arc<AmazonS3>,
    key: Key,
    budget: Arc<PartBudget>,
    runtime: tokio::runtime::Handle,
    file: std::fs::File,
    part: u64,
    upload: Option<Box<dyn MultipartUpload>>,
    /// Bytes of the file handed to parts so far.
    sent: u64,
    in_flight: VecDeque<tokio::task::JoinHandle<object_store::Result<()>>>,
}

impl Parts {
    fn new(backend: &S3Backend, key: Key, file: std::fs::File, len: u64) -> Parts {
        Parts {
            store: backend.store.clone(),
            key,
            budget: backend.budget.clone(),
            runtime: backend.runtime.clone(),
            file,
            part: part_size(len),
            upload: None,
            sent: 0,
            in_flight: VecDeque::new(),
        }
    }

    /// Sends every whole part of the file's first `written` bytes, and the last, shorter part
    /// too when `end`. Waits while this upload has its share of parts in flight, or while the
    /// node's part budget is spent.
    async fn send(&mut self, written: u64, end: bool) -> io::Result<()> {
        while self.sent + self.part <= written || (end && self.sent < written) {
            let len = (written - self.sent).min(self.part);
            while self.in_flight.len() >= PARTS_PER_UPLOAD {
                self.wait_oldest().await?;
            }
            let bytes = self.budget.read(&self.file, self.sent, len as usize).await?;
            let upload = match &mut self.upload {
                Some(upload) => upload,
                None => self.upload.insert(self.store.put_multipart(&self.key).await.map_err(to_io)?),
            };
            // Parts are numbered in the order `put_part` is called; they travel concurrently.
            let part = upload.put_part(PutPayload::from_bytes(bytes));
            self.in_flight.push_back(self.runtime.spawn(part));
            self.sent += len;
        }
        Ok(())
    }

    async fn wait_oldest(&mut self) -> io::Result<()> {
        if let Some(part) = self.in_flight.pop_front() {
            part.await.map_err(io::Error::other)?.map_err(to_io)?;
        }
        Ok(())
    }

    /// Sends what is left of the file's `len` bytes and completes the upload once every part is
    /// in: only then is there an object under the key. On an error the upload is left to `abort`.
    async fn finish(&mut self, len: u64) -> io::Result<()> {
        self.send(len, true).await?;
        while !self.in_flight.is_empty() {
            self.wait_oldest().await?;
        }
        let Some(mut upload) = self.upload.take() else {
            return Err(io::Error::other(format!("no part of {} was sent", self.key)));
        };
        match upload.complete().await {
            Ok(_) => Ok(()),
            Err(e) => {
                self.upload = Some(upload);
                Err(to_io(e))
            }
        }
    }

    /// Discards the upload: waits for the parts in flight to end (a part that lands after the
    /// abort would hold storage again), then aborts it.
    fn abort(&mut self) -> impl Future<Output = ()> + Send + 'static {
        let in_flight = std::mem::take(&mut self.in_flight);
        let upload = self.upload.take();
        let key = self.key.clone();
        async move {
            for part in in_flight {
                let _ = part.await;
            }
            if let Some(mut upload) = upload
                && let Err(e) = upload.abort().await
            {
                tracing::warn!(key = %key, error = %e, "aborting a multipart upload failed; the bucket's lifecycle rule removes its parts");
            }
        }
    }
}

/// A blob uploaded as a fill writes it to its staging file (see the module's comment).
struct S3Upload {
    parts: Parts,
    len: u64,
}

impl Upload for S3Upload {
    fn staged(&mut self, written: u64) -> io::Result<()> {
        if written > self.len {
            return Err(io::Error::other(format!("{written} bytes staged for {}, announced {}", self.parts.key, self.len)));
        }
        let runtime = self.parts.runtime.clone();
        block_on(&runtime, self.parts.send(written, written == self.len))
    }

    fn complete(mut self: Box<Self>, len: u64) -> io::Result<()> {
        if len != self.len {
            return Err(io::Error::other(format!("upload of {} holds {} bytes, the blob has {len}", self.parts.key, self.len)));
        }
        let runtime = self.parts.runtime.clone();
        block_on(&runtime, self.parts.finish(len))
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        // Not completed: the parts sent so far are discarded; nothing was ever under the key.
        if self.parts.upload.is_some() || !self.parts.in_flight.is_empty() {
            let abort = self.parts.abort();
            self.parts.runtime.spawn(abort);
        }
    }
}

fn to_io(e: object_store::Error) -> io::Error {
    match e {
        object_store::Error::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, e.to_string()),
        e => io::Error::other(e.to_string()),
    }
}

fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

impl Backend for S3Backend {
    fn kind(&self) -> &'static str {
        "s3"
    }

    fn stat(&self, digest: &Digest) -> io::Result<Option<u64>> {
        match self.block(self.store.head(&self.key(digest))) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(to_io(e)),
        }
    }

    fn open(&self, digest: &Digest) -> io::Result<Option<Stored>> {
        Ok(self.stat(digest)?.map(Stored::Object))
    }

    fn read_range(&self, digest: &Digest, offset: u64, length: u64) -> io::Result<Option<Vec<u8>>> {
        let Some(size) = self.stat(digest)? else { return Ok(None) };
        let end = offset.saturating_add(length).min(size);
        if offset >= end {
            return Ok(Some(Vec::new()));
        }
        let options = GetOptions { range: Some(GetRange::Bounded(offset..end)), ..GetOptions::default() };
        let got = self.block(async { self.store.get_opts(&self.key(digest), options).await?.bytes().await });
        match got {
            Ok(bytes) => Ok(Some(bytes.to_vec())),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(to_io(e)),
        }
    }

    fn stream(&self, digest: &Digest, offset: u64, length: u64) -> BoxStream<'static, io::Result<Bytes>> {
        if length == 0 {
            return stream::empty().boxed();
        }
        let (store, key) = (self.store.clone(), self.key(digest));
        let options = GetOptions { range: Some(GetRange::Bounded(offset..offset + length)), ..GetOptions::default() };
        stream::once(async move { store.get_opts(&key, options).await.map(|r| r.into_stream()) }).try_flatten().map_err(to_io).boxed()
    }

    fn commit(&self, staged: &Path, digest: &Digest) -> io::Result<()> {
        let key = self.key(digest);
        let uploaded = self.block(self.upload(staged, &key));
        // The spool file is consumed whether or not the upload went through.
        let _ = std::fs::remove_file(staged);
        uploaded
    }

    fn list(&self, visit: &mut dyn FnMut(Listed)) -> io::Result<()> {
        let root = self.under_prefix("blobs");
        let strip = format!("{root}/");
        self.block(async {
            let mut objects = self.store.list(Some(&root));
            while let Some(meta) = objects.next().await {
                let meta = meta.map_err(to_io)?;
                let location = meta.location.to_string();
                // blobs/<algorithm>/<xx>/<hex>
                let Some(rest) = location.strip_prefix(&strip) else { continue };
                let mut parts = rest.split('/');
                let (Some(algo), Some(_), Some(hex), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else { continue };
                let Ok(digest) = format!("{algo}:{hex}").parse::<Digest>() else { continue };
                let modified = SystemTime::UNIX_EPOCH + Duration::from_secs(meta.last_modified.timestamp().max(0) as u64);
                visit(Listed { digest, size: meta.size, modified });
            }
            Ok(())
        })
    }

    fn delete(&self, digest: &Digest) -> io::Result<bool> {
        let key = self.key(digest);
        self.block(async {
            match self.store.head(&key).await {
                Err(e) if is_not_found(&e) => return Ok(false),
                Err(e) => return Err(to_io(e)),
                Ok(_) => {}
            }
            match self.store.delete(&key).await {
                Ok(()) => Ok(true),
                Err(e) if is_not_found(&e) => Ok(false),
                Err(e) => Err(to_io(e)),
            }
        })
    }

    fn presign(&self, digest: &Digest, ttl: Duration) -> io::Result<Option<String>> {
        let key = self.key(digest);
        let url = self.block(self.store.signed_url(http::Method::GET, &key, ttl)).map_err(to_io)?;
        Ok(Some(url.to_string()))
    }

    fn chunks(&self) -> Option<&dyn Chunks> {
        Some(self)
    }

    fn begin_upload(&self, digest: &Digest, staged: &Path, len: u64) -> io::Result<Option<Box<dyn Upload>>> {
        // A blob of one part goes up with one PUT of the verified staged file.
        if len <= part_size(len) {
            return Ok(None);
        }
        let file = std::fs::File::open(staged)?;
        Ok(Some(Box::new(S3Upload { parts: Parts::new(self, self.key(digest), file, len), len })))
    }
}

/// Upload sessions' chunks, as objects beside the blobs (see `Chunks`).
impl Chunks for S3Backend {
    fn put(&self, key: &str, staged: &Path) -> io::Result<()> {
        let uploaded = self.block(self.upload(staged, &self.under_prefix(key)));
        let _ = std::fs::remove_file(staged);
        uploaded
    }

    fn read(&self, key: &str, offset: u64, length: u64) -> io::Result<Vec<u8>> {
        if length == 0 {
            return Ok(Vec::new());
        }
        let options = GetOptions { range: Some(GetRange::Bounded(offset..offset.saturating_add(length))), ..GetOptions::default() };
        let key = self.under_prefix(key);
        self.block(async { self.store.get_opts(&key, options).await?.bytes().await }).map(|b| b.to_vec()).map_err(to_io)
    }

    fn stream(&self, key: &str) -> BoxStream<'static, io::Result<Bytes>> {
        let (store, key) = (self.store.clone(), self.under_prefix(key));
        stream::once(async move { store.get(&key).await.map(|r| r.into_stream()) }).try_flatten().map_err(to_io).boxed()
    }

    fn compose(&self, chunks: &[String], digest: &Digest, len: u64) -> io::Result<()> {
        let key = self.key(digest);
        match chunks {
            [] => self.block(self.store.put(&key, PutPayload::from(Vec::<u8>::new()))).map(drop).map_err(to_io),
            // One chunk (a monolithic or single-PATCH push): the store copies it, nothing
            // passes through this node. A copy appears whole or not at all.
            [one] if len <= COPY_MAX => self.block(self.store.copy(&self.under_prefix(one), &key)).map_err(to_io),
            _ => self.block(async {
                // Every chunk streamed, in order, into one multipart upload completed only
                // once all of it is in: the same bounded memory as a fill's upload.
                // Its two parts (one filling, one in flight) come out of the node's budget.
                let _held = self.budget.hold(2 * MIN_PART).await?;
                let upload = self.store.put_multipart(&key).await.map_err(to_io)?;
                let mut writer = WriteMultipart::new_with_chunk_size(upload, MIN_PART as usize);
                let mut sent = 0u64;
                let copied: io::Result<()> = async {
                    for chunk in chunks {
                        let mut bytes = Chunks::stream(self, chunk);
                        while let Some(piece) = bytes.next().await {
                            let piece = piece?;
                            writer.wait_for_capacity(1).await.map_err(to_io)?;
                            sent += piece.len() as u64;
                            writer.write(&piece);
                        }
                    }
                    if sent != len {
                        return Err(io::Error::other(format!("the session's chunks hold {sent} bytes, not {len}")));
                    }
                    Ok(())
                }
                .await;
                match copied {
                    Ok(()) => writer.finish().await.map(drop).map_err(to_io),
                    Err(e) => {
                        if let Err(abort) = writer.abort().await {
                            tracing::warn!(key = %key, error = %abort, "aborting a multipart upload failed; the bucket's lifecycle rule removes its parts");
                        }
                        Err(e)
                    }
                }
            }),
        }
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        match self.block(self.store.delete(&self.under_prefix(key))) {
            Err(e) if !is_not_found(&e) => Err(to_io(e)),
            _ => Ok(()),
        }
    }

    fn delete_under(&self, prefix: &str) -> io::Result<()> {
        let root = self.under_prefix(prefix.trim_end_matches('/'));
        self.block(async {
            let keys: Vec<Key> = self.store.list(Some(&root)).map_ok(|m| m.location).try_collect().await.map_err(to_io)?;
            for key in keys {
                match self.store.delete(&key).await {
                    Ok(()) => {}
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(to_io(e)),
                }
            }
            Ok(())
        })
    }

    fn list(&self, visit: &mut dyn FnMut(&str, SystemTime)) -> io::Result<()> {
        let root = self.under_prefix("uploads");
        let strip = match self.prefix.as_str() {
            "" => String::new(),
            p => format!("{p}/"),
        };
        self.block(async {
            let mut objects = self.store.list(Some(&root));
            while let Some(meta) = objects.next().await {
                let meta = meta.map_err(to_io)?;
                let location = meta.location.to_string();
                let Some(key) = location.strip_prefix(&strip) else { continue };
                let modified = SystemTime::UNIX_EPOCH + Duration::from_secs(meta.last_modified.timestamp().max(0) as u64);
                visit(key, modified);
            }
            Ok(())
        })
    }
}
