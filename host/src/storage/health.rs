//! Whether storage takes writes, and coming back by itself when it does again.
//!
//! A full disk is an operator's problem, not a client's and not a bug: while it lasts the server
//! says so (`/api/ready` 503 with the reason, writes refused with the format's `unavailable`
//! failure, 503) instead of failing each write with a 500, and keeps serving reads. Whoever hits
//! `ENOSPC` notes it here; `watch` then checks every few seconds whether room was made (free
//! space above a floor and a probe write that lands) and clears the state, no restart needed.
//! The metadata store's own failures (redb latches the first I/O error) are recovered by
//! `MetaStore::recover` from the same loop.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::storage::{Layout, MetaStore, durable};

/// Below this much free space the disk counts as full once a write has failed for room: a
/// server that just freed the half-written blob of a failed push would otherwise flap between
/// ready and not.
pub const MIN_FREE: u64 = 8 << 20;

/// How often a degraded store is checked for recovery.
pub const RETRY_EVERY: Duration = Duration::from_secs(2);

#[derive(Default)]
pub struct Health {
    out_of_space: AtomicBool,
    /// What failed for room, for the readiness answer (no paths).
    reason: Mutex<Option<String>>,
}

impl Health {
    pub fn new() -> Health {
        Health::default()
    }

    /// Notes a write that failed for room; true when that was the cause.
    pub fn note(&self, e: &std::io::Error) -> bool {
        if !durable::is_out_of_space(e) {
            return false;
        }
        self.set_out_of_space(e.to_string());
        true
    }

    pub fn set_out_of_space(&self, reason: String) {
        if !self.out_of_space.swap(true, Ordering::AcqRel) {
            tracing::error!(reason = %reason, "storage is out of space: writes are refused until space is freed");
        }
        *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
    }

    pub fn is_out_of_space(&self) -> bool {
        self.out_of_space.load(Ordering::Acquire)
    }

    /// Checks free space now (after a write failed for a reason not known): out of space when
    /// below `MIN_FREE`.
    pub fn suspect(&self, layout: &Layout) -> bool {
        if self.is_out_of_space() {
            return true;
        }
        match free_bytes(layout.root()) {
            Some(free) if free < MIN_FREE => {
                self.set_out_of_space(format!("{free} bytes free on the data volume"));
                true
            }
            _ => false,
        }
    }

    /// Why storage does not take writes, if it does not (no server paths in them).
    pub fn reasons(&self, meta: &MetaStore) -> Vec<String> {
        let mut out = Vec::new();
        if self.is_out_of_space() {
            let reason = self.reason.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default();
            out.push(format!("data volume out of space ({reason}); free space to recover"));
        }
        if let Some(e) = meta.failing() {
            out.push(format!("metadata store failed ({e}); reopening it"));
        }
        out
    }

    /// Whether writes should be refused now.
    pub fn degraded(&self, meta: &MetaStore) -> bool {
        self.is_out_of_space() || meta.failing().is_some()
    }

    /// One recovery attempt: clears the out-of-space state when there is room again, reopens a
    /// failed metadata store. Blocking (file I/O).
    pub fn try_recover(&self, layout: &Layout, meta: &MetaStore) {
        if self.is_out_of_space() && has_room(layout) {
            self.out_of_space.store(false, Ordering::Release);
            *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = None;
            tracing::info!("storage has room again: writes are accepted");
        }
        // Only with room: reopening needs writes, and a store that cannot reopen serves no reads.
        if !self.is_out_of_space() && meta.failing().is_some() {
            meta.recover();
        }
    }
}

/// Free bytes for an unprivileged writer on the volume holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Room for writes: free space above the floor, and a probe file that is written and synced.
fn has_room(layout: &Layout) -> bool {
    if free_bytes(layout.root()).is_some_and(|f| f < MIN_FREE) {
        return false;
    }
    let probe = layout.staging().join(".space-probe");
    let wrote = std::fs::File::create(&probe).and_then(|mut f| {
        f.write_all(&[0u8; 64 * 1024])?;
        f.sync_all()
    });
    let _ = std::fs::remove_file(&probe);
    wrote.is_ok()
}

/// Runs recovery attempts while storage is degraded, for the life of the process.
pub async fn watch(health: std::sync::Arc<Health>, layout: Layout, meta: MetaStore) {
    loop {
        tokio::time::sleep(RETRY_EVERY).await;
        if !health.degraded(&meta) {
            continue;
        }
        let (h, l, m) = (health.clone(), layout.clone(), meta.clone());
        let _ = tokio::task::spawn_blocking(move || h.try_recover(&l, &m)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_space_is_noted_and_cleared_when_there_is_room() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        std::fs::create_dir_all(layout.staging()).unwrap();
        let meta = MetaStore::open(&layout.meta_db()).unwrap();
        let h = Health::new();
        assert!(!h.note(&std::io::Error::from_raw_os_error(libc::EACCES)));
        assert!(!h.degraded(&meta));
        assert!(h.note(&std::io::Error::from_raw_os_error(libc::ENOSPC)));
        assert!(h.degraded(&meta));
        let reasons = h.reasons(&meta);
        assert!(reasons[0].contains("out of space"), "{reasons:?}");
        assert!(!reasons[0].contains(dir.path().to_str().unwrap()));
        // the temporary directory has room
        h.try_recover(&layout, &meta);
        assert!(!h.degraded(&meta));
    }
}
