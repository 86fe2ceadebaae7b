//! What garbage collection must know about blobs in use that no metadata shows yet.
//!
//! A push references blobs before its manifest is written: the client asks whether a layer
//! exists (a blob stat), mounts one from another image, or the manifest PUT checks its
//! layers. A collection that decided "not live" from the metadata read before that write
//! must not then remove the blob. Three records close the gaps:
//!
//! - `last`: when each blob was last referenced, so the grace period counts from the later of
//!   the file's mtime and its last reference (a mount or an existing layer does not change
//!   the mtime). In memory only: after a restart the grace counts from the file's mtime.
//!   With a shared metadata store (several nodes) each node also writes its references there,
//!   batched every `SHARED_CHECK_WINDOW`, and the grace counts from the latest reference of
//!   any node: a collection on one node keeps an old blob another node's push just found.
//! - `collecting`: while a collection runs, every blob referenced since it began; the sweep
//!   keeps those whatever their age. The sweep checks and removes under the same lock that
//!   a reference takes *before* it looks at the blob, so a reference either comes first (and
//!   the blob is kept) or finds the blob gone (and the client is told so).
//! - the fence: a collection starts marking only after every request that began before it
//!   started recording has finished, so no write decided before the recording lands after
//!   the mark read the metadata.
//!
//! With a shared store the same three hold across nodes. A collection announces its run there;
//! every node looks for runs each `SHARED_CHECK_WINDOW` (with its heartbeat) and, while one is
//! in progress, writes each reference to the shared store *before* the request looks at the
//! blob, under a per-blob lock that the run's removal of that blob takes too
//! (`PgMeta::collection_reference`, `collection_remove`). Once it does, it runs its own fence
//! and acknowledges the run; the run marks only when every live node has. A node acts on its
//! last look at the runs for at most `LEASE`, then looks again within the request; a node is
//! counted live for `NODE_EXPIRY`, well past its lease, so a node too slow to heartbeat has
//! stopped batching before a run stops waiting for it. A reference that cannot be written
//! fails its request (`ReferenceError`) rather than risk the blob.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crate::digest::Digest;
use crate::storage::MetaStore;
use crate::storage::meta::{MetaError, SHARED_CHECK_WINDOW};
use crate::storage::postgres::PgMeta;
use crate::storage::{DigestMap, DigestSet};

/// How long a node batches its references on the strength of its last look at the runs in
/// progress; past it, a reference looks again first.
const LEASE: Duration = Duration::from_secs(5);
/// A node not heard from for this long is not waited for by a collection, and a run of its
/// ends. Three leases: a node that missed its heartbeats stopped batching long before.
pub const NODE_EXPIRY: Duration = Duration::from_secs(15);
/// How long a node waits for its requests that began before a run of another node, before it
/// acknowledges the run: as long as a collection waits for its own.
const ACK_FENCE_WAIT: Duration = Duration::from_secs(15 * 60);

/// References remembered for the grace period. Past this, the oldest are forgotten (their
/// grace then counts from the file's mtime): a client asking for random digests cannot grow
/// this without bound.
const LAST_MAX: usize = 200_000;
/// Blobs recorded during one collection. Past this the collection removes nothing: it cannot
/// tell any more what the requests meanwhile referenced.
const COLLECT_MAX: usize = 1_000_000;

#[derive(Default)]
struct Inner {
    last: DigestMap<SystemTime>,
    collecting: Option<DigestSet>,
    overflowed: bool,
}

pub struct Touches {
    inner: Mutex<Inner>,
    /// With a shared store: the run of this node's collection in progress there.
    run: Mutex<Option<String>>,
    /// One fence at a time: a collection's own and the acknowledgement of another node's run.
    fence: Mutex<()>,
    /// With a shared metadata store: references not yet written there, and the store.
    shared: std::sync::OnceLock<Shared>,
    /// Requests in flight, by the parity of the fence epoch they entered in.
    epoch: AtomicUsize,
    inflight: [AtomicUsize; 2],
}

impl Default for Touches {
    fn default() -> Self {
        Touches {
            inner: Mutex::default(),
            run: Mutex::default(),
            fence: Mutex::default(),
            shared: std::sync::OnceLock::new(),
            epoch: AtomicUsize::new(0),
            inflight: [AtomicUsize::new(0), AtomicUsize::new(0)],
        }
    }
}

struct Shared {
    meta: MetaStore,
    /// This process among the nodes (a new one each start).
    node: String,
    pending: Mutex<HashMap<Digest, SystemTime>>,
    runs: Mutex<Runs>,
    /// An acknowledging thread is running.
    acking: AtomicBool,
    /// This node stopped serving: no more heartbeats.
    left: AtomicBool,
}

/// The runs in progress on any node, as this node last saw them.
#[derive(Default)]
struct Runs {
    active: Vec<String>,
    /// When the look that found `active` was sent (None: never yet).
    checked: Option<Instant>,
    acked: HashSet<String>,
}

impl Shared {
    fn pg(&self) -> Result<&PgMeta, MetaError> {
        self.meta.shared().ok_or_else(|| MetaError::Unavailable("no shared metadata store".into()))
    }

    /// A run of this node's own collection: its own fence covers this node's requests.
    fn owns(&self, run: &str) -> bool {
        run.strip_prefix(self.node.as_str()).is_some_and(|rest| rest.starts_with('/'))
    }

    fn runs(&self) -> MutexGuard<'_, Runs> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Heartbeats and reads the runs in progress.
    fn look(&self) -> Result<(), MetaError> {
        let asked = Instant::now();
        let active = self.pg()?.heartbeat(&self.node, NODE_EXPIRY)?;
        let mut runs = self.runs();
        // A slower look sent earlier does not replace a newer one.
        if runs.checked.is_none_or(|c| c <= asked) {
            runs.acked.retain(|r| active.contains(r));
            runs.active = active;
            runs.checked = Some(asked);
        }
        Ok(())
    }

    /// Writes the batched references (their times count for every node's grace periods).
    fn flush(&self) -> Result<(), MetaError> {
        let batch: Vec<(String, u64)> = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
            .into_iter()
            .map(|(d, t)| (d.to_string(), unix(t)))
            .collect();
        if batch.is_empty() {
            return Ok(());
        }
        self.pg()?.record_touches(&batch)
    }

    /// Whether a run is in progress anywhere, looking again if the last look is older than
    /// `LEASE`.
    fn collecting(&self) -> Result<bool, MetaError> {
        {
            let runs = self.runs();
            if runs.checked.is_some_and(|c| c.elapsed() < LEASE) {
                return Ok(!runs.active.is_empty());
            }
        }
        self.look()?;
        Ok(!self.runs().active.is_empty())
    }
}

/// A reference a collection in progress on some node must see could not be written to the
/// shared store: the request that made it fails (503) instead of using a blob the collection
/// might remove.
#[derive(Debug, thiserror::Error)]
#[error("a garbage collection is in progress and this blob reference could not be recorded for it: {0}; try again")]
pub struct ReferenceError(#[from] pub MetaError);

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Held for the duration of a request (see the fence above).
pub struct Entered<'a> {
    touches: &'a Touches,
    slot: usize,
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        self.touches.inflight[self.slot].fetch_sub(1, Ordering::SeqCst);
    }
}

/// The requests that began before a collection did were still running after the wait.
#[derive(Debug, thiserror::Error)]
#[error("requests that began before the collection were still running after {0:?}")]
pub struct FenceTimeout(pub Duration);

/// A collection in progress: what it may remove is decided under this lock.
pub struct Sweeping<'a>(MutexGuard<'a, Inner>);

impl Sweeping<'_> {
    /// Referenced since the collection began.
    pub fn touched(&self, digest: &Digest) -> bool {
        self.0.collecting.as_ref().is_none_or(|c| c.contains(digest))
    }

    /// Whether references went unrecorded: nothing may be removed then.
    pub fn overflowed(&self) -> bool {
        self.0.overflowed || self.0.collecting.is_none()
    }
}

impl Touches {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request is about to reference `digest` (check it exists, serve it, link it): called
    /// before it looks at the blob.
    pub fn touch(&self, digest: &Digest) -> Result<(), ReferenceError> {
        let now = SystemTime::now();
        let mut inner = self.inner();
        if let Some(c) = inner.collecting.as_mut() {
            if c.len() < COLLECT_MAX {
                c.insert(digest.clone());
            } else if !c.contains(digest) {
                inner.overflowed = true;
            }
        }
        // A blob referenced again (most references) updates its time in place, without a copy.
        if let Some(at) = inner.last.get_mut(digest) {
            *at = now;
        } else {
            if inner.last.len() >= LAST_MAX {
                forget_oldest(&mut inner.last);
            }
            inner.last.insert(digest.clone(), now);
        }
        drop(inner);
        if let Some(shared) = self.shared.get() {
            if shared.collecting()? {
                shared.pg()?.collection_reference(&digest.to_string())?;
            }
            let mut pending = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
            // Bounded like `last`; what does not fit is written with the next batch's neighbours
            // no later than a second after (the batch empties every `SHARED_CHECK_WINDOW`).
            if pending.len() < LAST_MAX || pending.contains_key(digest) {
                pending.insert(digest.clone(), now);
            }
        }
        Ok(())
    }

    /// When `digest` was last referenced as far as this process knows and, with a shared store,
    /// as far as any node wrote there. A shared store that cannot be read counts as a reference
    /// now: nothing is removed on a guess.
    pub fn last_reference(&self, digest: &Digest) -> Option<SystemTime> {
        let local = self.inner().last.get(digest).copied();
        let Some(pg) = self.shared.get().and_then(|s| s.meta.shared()) else { return local };
        let shared = match pg.touched_at(&digest.to_string()) {
            Ok(at) => at.map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s)),
            Err(e) => {
                tracing::warn!(%digest, error = %e, "blob references of other nodes not read; the blob is kept");
                Some(SystemTime::now())
            }
        };
        local.max(shared)
    }

    /// Writes this node's references to the shared store every `SHARED_CHECK_WINDOW`, for the
    /// collections of every node (see the module comment). The thread ends with `self`.
    pub fn share(self: &std::sync::Arc<Self>, meta: MetaStore) {
        let node = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
        let shared = Shared {
            meta,
            node,
            pending: Mutex::default(),
            runs: Mutex::default(),
            acking: AtomicBool::new(false),
            left: AtomicBool::new(false),
        };
        if shared.meta.shared().is_none() || self.shared.set(shared).is_err() {
            return;
        }
        let touches = std::sync::Arc::downgrade(self);
        let spawned = std::thread::Builder::new().name("blob-references".into()).spawn(move || {
            loop {
                std::thread::sleep(SHARED_CHECK_WINDOW);
                let Some(touches) = touches.upgrade() else { return };
                let Some(shared) = touches.shared.get() else { return };
                if shared.left.load(Ordering::SeqCst) {
                    return;
                }
                if let Err(e) = shared.flush() {
                    tracing::warn!(error = %e, "blob references not written to the shared store");
                }
                match shared.look() {
                    Ok(()) => touches.acknowledge_runs(),
                    Err(e) => tracing::warn!(error = %e, "shared metadata: heartbeat not written, runs in progress not read"),
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot share blob references with other nodes");
        }
    }

    /// This node has stopped serving (every request finished): its references are written and
    /// it leaves the nodes a collection waits for, instead of being waited for until its
    /// heartbeat lapses.
    pub fn leave(&self) {
        let Some(shared) = self.shared.get() else { return };
        shared.left.store(true, Ordering::SeqCst);
        if let Err(e) = shared.flush() {
            tracing::warn!(error = %e, "blob references not written to the shared store");
        }
        if let Err(e) = shared.pg().and_then(|pg| pg.node_left(&shared.node)) {
            tracing::warn!(error = %e, "shared metadata: this node's heartbeat not removed; collections wait for it to lapse");
        }
    }

    /// Acknowledges the runs of other nodes this node now writes its references for, once the
    /// requests that began before it did have finished: in a thread of its own, since that may
    /// take minutes (a large upload) and the heartbeat must go on meanwhile.
    fn acknowledge_runs(self: &Arc<Self>) {
        let Some(shared) = self.shared.get() else { return };
        let waiting = {
            let runs = shared.runs();
            runs.active.iter().any(|r| !runs.acked.contains(r) && !shared.owns(r))
        };
        if !waiting || shared.acking.swap(true, Ordering::SeqCst) {
            return;
        }
        let touches = Arc::downgrade(self);
        let spawned = std::thread::Builder::new().name("collection-acks".into()).spawn(move || {
            loop {
                let Some(touches) = touches.upgrade() else { return };
                let Some(shared) = touches.shared.get() else { return };
                let todo: Vec<String> = {
                    let runs = shared.runs();
                    runs.active.iter().filter(|r| !runs.acked.contains(*r) && !shared.owns(r)).cloned().collect()
                };
                if todo.is_empty() {
                    shared.acking.store(false, Ordering::SeqCst);
                    return;
                }
                // References are synchronous from here on (`todo` was read after the look that
                // switched them): what remains is the requests that may have batched theirs.
                // The batch too: a blob a finished request found (a HEAD) has its grace counted
                // from that reference by the run's sweep.
                let fenced = touches
                    .fence_blocking(ACK_FENCE_WAIT)
                    .map_err(|e| e.to_string())
                    .and_then(|()| shared.flush().map_err(|e| e.to_string()));
                if let Err(e) = fenced {
                    tracing::warn!(runs = ?todo, error = %e, "collections of other nodes not acknowledged; they remove nothing");
                    shared.acking.store(false, Ordering::SeqCst);
                    return;
                }
                for run in todo {
                    match shared.pg().and_then(|pg| pg.collection_ack(&run, &shared.node)) {
                        Ok(()) => {
                            shared.runs().acked.insert(run);
                        }
                        Err(e) => tracing::warn!(run, error = %e, "collection not acknowledged"),
                    }
                }
            }
        });
        if let Err(e) = spawned {
            shared.acking.store(false, Ordering::SeqCst);
            tracing::error!(error = %e, "cannot acknowledge collections of other nodes");
        }
    }

    /// The shared store, when references are shared.
    pub fn shared_store(&self) -> Option<&PgMeta> {
        self.shared.get().and_then(|s| s.meta.shared())
    }

    /// This node's name among the nodes of the shared store.
    pub fn node(&self) -> Option<&str> {
        self.shared.get().map(|s| s.node.as_str())
    }

    /// The run of this node's collection in progress in the shared store, for its removals.
    pub fn set_run(&self, run: Option<String>) {
        *self.run.lock().unwrap_or_else(|p| p.into_inner()) = run;
    }

    pub fn run(&self) -> Option<String> {
        self.run.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Starts recording references for a collection.
    pub fn begin_collecting(&self) {
        let mut inner = self.inner();
        inner.collecting = Some(DigestSet::default());
        inner.overflowed = false;
    }

    pub fn end_collecting(&self) {
        let mut inner = self.inner();
        inner.collecting = None;
        inner.overflowed = false;
    }

    /// Lock for deciding about (and removing) one blob; held briefly, per blob.
    pub fn sweeping(&self) -> Sweeping<'_> {
        Sweeping(self.inner())
    }

    /// Forgets references older than `age` (a collection with that grace no longer needs them).
    pub fn forget_older_than(&self, age: Duration) {
        let Some(cutoff) = SystemTime::now().checked_sub(age) else { return };
        self.inner().last.retain(|_, t| *t >= cutoff);
        if let Some(pg) = self.shared.get().and_then(|s| s.meta.shared())
            && let Err(e) = pg.forget_touches_before(unix(cutoff))
        {
            tracing::warn!(error = %e, "old blob references not removed from the shared store");
        }
    }

    /// Counts a request in flight for the fence.
    pub fn enter(&self) -> Entered<'_> {
        loop {
            let e = self.epoch.load(Ordering::SeqCst);
            let slot = e & 1;
            self.inflight[slot].fetch_add(1, Ordering::SeqCst);
            if self.epoch.load(Ordering::SeqCst) == e {
                return Entered { touches: self, slot };
            }
            self.inflight[slot].fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Waits until every request that entered before this call has finished; requests entering
    /// meanwhile are not waited for.
    pub async fn wait_for_earlier_requests(self: &Arc<Self>, timeout: Duration) -> Result<(), FenceTimeout> {
        let touches = self.clone();
        tokio::task::spawn_blocking(move || touches.fence_blocking(timeout)).await.unwrap_or(Err(FenceTimeout(timeout)))
    }

    /// The fence, on this thread. Fences take turns: two at once would each count the other's
    /// new requests as earlier ones.
    fn fence_blocking(&self, timeout: Duration) -> Result<(), FenceTimeout> {
        let _turn = self.fence.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.epoch.fetch_add(1, Ordering::SeqCst) & 1;
        let deadline = Instant::now() + timeout;
        while self.inflight[old].load(Ordering::SeqCst) > 0 {
            if Instant::now() >= deadline {
                return Err(FenceTimeout(timeout));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

/// Drops the older half of the references: rare (only past `LAST_MAX`), so a sort is fine.
fn forget_oldest(last: &mut DigestMap<SystemTime>) {
    let mut times: Vec<SystemTime> = last.values().copied().collect();
    times.sort_unstable();
    let Some(&cutoff) = times.get(times.len() / 2) else { return };
    last.retain(|_, t| *t > cutoff);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Algorithm;

    #[test]
    fn references_during_a_collection_are_recorded() {
        let t = Touches::default();
        let a = Digest::of(Algorithm::Sha256, b"a");
        let b = Digest::of(Algorithm::Sha256, b"b");
        t.touch(&a).unwrap();
        t.begin_collecting();
        t.touch(&b).unwrap();
        {
            let s = t.sweeping();
            assert!(!s.touched(&a) && s.touched(&b) && !s.overflowed());
        }
        t.end_collecting();
        assert!(t.sweeping().overflowed(), "outside a collection nothing may be decided");
        assert!(t.last_reference(&b) >= t.last_reference(&a) && t.last_reference(&a).is_some());
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Guards the node's side of a collection on another node: once it has seen the run it
    /// records each reference in the shared store before the blob is used (so the run's removal
    /// keeps the blob), acknowledges the run after its fence, and fails a reference it cannot
    /// record.
    #[test]
    fn a_run_on_another_node_makes_references_synchronous() {
        let Some(url) = crate::storage::postgres::tests::fresh_url() else { return };
        let meta = MetaStore::connect(&url, 4).unwrap();
        let t = Arc::new(Touches::default());
        t.share(meta.clone());
        let pg = meta.shared().unwrap();
        let d = Digest::of(Algorithm::Sha256, b"found by a push");
        t.touch(&d).unwrap();
        pg.heartbeat("other", NODE_EXPIRY).unwrap();
        pg.collection_begin("other/1", "other").unwrap();
        let in_flight = t.enter();
        wait_for("the node to see the run", || !t.shared.get().unwrap().runs().active.is_empty());
        t.touch(&d).unwrap();
        assert_eq!(pg.collection_remove("other/1", &d.to_string(), || ()).unwrap(), None, "the reference is recorded");
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(pg.collection_waiting_for("other/1", NODE_EXPIRY).unwrap().len(), 1, "not acknowledged while a request runs");
        drop(in_flight);
        wait_for("the node to acknowledge", || pg.collection_waiting_for("other/1", NODE_EXPIRY).unwrap().is_empty());
        pg.heartbeat("other", NODE_EXPIRY).unwrap();
        meta.shared().unwrap().collection_end("other/1").unwrap();
        pg.collection_begin("other/2", "other").unwrap();
        wait_for("the node to see the second run", || t.shared.get().unwrap().runs().active == ["other/2"]);
        let mut c = postgres::Client::connect(&url_string(&url), postgres::NoTls).unwrap();
        c.batch_execute("ALTER TABLE binaryrepo_collection_refs RENAME TO away").unwrap();
        assert!(t.touch(&d).is_err(), "a reference that cannot be recorded fails");
        c.batch_execute("ALTER TABLE away RENAME TO binaryrepo_collection_refs").unwrap();
        pg.collection_end("other/2").unwrap();
    }

    fn url_string(url: &crate::storage::postgres::DatabaseUrl) -> String {
        url.as_str().to_owned()
    }

    #[tokio::test]
    async fn the_fence_waits_for_earlier_requests_only() {
        let t = Arc::new(Touches::default());
        let early = t.enter();
        let waiter = {
            let t = t.clone();
            tokio::spawn(async move { t.wait_for_earlier_requests(Duration::from_secs(5)).await.is_ok() })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _late = t.enter();
        assert!(!waiter.is_finished());
        drop(early);
        assert!(waiter.await.unwrap());
        assert!(t.wait_for_earlier_requests(Duration::from_millis(30)).await.is_err(), "the late request still runs");
    }
}
