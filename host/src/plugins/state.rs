//! What one plugin store carries: the request's repository, the host's services, and the
//! accounting behind the per-request limits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::Capabilities;
use crate::repos::Repository;

pub struct CallState {
    pub caps: Arc<Capabilities>,
    /// The plugin's format: what a request with no repository may still see.
    pub format: Option<String>,
    pub repo: Option<Arc<Repository>>,
    pub limits: MemoryLimit,
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    started: Instant,
    /// Time spent inside host calls (upstream I/O, storage), which does not count against
    /// the plugin's CPU budget.
    host_time: Duration,
    /// What the plugin offered for reuse in this call (`reusable`).
    pub offer: Option<super::reuse::Offer>,
    /// False once the call did more than read this repository's metadata and the blob store:
    /// its plan may then depend on something the plan cache cannot watch.
    pub only_read: bool,
}

impl CallState {
    pub fn new(caps: Arc<Capabilities>, format: Option<String>, memory_bytes: usize) -> CallState {
        CallState {
            caps,
            format,
            repo: None,
            limits: MemoryLimit { max: memory_bytes, grown_to: 0 },
            // No preopens, no environment, no sockets: a plugin's only authority is the host API.
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            started: Instant::now(),
            host_time: Duration::ZERO,
            offer: None,
            only_read: true,
        }
    }

    /// Starts the accounting of one more call in this store (a reused instance serves the next
    /// request of the same repository).
    pub fn begin(&mut self, repo: Option<Arc<Repository>>) {
        self.repo = repo;
        self.started = Instant::now();
        self.host_time = Duration::ZERO;
        self.offer = None;
        self.only_read = true;
    }

    /// The offer of the call that just returned, if the call only read.
    pub fn take_offer(&mut self) -> Option<super::reuse::Offer> {
        self.offer.take().filter(|_| self.only_read)
    }

    pub fn scope(&self) -> super::caps::Scope {
        super::caps::Scope { caps: self.caps.clone(), format: self.format.clone(), repo: self.repo.clone() }
    }

    pub fn guest_time(&self) -> Duration {
        self.started.elapsed().saturating_sub(self.host_time)
    }

    pub fn add_host_time(&mut self, d: Duration) {
        self.host_time += d;
    }
}

/// The per-store memory limit, remembering how far the guest grew so a store that grew large
/// is not kept for reuse.
pub struct MemoryLimit {
    max: usize,
    pub grown_to: usize,
}

impl ResourceLimiter for MemoryLimit {
    fn memory_growing(&mut self, _current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max || maximum.is_some_and(|m| desired > m) {
            // A trap, not a failed memory.grow: the guest's allocator would abort anyway, and a
            // trap says plainly that the plugin hit its memory limit.
            wasmtime::bail!("plugin memory limit: growing to {desired} bytes exceeds {} bytes", self.max);
        }
        self.grown_to = self.grown_to.max(desired);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(maximum.is_none_or(|m| desired <= m))
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}
