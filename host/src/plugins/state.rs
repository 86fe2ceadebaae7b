//! What one plugin store carries: the request's repository, the host's services, and the
//! accounting behind the per-request limits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::Capabilities;
use crate::repos::Repository;

pub struct CallState {
    pub caps: Arc<Capabilities>,
    /// The plugin's format: what a request with no repository may still see.
    pub format: Option<String>,
    pub repo: Option<Arc<Repository>>,
    pub limits: StoreLimits,
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    started: Instant,
    /// Time spent inside host calls (upstream I/O, storage), which does not count against
    /// the plugin's CPU budget.
    host_time: Duration,
}

impl CallState {
    pub fn new(caps: Arc<Capabilities>, format: Option<String>, repo: Option<Arc<Repository>>, limits: StoreLimits) -> CallState {
        CallState {
            caps,
            format,
            repo,
            limits,
            // No preopens, no environment, no sockets: a plugin's only authority is the host API.
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            started: Instant::now(),
            host_time: Duration::ZERO,
        }
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

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}
