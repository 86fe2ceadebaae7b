//! Single-flight cache fills: however many clients of a repository ask for an uncached blob at
//! once, it is fetched from upstream once. A fill is joined only by requests of the repository
//! that started it: another remote's upstream may serve other bytes under the same digest, and
//! its clients must get (and fail on) their own remote's answer, never ride on this one's.
//! Fills under way are bounded per repository and in all (`FillLimits`); past the bound a new
//! fill is refused at once, and an upstream that sends too slowly is cut (`RateFloor`), so a
//! remote that dribbles bytes cannot keep the slots. The bytes go to a staging file and every waiting client streams
//! from that file as it grows, so they get the bytes as they arrive, not after the download.
//!
//! The fill runs in its own task: a client that disconnects does not abort it. The content is
//! hashed by a second thread (hashing is slower than the network here, so it must not sit in
//! the write path), verified, and only then committed by rename: a fill that fails or does not
//! match leaves nothing behind.
//!
//! A staging file reserved at the announced length (1 MiB or more) is mapped (storage/mapped.rs):
//! readers hand out slices of the map up to what is written, and the connection sends them from
//! the page cache with `sendfile`, so a cold blob is copied once (into the staging file) on its
//! way through, not three times. Where there is no map (no Content-Length, a filesystem without
//! `fallocate`, a small blob), the last few MiB written are kept in memory (`Recent`) for readers
//! that keep up, and a reader that falls behind reads the file. Memory stays bounded however
//! large the blob.
//!
//! What clients get before verification is a policy (`upstream_hold_last_byte`):
//! - streamed (the default): clients get every byte as it is written, as from nginx or the
//!   distribution proxy. Every OCI client checks a blob's digest itself, so a wrong blob is
//!   refused by the client and never stored here; a mismatch found while a client is still
//!   reading aborts its response. The hasher starts when the transfer has ended and runs at a
//!   lower CPU priority, so that it never slows a transfer (where SHA-256 is slower than the
//!   network, it could not keep up anyway).
//! - held: the last byte waits for the digest, so a wrong blob is never completed to anyone;
//!   a cold GET then takes at least as long as hashing the blob. The hasher reads right behind
//!   the writer, at normal priority.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use super::{Upstream, UpstreamError, UpstreamRequest};
use crate::config::FillLimits;
use crate::digest::{Digest, Hasher};
use crate::repos::{RepoName, Repository};
use crate::storage::backend::Upload;
use crate::storage::{BlobStore, mapped};

/// Progress is published to readers at least this often (bytes), and at the end.
const PUBLISH_EVERY: u64 = 256 * 1024;
/// What a hasher reads at a time: one buffer per fill being verified.
const HASH_CHUNK: usize = 256 * 1024;
/// Bytes received from upstreams and not yet written to their staging files, over all fills of
/// the node, in KiB. Past it a fill stops reading its upstream until its writer catches up (the
/// upstream waits on TCP), so what waits in memory stays bounded however many fills run at once
/// (a queue bounded in chunks alone let each fill hold tens of its upstream's buffers).
const QUEUED_KIB: u32 = 2 * 1024;
/// How much of what was last written stays in memory for readers that keep up. When the upstream
/// is faster than the client (a LAN upstream; loopback in the bench), a client that loses the CPU
/// for a few ms falls this far behind: at 4 MiB ~12% of a lone cold 500 MiB GET's server CPU went
/// to reading the staging file back (perf: `pread64`), at 8 MiB ~0%; 16 MiB was no better.
const RECENT_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, Clone, thiserror::Error)]
pub enum FillError {
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
    #[error("upstream answered {0}")]
    Status(u16),
    #[error("upstream sent {actual} bytes, announced {announced}")]
    Length { announced: u64, actual: u64 },
    #[error("upstream content hashes to {actual}, expected {expected}")]
    DigestMismatch { expected: String, actual: String },
    #[error("no bytes from upstream for {0} s")]
    Stalled(u64),
    #[error("upstream sent {got} bytes in {seconds} s, slower than the {min} bytes/s allowed")]
    TooSlow { got: u64, seconds: u64, min: u64 },
    /// Not the upstream's fault nor ours: this many transfers are already under way.
    #[error("{open} upstream transfers are under way {scope}, the most allowed; retry later")]
    TooMany { open: usize, scope: &'static str },
    /// Our fault: staging or committing failed.
    #[error("storage: {0}")]
    Storage(String),
    /// A file of unknown digest was larger than the plugin allowed: nothing is stored.
    #[error("upstream file over {max} bytes ({seen} seen)")]
    TooLarge { max: u64, seen: u64 },
    /// The disk has no room for this blob: unavailable (503), not a bug.
    #[error("storage: {0}")]
    NoRoom(String),
}

#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// The upstream answered with a success status; `total` is its Content-Length.
    pub started: bool,
    pub total: Option<u64>,
    /// Bytes in the staging file that readers may read.
    pub written: u64,
    /// Every byte the upstream sent is in the staging file (`written` is final), though not
    /// yet verified.
    pub received: bool,
    /// Set once: the verified, committed size, or why the fill failed.
    pub outcome: Option<Result<u64, FillError>>,
    /// With a successful outcome: the digest the content was stored under.
    pub stored: Option<Digest>,
}

/// One fill in flight; readers share the staging file through `reader` (positional reads,
/// so the file can be renamed into place under them).
pub struct Fill {
    /// The digest the content must have; none for a file whose digest is learnt by hashing it
    /// (stored under its sha256).
    pub digest: Option<Digest>,
    pub reader: Arc<File>,
    /// The bytes last written, for readers that keep up where there is no map, and for a held
    /// fill's hasher.
    pub recent: Arc<Recent>,
    /// The whole staging file mapped, once it is reserved at the announced length: readers
    /// hand out slices of it, which a connection sends from the page cache (server/zero_copy.rs).
    pub mapped: std::sync::OnceLock<Bytes>,
    pub progress: watch::Receiver<Progress>,
    /// Readers wait for verification before the last byte (`upstream_hold_last_byte`).
    pub hold_last_byte: bool,
    /// The fill fails, storing nothing, past this many bytes (a file's `max-bytes`).
    pub max_bytes: Option<u64>,
}

impl Progress {
    /// How far a reader may read now, and whether that is the end of the blob.
    pub fn readable(&self, hold_last_byte: bool) -> Result<(u64, bool), FillError> {
        match &self.outcome {
            Some(Ok(size)) => Ok((*size, true)),
            Some(Err(e)) => Err(e.clone()),
            None if hold_last_byte => Ok((self.written.saturating_sub(1), false)),
            // A short body is not the end: the fill is about to fail on its length.
            None => Ok((self.written, self.received && self.total.is_none_or(|t| t == self.written))),
        }
    }
}

/// The most recently written chunks of a fill, in order and contiguous. Chunks are the upstream
/// body's own buffers (reference-counted), so keeping and handing them out copies nothing.
#[derive(Default)]
pub struct Recent {
    inner: Mutex<RecentChunks>,
}

#[derive(Default)]
struct RecentChunks {
    /// (offset in the blob, bytes)
    chunks: VecDeque<(u64, Bytes)>,
    bytes: usize,
}

impl Recent {
    pub(crate) fn push(&self, offset: u64, chunk: Bytes) {
        let mut r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        r.bytes += chunk.len();
        r.chunks.push_back((offset, chunk));
        while r.bytes > RECENT_BYTES && r.chunks.len() > 1 {
            if let Some((_, old)) = r.chunks.pop_front() {
                r.bytes -= old.len();
            }
        }
    }

    /// Bytes from `pos` up to `limit` (exclusive) out of one kept chunk, if `pos` is still kept.
    pub fn get(&self, pos: u64, limit: u64) -> Option<Bytes> {
        let r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let i = r.chunks.partition_point(|(off, b)| off + b.len() as u64 <= pos);
        let (off, chunk) = r.chunks.get(i)?;
        if *off > pos || pos >= limit {
            return None;
        }
        let from = (pos - off) as usize;
        let to = ((limit - off) as usize).min(chunk.len());
        Some(chunk.slice(from..to))
    }
}

pub enum Joined {
    /// The blob was committed meanwhile: serve it from the store.
    Stored,
    /// A file fill of the same key committed moments ago, under this digest.
    StoredAs(Digest, u64),
    Filling(Arc<Fill>),
}

/// What a fill fetches: a blob of known digest, or a file under the plugin's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Digest(Digest),
    File(String),
}

/// A fill in flight is found by its repository and target, never by digest alone.
type FillKey = (RepoName, Target);

/// File fills committed recently, remembered so that a request arriving between the commit and
/// the plugin recording it (`file-fetched`) is served the stored file instead of fetching again.
const RECENT_FILES: usize = 1024;
const RECENT_FILE_TTL: Duration = Duration::from_secs(60);

pub struct Fills {
    store: BlobStore,
    upstream: Arc<Upstream>,
    limits: FillLimits,
    inflight: Mutex<HashMap<FillKey, Arc<Fill>>>,
    /// Counts fills leaving `inflight`: a lookup in the store made before taking the lock is
    /// still good under it only if no fill left (committed) in between.
    left: std::sync::atomic::AtomicU64,
    /// The node's budget of received bytes waiting for their writers (`QUEUED_KIB`).
    queued: Arc<tokio::sync::Semaphore>,
    recent_files: Mutex<HashMap<FillKey, (Digest, u64, Instant)>>,
    #[cfg(test)]
    panic_in_run: std::sync::atomic::AtomicBool,
}

/// A fill's place in the single-flight map, and its staging file until it is committed. Given
/// back on drop, so a fill that ends in any way (an error, a panic in its task, the task dropped)
/// lets the next request start a fill again instead of joining one that never finishes (the
/// model: pingora-cache's lock, where a dropped writer hands over). Only its own entry is removed:
/// a later fill under the same key is left alone.
struct Slot {
    fills: Arc<Fills>,
    key: FillKey,
    fill: Arc<Fill>,
    staged: Option<PathBuf>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(path) = self.staged.take() {
            let _ = std::fs::remove_file(path);
        }
        let mut inflight = self.fills.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if inflight.get(&self.key).is_some_and(|f| Arc::ptr_eq(f, &self.fill)) {
            inflight.remove(&self.key);
            self.fills.left.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
    }
}

impl Fills {
    pub fn new(store: BlobStore, upstream: Arc<Upstream>, limits: FillLimits) -> Arc<Fills> {
        Arc::new(Fills {
            store,
            upstream,
            limits,
            inflight: Mutex::new(HashMap::new()),
            left: Default::default(),
            queued: Arc::new(tokio::sync::Semaphore::new(QUEUED_KIB as usize)),
            recent_files: Mutex::new(HashMap::new()),
            #[cfg(test)]
            panic_in_run: Default::default(),
        })
    }

    /// Why a new fill for `repo` may not start now, if it may not.
    fn over_limit(&self, inflight: &HashMap<FillKey, Arc<Fill>>, repo: &RepoName) -> Option<FillError> {
        if inflight.len() >= self.limits.total {
            return Some(FillError::TooMany { open: inflight.len(), scope: "on this server" });
        }
        // At most `total` entries: counting them is cheaper than keeping counts that must agree.
        let mine = inflight.keys().filter(|(r, _)| r == repo).count();
        (mine >= self.limits.per_repository).then_some(FillError::TooMany { open: mine, scope: "for this repository" })
    }

    pub fn in_flight(&self) -> usize {
        self.inflight.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Joins `repo`'s fill for `digest`, or starts it.
    pub fn join_or_start(self: &Arc<Self>, repo: Arc<Repository>, digest: Digest, request: UpstreamRequest) -> Result<Joined, FillError> {
        self.join_or_start_target(repo, Target::Digest(digest), request, None).map(|(joined, _)| joined)
    }

    /// Joins `repo`'s fill of the file under `key`, or starts it (then the bool is true: the
    /// caller is the one to have the plugin record it).
    pub fn join_or_start_file(
        self: &Arc<Self>,
        repo: Arc<Repository>,
        key: String,
        request: UpstreamRequest,
        max_bytes: u64,
    ) -> Result<(Joined, bool), FillError> {
        self.join_or_start_target(repo, Target::File(key), request, Some(max_bytes))
    }

    fn join_or_start_target(
        self: &Arc<Self>,
        repo: Arc<Repository>,
        target: Target,
        request: UpstreamRequest,
        max_bytes: Option<u64>,
    ) -> Result<(Joined, bool), FillError> {
        let count = |result| self.upstream.metrics().blob_fetch(repo.name.as_str(), result);
        let key: FillKey = (repo.name.clone(), target.clone());
        // Joining a fill under way needs no lookup.
        if let Some(fill) = self.inflight.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            count("joined");
            return Ok((Joined::Filling(fill.clone()), false));
        }
        // The store is asked before the lock is taken: on S3 a lookup is a request, and the
        // runtime thread that waits for it must not hold a lock other runtime threads block on
        // (with every one of them blocked, nothing drives the request: the node hangs). A fill
        // commits before it leaves the map, so a blob is either in flight or stored here, never
        // fetched twice: a lookup is taken as still true under the lock unless a fill left the
        // map since, and made again otherwise.
        let (mut inflight, digest) = loop {
            let generation = self.left.load(std::sync::atomic::Ordering::Acquire);
            let found = match &target {
                Target::Digest(d) => self.store.stat(d).map_err(|e| FillError::Storage(e.to_string()))?.map(|_| (d.clone(), 0)),
                Target::File(_) => {
                    let recent = {
                        let mut recent = self.recent_files.lock().unwrap_or_else(|e| e.into_inner());
                        recent.retain(|_, (_, _, at)| at.elapsed() < RECENT_FILE_TTL);
                        recent.get(&key).map(|(d, size, _)| (d.clone(), *size))
                    };
                    recent.filter(|(d, _)| self.store.stat(d).ok().flatten().is_some())
                }
            };
            let inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(fill) = inflight.get(&key) {
                count("joined");
                return Ok((Joined::Filling(fill.clone()), false));
            }
            if self.left.load(std::sync::atomic::Ordering::Acquire) != generation {
                continue;
            }
            match (found, &target) {
                (Some(_), Target::Digest(_)) => {
                    count("stored");
                    return Ok((Joined::Stored, false));
                }
                (Some((d, size)), Target::File(_)) => {
                    count("stored");
                    return Ok((Joined::StoredAs(d, size), false));
                }
                (None, Target::Digest(d)) => break (inflight, Some(d.clone())),
                (None, Target::File(_)) => break (inflight, None),
            }
        };
        if let Some(refused) = self.over_limit(&inflight, &repo.name) {
            count("refused");
            return Err(refused);
        }
        let path = self.store.layout().staged();
        // The path goes to the log only: the error reaches clients.
        let staging = |e: std::io::Error| {
            tracing::warn!(path = %path.display(), error = %e, "cannot create a staging file");
            self.store.health().note(&e);
            FillError::Storage(format!("cannot stage the blob: {e}"))
        };
        let writer = File::create(&path).map_err(staging)?;
        let reader = File::open(&path).map_err(staging)?;
        // The reader lives in the fill until it is committed: the file is in use until then.
        crate::storage::blobs::hold_staged(&reader).map_err(staging)?;
        let (tx, rx) = watch::channel(Progress::default());
        let hold_last_byte = self.upstream.config().hold_last_byte;
        let fill = Arc::new(Fill {
            digest: digest.clone(),
            reader: Arc::new(reader),
            recent: Arc::new(Recent::default()),
            mapped: std::sync::OnceLock::new(),
            progress: rx,
            hold_last_byte,
            max_bytes,
        });
        inflight.insert(key.clone(), fill.clone());
        drop(inflight);
        count("started");

        // From here the map entry is the slot's: released when the task ends, however it ends.
        let slot = Slot { fills: self.clone(), key: key.clone(), fill: fill.clone(), staged: Some(path.clone()) };
        let fills = self.clone();
        let this_fill = fill.clone();
        let span = match &target {
            Target::Digest(d) => tracing::info_span!("fill", digest = %d, repo = %repo.name),
            Target::File(k) => tracing::info_span!("fill", file = %k, repo = %repo.name),
        };
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let mut slot = slot;
                let started = std::time::Instant::now();
                let tx = Arc::new(tx);
                let (outcome, upload) = match fills.run(&repo, &this_fill, &request, writer, path.clone(), tx.clone()).await {
                    Ok((size, digest, upload)) => (Ok((size, digest)), upload),
                    Err(e) => (Err(e), None),
                };
                // Verified bytes may be completed to clients now; the durable commit (fsync and
                // rename) follows, and the fill leaves the map only after it, so a newcomer
                // either joins this fill or finds the blob stored.
                tx.send_modify(|p| match &outcome {
                    Ok((size, _)) => {
                        p.written = *size;
                        p.outcome = Some(Ok(*size));
                    }
                    Err(e) => p.outcome = Some(Err(e.clone())),
                });
                let committed = match outcome {
                    Ok((size, digest)) => {
                        let store = fills.store.clone();
                        let path = path.clone();
                        let stored = digest.clone();
                        let commit = move || {
                            if let Some(upload) = upload {
                                match store.complete_upload(upload, &path, &stored, size) {
                                    Ok(()) => return Ok(()),
                                    // The staged file is still there: it goes up whole.
                                    Err(e) => tracing::warn!(error = %e, "completing the upload made while streaming failed"),
                                }
                            }
                            store.commit_verified(&path, &stored)
                        };
                        match tokio::task::spawn_blocking(commit).await {
                            Ok(Ok(())) => Ok((size, digest)),
                            Ok(Err(e)) => Err(e.to_string()),
                            Err(e) => Err(e.to_string()),
                        }
                    }
                    Err(e) => Err(e.to_string()),
                };
                if let Ok((size, digest)) = &committed {
                    slot.staged = None;
                    if matches!(key.1, Target::File(_)) {
                        let mut recent = fills.recent_files.lock().unwrap_or_else(|e| e.into_inner());
                        if recent.len() >= RECENT_FILES {
                            recent.clear();
                        }
                        recent.insert(key.clone(), (digest.clone(), *size, Instant::now()));
                    }
                    tx.send_modify(|p| p.stored = Some(digest.clone()));
                } else if let Err(e) = &committed {
                    // the commit itself failed after a good transfer: readers waiting for the digest hear so
                    tx.send_modify(|p| {
                        if p.outcome.as_ref().is_some_and(|o| o.is_ok()) {
                            p.outcome = Some(Err(FillError::Storage(e.clone())));
                        }
                    });
                }
                let committed = committed.map(|(size, _)| size);
                fills.upstream.metrics().fill_ended(repo.name.as_str(), committed.is_ok());
                match committed {
                    Ok(size) => tracing::info!(size, ms = started.elapsed().as_millis() as u64, "fill committed"),
                    Err(e) => tracing::warn!(error = %e, "fill failed; nothing stored"),
                }
                drop(slot);
            },
            span,
        ));
        Ok((Joined::Filling(fill), true))
    }

    /// Where a test makes the fill's task panic.
    #[cfg(test)]
    fn fault(&self) {
        if self.panic_in_run.swap(false, std::sync::atomic::Ordering::SeqCst) {
            panic!("a fault injected into the fill");
        }
    }

    async fn run(
        &self,
        repo: &Repository,
        fill: &Fill,
        request: &UpstreamRequest,
        writer: File,
        path: PathBuf,
        tx: Arc<watch::Sender<Progress>>,
    ) -> Result<(u64, Digest, Option<Box<dyn Upload>>), FillError> {
        let max_bytes = fill.max_bytes;
        let recent = fill.recent.clone();
        let mut resp = self.upstream.send(repo, request).await?;
        if !resp.status().is_success() {
            return Err(FillError::Status(resp.status().as_u16()));
        }
        #[cfg(test)]
        self.fault();
        let algorithm = fill.digest.as_ref().map_or(crate::digest::Algorithm::Sha256, Digest::algorithm);
        let total = resp.content_length();
        // Refused before any client gets a status: nothing is staged.
        if let (Some(max), Some(len)) = (max_bytes, total)
            && len > max
        {
            return Err(FillError::TooLarge { max, seen: len });
        }
        let max = max_bytes.unwrap_or(u64::MAX);
        let mut seen = 0u64;
        if let Some(len) = total {
            preallocate(&writer, len)?;
            // Where the reservation did not take (no fallocate), the file grows as it is written
            // and is not mapped: a map must never reach past the file's end.
            if len >= mapped::MAP_MIN {
                match mapped::map(fill.reader.clone(), len) {
                    Ok(map) => {
                        let _ = fill.mapped.set(map);
                    }
                    Err(e) => tracing::debug!(error = %e, "staging file not mapped; readers read it"),
                }
            }
        }
        tx.send_modify(|p| {
            p.started = true;
            p.total = total;
        });

        let shared = Arc::new(Shared::default());
        let (chunks_tx, chunks_rx) = mpsc::channel::<(Bytes, tokio::sync::OwnedSemaphorePermit)>(32);
        let write_task = tokio::task::spawn_blocking({
            let shared = shared.clone();
            let tx = tx.clone();
            // Readers of a mapped fill take their bytes from the map, so only a held fill's
            // hasher would use the kept chunks: the upstream's buffers are freed once written.
            let recent = (fill.mapped.get().is_none() || fill.hold_last_byte).then(|| recent.clone());
            move || write_loop(writer, chunks_rx, &shared, recent.as_deref(), &tx)
        });
        let hash_task = {
            let shared = shared.clone();
            let reader = File::open(&path).map_err(|e| FillError::Storage(e.to_string()))?;
            let hasher = Hasher::new(algorithm);
            // Streamed fills verify behind the clients: the hasher starts once every byte is in
            // and yields the CPU to other transfers. Hashing alongside the transfer made a cold
            // 500 MiB GET ~10% slower on 2 cores even at the lowest priority (0.81 s → 0.72 s
            // mean of 6 deferred), and no client waits for the verdict in this mode.
            let background = !self.upstream.config().hold_last_byte;
            spawn_thread("fill-hash", move || {
                if background {
                    lower_thread_priority();
                }
                hash_loop(reader, hasher, &shared, &recent, background)
            })?
        };

        // Where the backend keeps blobs elsewhere (S3), the bytes go up while they stream: the
        // backend reads them back from the staging file behind the writer, so clients never wait
        // for it; completed by the caller once verified. A blob of unknown length goes up whole.
        let upload = match (fill.digest.as_ref(), total) {
            (Some(d), Some(len)) => self.store.begin_upload(d, &path, len),
            _ => None,
        };
        let upload_task = match upload {
            Some(upload) => {
                let shared = shared.clone();
                Some(spawn_thread("fill-upload", move || upload_loop(upload, &shared))?)
            }
            None => None,
        };

        let idle = self.upstream.config().idle_timeout;
        let received_bytes = self.upstream.metrics().upstream_bytes_of(repo.name.as_str());
        let mut floor = RateFloor::new(&self.limits, Instant::now());
        let mut last_byte = Instant::now();
        let received: Result<(), FillError> = async {
            loop {
                // Woken by the next chunk, the idle timeout, or the end of a rate window.
                let idle_end = last_byte + idle;
                match tokio::time::timeout_at(idle_end.min(floor.window_end()).into(), resp.chunk()).await {
                    Err(_) if Instant::now() >= idle_end => return Err(FillError::Stalled(idle.as_secs())),
                    Err(_) => floor.record(0, Instant::now())?,
                    Ok(Err(e)) => return Err(UpstreamError::Unreachable(e.to_string()).into()),
                    Ok(Ok(None)) => return Ok(()),
                    Ok(Ok(Some(chunk))) => {
                        seen += chunk.len() as u64;
                        if seen > max {
                            return Err(FillError::TooLarge { max, seen });
                        }
                        last_byte = Instant::now();
                        floor.record(chunk.len() as u64, last_byte)?;
                        received_bytes.inc_by(chunk.len() as u64);
                        // A chunk larger than the whole budget takes all of it.
                        let kib = u32::try_from(chunk.len().div_ceil(1024)).unwrap_or(u32::MAX).min(QUEUED_KIB);
                        let Ok(queued) = self.queued.clone().acquire_many_owned(kib).await else {
                            return Err(FillError::Storage("the node's receive budget is closed".into()));
                        };
                        if chunks_tx.send((chunk, queued)).await.is_err() {
                            return Err(FillError::Storage("staging writer stopped".into()));
                        }
                    }
                }
            }
        }
        .await;
        // Failed before the writer learns the body ended, so it never reports a cut body as
        // whole: without a Content-Length, readers would take that for the end.
        if received.is_err() {
            shared.fail();
        }
        drop(chunks_tx);
        let written = write_task.await.map_err(|e| FillError::Storage(e.to_string()))?;
        let hashed = hash_task.await.map_err(|_| FillError::Storage("hashing thread died".into()))?;
        // Dropped on every error below: an upload not completed is aborted.
        let upload = match upload_task {
            Some(task) => task.await.ok().flatten(),
            None => None,
        };
        received?;
        let written = written?;
        if let Some(announced) = total.filter(|t| *t != written) {
            return Err(FillError::Length { announced, actual: written });
        }
        let actual = hashed.ok_or_else(|| FillError::Storage("hashing stopped".into()))?;
        if let Some(digest) = fill.digest.as_ref().filter(|d| **d != actual) {
            return Err(FillError::DigestMismatch { expected: digest.to_string(), actual: actual.to_string() });
        }
        Ok((written, actual, upload))
    }
}

/// The slowest transfer a fill may be: at least `min_bytes_per_second` × `rate_window` bytes in
/// every window. The idle timeout alone does not bound a fill's time: a byte every few seconds
/// keeps it alive.
struct RateFloor {
    min_per_window: u64,
    min_per_second: u64,
    window: Duration,
    start: Instant,
    got: u64,
}

impl RateFloor {
    fn new(limits: &FillLimits, now: Instant) -> RateFloor {
        let min_per_window = limits.min_bytes_per_second.saturating_mul(limits.rate_window.as_secs());
        RateFloor { min_per_window, min_per_second: limits.min_bytes_per_second, window: limits.rate_window, start: now, got: 0 }
    }

    fn window_end(&self) -> Instant {
        self.start + self.window
    }

    /// Counts `n` bytes received at `now`; at a window's end, fails if it got too few.
    fn record(&mut self, n: u64, now: Instant) -> Result<(), FillError> {
        self.got = self.got.saturating_add(n);
        if now < self.window_end() {
            return Ok(());
        }
        if self.got < self.min_per_window {
            let seconds = now.duration_since(self.start).as_secs();
            return Err(FillError::TooSlow { got: self.got, seconds, min: self.min_per_second });
        }
        self.start = now;
        self.got = 0;
        Ok(())
    }
}

/// Writer → hasher hand-off: how far the file is written, and whether writing ended.
#[derive(Default)]
struct Shared {
    state: Mutex<WriteState>,
    cond: Condvar,
}

#[derive(Default, Clone, Copy)]
struct WriteState {
    written: u64,
    done: bool,
    failed: bool,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut WriteState)) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s);
        self.cond.notify_all();
    }

    fn fail(&self) {
        self.update(|s| s.failed = true);
    }

    /// Waits until writing ended, well or not.
    fn wait_end(&self) -> WriteState {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while !s.done && !s.failed {
            s = self.cond.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        *s
    }

    /// Waits until more than `seen` bytes are written or writing ended.
    fn wait_past(&self, seen: u64) -> WriteState {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while s.written <= seen && !s.done && !s.failed {
            s = self.cond.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        *s
    }
}

fn write_loop(
    mut file: File,
    mut chunks: mpsc::Receiver<(Bytes, tokio::sync::OwnedSemaphorePermit)>,
    shared: &Shared,
    recent: Option<&Recent>,
    tx: &watch::Sender<Progress>,
) -> Result<u64, FillError> {
    let mut written = 0u64;
    let mut published = 0u64;
    let mut count = 0u64;
    let result = (|| {
        // The chunk's share of the node's receive budget is given back once it is written.
        while let Some((chunk, _queued)) = chunks.blocking_recv() {
            count += 1;
            file.write_all(&chunk).map_err(|e| FillError::Storage(e.to_string()))?;
            let len = chunk.len() as u64;
            if let Some(recent) = recent {
                recent.push(written, chunk);
            }
            written += len;
            shared.update(|s| s.written = written);
            if written - published >= PUBLISH_EVERY {
                published = written;
                tx.send_modify(|p| p.written = written);
            }
        }
        file.flush().map_err(|e| FillError::Storage(e.to_string()))?;
        Ok(written)
    })();
    match &result {
        Ok(_) if shared.state.lock().unwrap_or_else(|e| e.into_inner()).failed => {}
        Ok(_) => {
            tracing::debug!(bytes = written, chunks = count, "staged");
            tx.send_modify(|p| {
                p.written = written;
                p.received = true;
            });
            shared.update(|s| s.done = true);
        }
        Err(_) => shared.fail(),
    }
    result
}

/// Reserves the blob's announced length in the staging file before any byte is written, so
/// that a disk without room for it fails the fill now, before clients get a status or the
/// upstream sends gigabytes, rather than at the end. It also spares the writes the filesystem's
/// per-page block reservation (ext4 delayed allocation: ~5% of a cold 500 MiB GET's server CPU,
/// 546 vs 574–596 ms). A short body still fails on its length, and the file is removed.
fn preallocate(file: &File, len: u64) -> Result<(), FillError> {
    use rustix::io::Errno;
    if len == 0 {
        return Ok(());
    }
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, len) {
        Ok(()) => Ok(()),
        Err(e) if [Errno::NOSPC, Errno::DQUOT, Errno::FBIG].contains(&e) => {
            Err(FillError::NoRoom(format!("no room to stage the {len}-byte blob: {e}")))
        }
        // Filesystems without fallocate: blocks are found as the bytes are written.
        Err(e) => {
            tracing::debug!(error = %e, "could not preallocate the staging file");
            Ok(())
        }
    }
}

/// Runs `f` on a thread of its own (not tokio's blocking pool, whose threads are shared and must
/// keep their priority) and hands back its result.
fn spawn_thread<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<tokio::sync::oneshot::Receiver<T>, FillError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| FillError::Storage(format!("cannot start a thread: {e}")))?;
    Ok(rx)
}

/// Nice 10 for the calling thread (on Linux the nice value is per thread): it still gets a
/// share of a busy CPU, so verification is late, never starved.
fn lower_thread_priority() {
    // SAFETY: plain syscalls on the calling thread's own id; no memory is passed.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower the hashing thread's priority");
    }
}

/// Tells the upload how much of the staging file is written, as it grows; the upload back once
/// every byte is in it, None when the fill or the upload failed (then the upload is dropped,
/// which aborts it).
fn upload_loop(mut upload: Box<dyn Upload>, shared: &Shared) -> Option<Box<dyn Upload>> {
    let mut pos = 0u64;
    loop {
        let state = shared.wait_past(pos);
        if state.failed {
            return None;
        }
        if let Err(e) = upload.staged(state.written) {
            tracing::warn!(error = %e, "upload while streaming failed; the blob goes up once verified");
            return None;
        }
        pos = state.written;
        if state.done {
            return Some(upload);
        }
    }
}

fn hash_loop(reader: File, mut hasher: Hasher, shared: &Shared, recent: &Recent, after_transfer: bool) -> Option<Digest> {
    let mut buf = vec![0u8; HASH_CHUNK];
    let mut pos = 0u64;
    if after_transfer && shared.wait_end().failed {
        return None;
    }
    loop {
        let state = shared.wait_past(pos);
        if state.failed {
            return None;
        }
        while pos < state.written {
            // A hasher that keeps up (held fills hash at full priority) reads no file.
            if let Some(kept) = recent.get(pos, state.written) {
                hasher.update(&kept);
                pos += kept.len() as u64;
                continue;
            }
            let want = ((state.written - pos) as usize).min(buf.len());
            let n = reader.read_at(&mut buf[..want], pos).ok()?;
            if n == 0 {
                return None;
            }
            hasher.update(&buf[..n]);
            pos += n as u64;
        }
        if state.done && pos >= state.written {
            return Some(hasher.finish());
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::{FillError, Progress, RECENT_BYTES, RateFloor, Recent};
    use crate::config::FillLimits;
    use std::time::{Duration, Instant};

    #[test]
    fn a_transfer_slower_than_the_floor_is_cut_at_a_window_end() {
        let limits = FillLimits { per_repository: 1, total: 1, min_bytes_per_second: 100, rate_window: Duration::from_secs(10) };
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut floor = RateFloor::new(&limits, t0);
        assert_eq!(floor.window_end(), at(10));
        // a dribble within the window is not judged before its end
        floor.record(10, at(3)).unwrap();
        floor.record(500, at(9)).unwrap();
        // 1000 bytes in the first window: enough; the next window starts
        floor.record(490, at(10)).unwrap();
        assert_eq!(floor.window_end(), at(20));
        floor.record(999, at(15)).unwrap();
        let err = floor.record(0, at(20)).unwrap_err();
        assert!(matches!(err, FillError::TooSlow { got: 999, seconds: 10, min: 100 }), "{err:?}");
        // no floor
        let off = FillLimits { min_bytes_per_second: 0, ..limits };
        RateFloor::new(&off, t0).record(0, at(100)).unwrap();
    }

    #[test]
    fn recent_hands_out_kept_bytes_without_crossing_a_limit_and_forgets_the_oldest() {
        let recent = Recent::default();
        let chunk = RECENT_BYTES / 4;
        for i in 0..6u8 {
            recent.push((i as usize * chunk) as u64, Bytes::from(vec![i; chunk]));
        }
        let at = |pos: usize, limit: usize| recent.get(pos as u64, limit as u64);
        // the first two chunks were dropped to stay within RECENT_BYTES
        assert!(at(0, chunk).is_none() && at(2 * chunk - 1, 6 * chunk).is_none());
        let b = at(2 * chunk + 10, 6 * chunk).unwrap();
        assert_eq!((b.len(), b[0]), (chunk - 10, 2));
        // one chunk at most, cut at the limit
        assert_eq!(at(3 * chunk, 3 * chunk + 5).unwrap().len(), 5);
        assert_eq!(at(5 * chunk + 1, 9 * chunk).unwrap().len(), chunk - 1);
        assert!(at(6 * chunk, 9 * chunk).is_none());
        assert!(at(4 * chunk, 4 * chunk).is_none());
    }

    #[test]
    fn preallocation_reserves_the_announced_length_and_refuses_what_cannot_fit() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::create(dir.path().join("staged")).unwrap();
        super::preallocate(&file, 3 << 20).unwrap();
        let m = file.metadata().unwrap();
        assert_eq!(m.len(), 3 << 20);
        assert!(m.blocks() * 512 >= 3 << 20, "{} blocks", m.blocks());
        super::preallocate(&file, 0).unwrap();
        // more than any disk here holds (and more than a file may be): the fill fails at once
        let err = super::preallocate(&file, i64::MAX as u64).unwrap_err();
        assert!(matches!(err, FillError::NoRoom(ref m) if m.contains("no room")), "{err:?}");
    }

    fn progress(written: u64, total: Option<u64>, received: bool) -> Progress {
        Progress { started: true, total, written, received, outcome: None, stored: None }
    }

    #[test]
    fn streamed_readers_get_every_written_byte_and_end_only_at_the_full_length() {
        assert_eq!(progress(10, Some(100), false).readable(false).unwrap(), (10, false));
        assert_eq!(progress(100, Some(100), true).readable(false).unwrap(), (100, true));
        // short: not an end (the fill fails on its length next), so the response is not completed
        assert_eq!(progress(90, Some(100), true).readable(false).unwrap(), (90, false));
        // no Content-Length upstream: the end is when every byte is in
        assert_eq!(progress(90, None, true).readable(false).unwrap(), (90, true));
    }

    #[test]
    fn held_readers_wait_for_the_outcome_before_the_last_byte() {
        assert_eq!(progress(100, Some(100), true).readable(true).unwrap(), (99, false));
        let mut p = progress(100, Some(100), true);
        p.outcome = Some(Ok(100));
        assert_eq!(p.readable(true).unwrap(), (100, true));
        p.outcome = Some(Err(FillError::DigestMismatch { expected: "a".into(), actual: "b".into() }));
        assert!(p.readable(true).is_err() && p.readable(false).is_err());
    }
}

/// A fill that dies at any step gives its single-flight entry back (`Slot`): the next request
/// for the blob fetches it again instead of joining a fill that never ends.
#[cfg(test)]
mod slot_tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;

    use super::{FillError, Fills, Joined};
    use crate::config::{FillLimits, UpstreamConfig};
    use crate::digest::{Algorithm, Digest};
    use crate::storage::{BlobStore, Layout};
    use crate::upstream::{Upstream, parse_request};

    #[derive(Clone, Copy, Debug)]
    enum Answer {
        /// the connection closes before a status line
        HangUp,
        /// half the body, then the connection closes
        Cut,
        /// the whole length, other bytes
        Wrong,
        Good,
    }

    /// A loopback upstream answering each request with the next of `answers` (then `Good`).
    async fn upstream(blob: Arc<Vec<u8>>, answers: Vec<Answer>) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let n = counted.fetch_add(1, Ordering::SeqCst);
                let answer = answers.get(n).copied().unwrap_or(Answer::Good);
                let blob = blob.clone();
                tokio::spawn(async move {
                    let Some(_head) = super::super::read_head_for_tests(&mut conn).await else { return };
                    let status = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", blob.len());
                    let body: Vec<u8> = match answer {
                        Answer::HangUp => return,
                        Answer::Cut => blob[..blob.len() / 2].to_vec(),
                        Answer::Wrong => blob.iter().map(|b| b ^ 1).collect(),
                        Answer::Good => blob.to_vec(),
                    };
                    let _ = conn.write_all(status.as_bytes()).await;
                    let _ = conn.write_all(&body).await;
                });
            }
        });
        (url, hits)
    }

    fn fills(dir: &std::path::Path) -> Arc<Fills> {
        let store = BlobStore::open(Layout::new(dir)).unwrap();
        let config = UpstreamConfig {
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(2),
            // a failure must not mark the upstream down: the next request is to reach it
            down_for: Duration::ZERO,
            hold_last_byte: false,
            allow_networks: Vec::new(),
            ca_file: None,
        };
        let up = Arc::new(Upstream::new(config, Default::default()).unwrap());
        let limits = FillLimits { per_repository: 4, total: 4, min_bytes_per_second: 0, rate_window: Duration::from_secs(30) };
        Fills::new(store, up, limits)
    }

    fn repo(url: &str) -> Arc<crate::repos::Repository> {
        let input = crate::repos::RepositoryInput {
            name: Some("r".into()),
            repo_type: Some("remote".into()),
            format: Some("docker".into()),
            url: Some(url.into()),
            ..Default::default()
        };
        Arc::new(input.validate(None, &["docker".to_string()]).unwrap())
    }

    /// Starts (never joins) a fill of `digest` and waits for its end.
    async fn fill_once(fills: &Arc<Fills>, url: &str, digest: &Digest) -> Result<(Digest, u64), FillError> {
        let request = parse_request("GET", &format!("{url}/v2/x/blobs/{digest}"), &[], false).unwrap();
        match fills.join_or_start(repo(url), digest.clone(), request).unwrap() {
            Joined::Filling(fill) => crate::server::respond::wait_stored(&fill.progress).await,
            _ => panic!("the blob was not fetched again"),
        }
    }

    #[tokio::test]
    async fn a_fill_that_fails_at_any_step_is_fetched_again_by_the_next_request() {
        let blob: Arc<Vec<u8>> = Arc::new((0..3 * 1024 * 1024).map(|i| (i % 253) as u8).collect());
        let digest = Digest::of(Algorithm::Sha256, &blob);
        for (answer, panics) in [(Answer::HangUp, false), (Answer::Cut, false), (Answer::Wrong, false), (Answer::Good, true)] {
            let dir = tempfile::tempdir().unwrap();
            let fills = fills(dir.path());
            let (url, hits) = upstream(blob.clone(), vec![answer]).await;
            fills.panic_in_run.store(panics, Ordering::SeqCst);
            let failed = fill_once(&fills, &url, &digest).await;
            assert!(failed.is_err(), "{answer:?} (panic: {panics}): {failed:?}");
            // the task has ended: its entry is gone and nothing is staged
            tokio::time::timeout(Duration::from_secs(5), async {
                while fills.in_flight() > 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("{answer:?} (panic: {panics}): the failed fill kept its entry"));
            assert_eq!(std::fs::read_dir(dir.path().join("staging")).unwrap().count(), 0, "{answer:?}: a staged file left");
            let stored = fill_once(&fills, &url, &digest).await;
            assert_eq!(stored.unwrap(), (digest.clone(), blob.len() as u64), "{answer:?} (panic: {panics})");
            assert_eq!(hits.load(Ordering::SeqCst), 2, "{answer:?}: one more upstream request");
        }
    }
}
