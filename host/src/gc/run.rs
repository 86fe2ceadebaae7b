//! One collection run: its progress while it runs and its outcome after, as the API shows them.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use super::{GcReport, unix_now};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// waiting for requests that began before the run
    Fence,
    /// waiting for every other node (shared store) to write its blob references synchronously
    /// and to finish its requests that began before the run
    Nodes,
    /// applying local repositories' cleanup rules (tag retention)
    Cleanup,
    /// asking every repository's plugin what it still needs
    Mark,
    /// removing blobs nothing needs
    Sweep,
    /// enforcing remote repositories' cache limits
    Evict,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Api,
    Schedule,
    Offline,
}

#[derive(Default)]
pub struct Counters {
    pub repositories_done: AtomicU64,
    pub repositories_total: AtomicU64,
    pub blobs_scanned: AtomicU64,
    pub removed: AtomicU64,
    pub removed_bytes: AtomicU64,
    pub kept: AtomicU64,
    pub evicted: AtomicU64,
    pub evicted_bytes: AtomicU64,
    pub tags_removed: AtomicU64,
    pub manifests_removed: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The totals so far.
    pub fn report(&self) -> GcReport {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        GcReport {
            removed: get(&self.removed),
            removed_bytes: get(&self.removed_bytes),
            kept: get(&self.kept),
            evicted: get(&self.evicted),
            evicted_bytes: get(&self.evicted_bytes),
            tags_removed: get(&self.tags_removed),
            manifests_removed: get(&self.manifests_removed),
        }
    }
}

pub struct Run {
    pub id: u64,
    pub trigger: Trigger,
    pub grace: Duration,
    pub started: u64,
    pub counters: Counters,
    phase: Mutex<Phase>,
    /// None while running; then the error, if it failed.
    outcome: Mutex<Option<(u64, Option<String>)>>,
    done: watch::Sender<bool>,
}

/// What `GET /api/gc` shows of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub id: u64,
    pub state: &'static str,
    pub phase: Phase,
    pub trigger: Trigger,
    pub grace_seconds: u64,
    pub repositories_done: u64,
    pub repositories_total: u64,
    pub blobs_scanned: u64,
    #[serde(flatten)]
    pub totals: GcReport,
    pub bytes_freed: u64,
    /// unix seconds
    pub started: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Run {
    pub fn new(id: u64, trigger: Trigger, grace: Duration) -> Run {
        Run {
            id,
            trigger,
            grace,
            started: unix_now(),
            counters: Counters::default(),
            phase: Mutex::new(Phase::Fence),
            outcome: Mutex::new(None),
            done: watch::channel(false).0,
        }
    }

    pub fn set_phase(&self, phase: Phase) {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner()) = phase;
    }

    pub fn finish(&self, error: Option<String>) {
        self.set_phase(Phase::Done);
        *self.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some((unix_now(), error));
        self.done.send_replace(true);
    }

    pub fn running(&self) -> bool {
        self.outcome.lock().unwrap_or_else(|p| p.into_inner()).is_none()
    }

    pub async fn wait(&self) {
        let mut rx = self.done.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }

    pub fn status(&self) -> Status {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let outcome = self.outcome.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (state, finished, error) = match outcome {
            None => ("running", None, None),
            Some((at, None)) => ("finished", Some(at), None),
            Some((at, Some(e))) => ("failed", Some(at), Some(e)),
        };
        Status {
            id: self.id,
            state,
            phase: *self.phase.lock().unwrap_or_else(|p| p.into_inner()),
            trigger: self.trigger,
            grace_seconds: self.grace.as_secs(),
            repositories_done: get(&c.repositories_done),
            repositories_total: get(&c.repositories_total),
            blobs_scanned: get(&c.blobs_scanned),
            totals: c.report(),
            bytes_freed: get(&c.removed_bytes) + get(&c.evicted_bytes),
            started: self.started,
            finished,
            error,
        }
    }
}
