//! The S3 backend: blobs as objects `<prefix>/blobs/<algorithm>/<xx>/<hex>` in one bucket of an
//! S3-compatible store (AWS S3, MinIO, Ceph, SeaweedFS, s3s), through `object_store`.
//!
//! A commit uploads the verified spool file: small ones with one PUT, larger ones as a
//! multipart upload that is completed only once every part is in (and aborted otherwise), so
//! a failed commit leaves no object under the final key. A cache fill, whose digest is known
//! before its bytes arrive, uploads as it streams instead (`begin_upload`): the first part is
//! kept in memory, and a blob larger than one part goes up as a multipart upload, part by part
//! behind the fill, completed only after the fill verified the digest and aborted otherwise.
//! Parts the upload holds in memory are bounded (`STREAM_PART`, one in flight while the next
//! fills). An upload cut by a crash stays incomplete, invisible under the key: the bucket's
//! lifecycle rule for incomplete multipart uploads removes its parts (docs/storage.md).
//! Reads are ranged GETs streamed to the client. The blob store's interface is synchronous (the filesystem's is, and its callers run
//! on blocking threads); this backend runs each request on the server's runtime and waits.

use std::future::Future;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::signer::Signer;
use object_store::{ClientOptions, GetOptions, GetRange, ObjectStore, PutPayload, WriteMultipart};

use super::{Backend, Chunks, Listed, StorageConfig, Stored, Upload, blob_key};
use crate::digest::Digest;

/// Parts of a multipart upload; S3 wants at least 5 MiB for every part but the last.
const PART: usize = 8 * 1024 * 1024;
/// Parts in flight at once: what a commit holds in memory is at most this many parts.
const PARTS_IN_FLIGHT: usize = 2;
/// Parts of an upload made while a fill streams: S3's least part size, one part in flight while
/// the next one fills, so each fill holds at most two parts (10 MiB) whatever the blob's size.
const STREAM_PART: usize = 5 * 1024 * 1024;
/// The largest object S3 copies in one request; a session of one larger chunk is composed by
/// streaming it instead.
const COPY_MAX: u64 = 5 * 1024 * 1024 * 1024;

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
        Ok(S3Backend { store: Arc::new(b.build()?), prefix, runtime })
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
        let mut file = std::fs::File::open(staged)?;
        let len = file.metadata()?.len();
        if len <= PART as u64 {
            let mut buf = Vec::with_capacity(len as usize);
            file.read_to_end(&mut buf)?;
            self.store.put(key, PutPayload::from(buf)).await.map_err(to_io)?;
            return Ok(());
        }
        let upload = self.store.put_multipart(key).await.map_err(to_io)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
        let mut buf = vec![0u8; 1024 * 1024];
        let sent: io::Result<()> = async {
            loop {
                writer.wait_for_capacity(PARTS_IN_FLIGHT).await.map_err(to_io)?;
                let n = file.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                writer.write(&buf[..n]);
            }
        }
        .await;
        match sent {
            // Completed only now: until here no object exists under the key.
            Ok(()) => writer.finish().await.map(drop).map_err(to_io),
            Err(e) => {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(key = %key, error = %abort, "aborting a multipart upload failed; the bucket's lifecycle rule removes its parts");
                }
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

/// A blob uploaded as it arrives (see the module's comment).
struct S3Upload {
    store: Arc<AmazonS3>,
    key: Key,
    runtime: tokio::runtime::Handle,
    /// The bytes so far while they fit in one part: a small blob is one PUT at `complete`.
    first: Vec<u8>,
    multipart: Option<WriteMultipart>,
    written: u64,
}

impl S3Upload {
    fn block<F: Future>(&self, f: F) -> F::Output {
        block_on(&self.runtime, f)
    }
}

impl Upload for S3Upload {
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.written += data.len() as u64;
        if self.multipart.is_none() && self.first.len() + data.len() <= STREAM_PART {
            self.first.extend_from_slice(data);
            return Ok(());
        }
        let runtime = self.runtime.clone();
        let (store, key) = (self.store.clone(), self.key.clone());
        let first = std::mem::take(&mut self.first);
        let mut multipart = self.multipart.take();
        let result = block_on(&runtime, async {
            let writer = match &mut multipart {
                Some(w) => w,
                None => {
                    let upload = store.put_multipart(&key).await.map_err(to_io)?;
                    let w = multipart.insert(WriteMultipart::new_with_chunk_size(upload, STREAM_PART));
                    w.write(&first);
                    w
                }
            };
            // At most one part in flight before the buffer takes more: memory stays two parts.
            writer.wait_for_capacity(1).await.map_err(to_io)?;
            writer.write(data);
            Ok(())
        });
        self.multipart = multipart;
        result
    }

    fn complete(mut self: Box<Self>, len: u64) -> io::Result<()> {
        if len != self.written {
            return Err(io::Error::other(format!("upload of {} got {} bytes, the blob has {len}", self.key, self.written)));
        }
        match self.multipart.take() {
            // Completed only now: until here no object exists under the key.
            Some(writer) => self.block(writer.finish()).map(drop).map_err(to_io),
            None => {
                let first = std::mem::take(&mut self.first);
                self.block(self.store.put(&self.key, PutPayload::from(first))).map(drop).map_err(to_io)
            }
        }
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        // Not completed: the parts sent so far are discarded; nothing was ever under the key.
        if let Some(writer) = self.multipart.take() {
            let key = self.key.clone();
            self.runtime.spawn(async move {
                if let Err(e) = writer.abort().await {
                    tracing::warn!(key = %key, error = %e, "aborting a multipart upload failed; the bucket's lifecycle rule removes its parts");
                }
            });
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

    fn begin_upload(&self, digest: &Digest) -> io::Result<Option<Box<dyn Upload>>> {
        Ok(Some(Box::new(S3Upload {
            store: self.store.clone(),
            key: self.key(digest),
            runtime: self.runtime.clone(),
            first: Vec::new(),
            multipart: None,
            written: 0,
        })))
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
                let upload = self.store.put_multipart(&key).await.map_err(to_io)?;
                let mut writer = WriteMultipart::new_with_chunk_size(upload, STREAM_PART);
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
