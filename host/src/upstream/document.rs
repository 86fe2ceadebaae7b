//! `upstream.fetch`: an upstream document of any size (an index too large to hand a plugin
//! whole) fetched into the blob store, never into memory: the body is hashed as it streams to
//! a staged file and committed under its sha256, or refused past the plugin's `max-bytes` with
//! nothing stored. Concurrent fetches of the same key in one repository share one upstream
//! request (single-flight, like blob fills), and the fetch runs in a task of its own, so a
//! plugin call that gives up does not abort it for the others waiting on it.
//!
//! The fetch stays joinable until the plugin call that started it ends (its `Lease` is dropped
//! with the call), not only until the upstream answered: that call records the answer (or
//! decides not to keep it) after the fetch, and a call arriving in between would otherwise ask
//! the upstream a second time for what is about to be recorded. A call after it asks afresh.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use http::Method;
use tokio::sync::watch;

use super::{Upstream, UpstreamError, UpstreamRequest};
use crate::digest::{Algorithm, Digest};
use crate::repos::{RepoName, Repository};
use crate::storage::BlobStore;
use crate::storage::blobs::StagedBlob;

/// Bytes gathered before one write to the staged file (one hop to the blocking pool).
const WRITE_CHUNK: usize = 1024 * 1024;

/// The upstream's final answer; the body stored when it was a 2xx.
#[derive(Debug, Clone)]
pub struct Document {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub file: Option<(Digest, u64)>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum DocumentError {
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
    /// The document is larger than the plugin allowed: nothing was stored.
    #[error("upstream document over {max} bytes ({seen} seen)")]
    TooLarge { max: u64, seen: u64 },
    /// Our fault: staging or committing failed.
    #[error("storage: {0}")]
    Storage(String),
}

type Outcome = Option<Result<Document, DocumentError>>;

/// Fetches in flight, by repository and the plugin's key.
#[derive(Default)]
pub struct Documents {
    inflight: Mutex<HashMap<(RepoName, String), watch::Receiver<Outcome>>>,
}

/// Keeps a fetch joinable while the call that started it runs; dropped with that call.
pub struct Lease {
    upstream: Arc<Upstream>,
    key: (RepoName, String),
    rx: watch::Receiver<Outcome>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut inflight = self.upstream.documents.inflight.lock().unwrap_or_else(|e| e.into_inner());
        // Only its own fetch: a later one under the same key is left alone.
        if inflight.get(&self.key).is_some_and(|rx| rx.same_channel(&self.rx)) {
            inflight.remove(&self.key);
        }
    }
}

impl Upstream {
    /// Fetches `request` into `store` under the single-flight `key` of `repo`. The lease (for
    /// the call that started the fetch, None for one that joined it) keeps the fetch joinable
    /// until it is dropped.
    pub async fn fetch_document(
        self: &Arc<Self>,
        store: &BlobStore,
        repo: Arc<Repository>,
        key: String,
        request: UpstreamRequest,
        max_bytes: u64,
    ) -> (Result<Document, DocumentError>, Option<Lease>) {
        let map_key = (repo.name.clone(), key);
        let mut lease = None;
        let mut rx = {
            let mut inflight = self.documents.inflight.lock().unwrap_or_else(|e| e.into_inner());
            match inflight.get(&map_key) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    inflight.insert(map_key.clone(), rx.clone());
                    lease = Some(Lease { upstream: self.clone(), key: map_key.clone(), rx: rx.clone() });
                    let (up, store) = (self.clone(), store.clone());
                    let span = tracing::info_span!("document", repo = %repo.name, key = %map_key.1);
                    tokio::spawn(tracing::Instrument::instrument(
                        async move {
                            let outcome = up.fetch_once(&store, &repo, &request, max_bytes).await;
                            match &outcome {
                                Ok(d) => tracing::debug!(status = d.status, stored = ?d.file, "upstream document"),
                                Err(e) => tracing::info!(error = %e, "upstream document not stored"),
                            }
                            // Stays in the map until the lease is dropped (the module's note).
                            let _ = tx.send(Some(outcome));
                        },
                        span,
                    ));
                    rx
                }
            }
        };
        loop {
            if let Some(outcome) = rx.borrow_and_update().clone() {
                return (outcome, lease);
            }
            if rx.changed().await.is_err() {
                return (Err(DocumentError::Storage("document fetch ended without an answer".into())), lease);
            }
        }
    }

    async fn fetch_once(
        &self,
        store: &BlobStore,
        repo: &Repository,
        request: &UpstreamRequest,
        max: u64,
    ) -> Result<Document, DocumentError> {
        let mut resp = self.send(repo, request).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().iter().filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_owned(), v.to_owned()))).collect();
        // Not a document (an error page, a 304): its body is not stored, only the answer told.
        if !resp.status().is_success() || request.method == Method::HEAD {
            return Ok(Document { status, headers, file: None });
        }
        if let Some(len) = resp.content_length().filter(|l| *l > max) {
            return Err(DocumentError::TooLarge { max, seen: len });
        }
        let storage = |e: String| DocumentError::Storage(e);
        let mut staged = Some(store.stage(Algorithm::Sha256).map_err(|e| storage(e.to_string()))?);
        let mut buf = BytesMut::new();
        let mut seen = 0u64;
        let received = self.metrics.upstream_bytes_of(repo.name.as_str());
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.classify(&request.url, e))? {
            seen += chunk.len() as u64;
            received.inc_by(chunk.len() as u64);
            if seen > max {
                // `staged` is dropped unwritten: nothing of it stays.
                return Err(DocumentError::TooLarge { max, seen });
            }
            buf.extend_from_slice(&chunk);
            if buf.len() >= WRITE_CHUNK {
                staged = Some(write(staged.take(), buf.split()).await?);
            }
        }
        let staged = write(staged.take(), buf).await?;
        let size = staged.len();
        let digest = tokio::task::spawn_blocking(move || staged.commit(None))
            .await
            .map_err(|e| storage(e.to_string()))?
            .map_err(|e| storage(e.to_string()))?;
        Ok(Document { status, headers, file: Some((digest, size)) })
    }
}

/// Appends `bytes` to the staged file off the async threads.
async fn write(staged: Option<StagedBlob>, bytes: BytesMut) -> Result<StagedBlob, DocumentError> {
    let mut staged = staged.ok_or_else(|| DocumentError::Storage("staged document lost".into()))?;
    tokio::task::spawn_blocking(move || {
        std::io::Write::write_all(&mut staged, &bytes).map_err(|e| DocumentError::Storage(e.to_string()))?;
        Ok(staged)
    })
    .await
    .map_err(|e| DocumentError::Storage(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::config::UpstreamConfig;
    use crate::storage::Layout;

    /// A loopback server answering every GET with `body` (after a pause, so concurrent callers
    /// overlap), counting requests.
    async fn server(body: Vec<u8>, chunked: bool) -> (String, Arc<AtomicUsize>) {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let hits = Arc::new(AtomicUsize::new(0));
        let (count, body) = (hits.clone(), Arc::new(body));
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (count, body) = (count.clone(), body.clone());
                tokio::spawn(async move {
                    let Some(_head) = super::super::read_head_for_tests(&mut conn).await else { return };
                    count.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let length = if chunked { String::new() } else { format!("Content-Length: {}\r\n", body.len()) };
                    let _ = conn.write_all(format!("HTTP/1.1 200 OK\r\n{length}Connection: close\r\n\r\n").as_bytes()).await;
                    let _ = conn.write_all(&body).await;
                });
            }
        });
        (url, hits)
    }

    fn setup(url: &str) -> (tempfile::TempDir, BlobStore, Arc<Upstream>, Arc<Repository>) {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(Layout::new(dir.path())).unwrap();
        let config = UpstreamConfig {
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(2),
            down_for: Duration::from_secs(1),
            hold_last_byte: false,
            allow_networks: Vec::new(),
            ca_file: None,
        };
        let up = Arc::new(Upstream::new(config, Default::default()).unwrap());
        let repo = crate::repos::RepositoryInput {
            name: Some("r".into()),
            repo_type: Some("remote".into()),
            format: Some("docker".into()),
            url: Some(url.into()),
            ..Default::default()
        }
        .validate(None, &["docker".to_string()])
        .unwrap();
        (dir, store, up, Arc::new(repo))
    }

    #[tokio::test]
    async fn concurrent_fetches_of_one_key_share_one_upstream_request() {
        let body: Vec<u8> = (0..3 * WRITE_CHUNK + 17).map(|i| (i % 251) as u8).collect();
        let (url, hits) = server(body.clone(), false).await;
        let (_dir, store, up, repo) = setup(&url);
        let get = || super::super::parse_request("GET", &format!("{url}/index"), &[], false).unwrap();
        let calls = (0..5).map(|_| up.fetch_document(&store, repo.clone(), "index".into(), get(), 1 << 30));
        let docs = futures_util::future::join_all(calls).await;
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        let expected = Digest::of(Algorithm::Sha256, &body);
        assert_eq!(docs.iter().filter(|(_, lease)| lease.is_some()).count(), 1, "one call started the fetch");
        for (doc, _) in docs {
            let doc = doc.unwrap();
            assert_eq!((doc.status, doc.file), (200, Some((expected.clone(), body.len() as u64))));
        }
        assert_eq!(store.read_range(&expected, 0, u64::MAX).unwrap(), body);
    }

    /// Guards `Lease`: a call that comes after the fetch ended but while the call that started
    /// it still runs (recording the answer) joins it instead of asking the upstream again; once
    /// that call ends, the next asks afresh (a revalidation must reach the upstream).
    #[tokio::test]
    async fn a_fetch_stays_joinable_until_the_call_that_started_it_ends() {
        let (url, hits) = server(b"list".to_vec(), false).await;
        let (_dir, store, up, repo) = setup(&url);
        let get = || super::super::parse_request("GET", &format!("{url}/list"), &[], false).unwrap();
        let (first, lease) = up.fetch_document(&store, repo.clone(), "list".into(), get(), 1 << 20).await;
        assert!(lease.is_some());
        let (second, joined) = up.fetch_document(&store, repo.clone(), "list".into(), get(), 1 << 20).await;
        assert!(joined.is_none());
        assert_eq!((hits.load(Ordering::SeqCst), second.unwrap().file), (1, first.unwrap().file));
        drop(lease);
        let (_, again) = up.fetch_document(&store, repo, "list".into(), get(), 1 << 20).await;
        assert!(again.is_some());
        assert_eq!(hits.load(Ordering::SeqCst), 2, "after the call ended, the upstream is asked again");
    }

    /// Guards both refusals: by Content-Length before any byte, and while streaming without one.
    #[tokio::test]
    async fn a_document_past_max_bytes_is_refused_and_nothing_is_stored() {
        for chunked in [false, true] {
            let body = vec![7u8; 2 * WRITE_CHUNK];
            let (url, _) = server(body.clone(), chunked).await;
            let (dir, store, up, repo) = setup(&url);
            let get = super::super::parse_request("GET", &format!("{url}/index"), &[], false).unwrap();
            let err = up.fetch_document(&store, repo, "k".into(), get, WRITE_CHUNK as u64).await.0.unwrap_err();
            assert!(matches!(err, DocumentError::TooLarge { max, .. } if max == WRITE_CHUNK as u64), "{err:?}");
            assert_eq!(store.stat(&Digest::of(Algorithm::Sha256, &body)).unwrap(), None);
            assert_eq!(std::fs::read_dir(dir.path().join("staging")).unwrap().count(), 0, "no staged file left");
        }
    }
}
