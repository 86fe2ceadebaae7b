//! What one plugin store carries: the request's repository, the host's services, and the
//! accounting behind the per-request limits.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::Capabilities;
use super::budget::CallClock;
use crate::repos::Repository;

pub struct CallState {
    pub caps: Arc<Capabilities>,
    /// The plugin's format: what a request with no repository may still see.
    pub format: Option<String>,
    pub repo: Option<Arc<Repository>>,
    pub limits: MemoryLimit,
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    /// The call's CPU budget and what it spent (`plugin_cpu_ms`; garbage collection's calls get
    /// more).
    pub clock: CallClock,
    /// What the plugin offered for reuse in this call (`reusable`).
    pub offer: Option<super::reuse::Offer>,
    /// False once the call did more than read this repository's metadata and the blob store:
    /// its plan may then depend on something the plan cache cannot watch.
    pub only_read: bool,
    /// Which other repositories the caller may read (`repositories` import).
    pub readable: super::caps::Readable,
    /// Origins named in what upstreams answered (and blobs read) in this call: what `allow-origin`
    /// may allow.
    pub seen: SeenOrigins,
    /// Garbage collection's call: long by nature and alone, so a long call is not paused
    /// between ticks (it only yields), and the blobs it looks at are not references.
    pub collection: bool,
    /// Set by a capability that could not do its part safely (a blob reference a collection in
    /// progress must see): the call fails as the server's unavailability, whatever the plugin
    /// made of the capability's error.
    pub refused: std::sync::Arc<std::sync::OnceLock<String>>,
    /// Upstream documents this call started fetching: joinable by other calls until this one
    /// has recorded what it made of them (`end`).
    pub leases: Vec<crate::upstream::document::Lease>,
}

/// `scheme://host[:port]` origins that appeared in documents a call received, so a plugin may
/// allow only an origin its remote actually named. Bounded: a document naming more than
/// `MAX_SEEN` origins has the rest ignored.
#[derive(Default)]
pub struct SeenOrigins {
    origins: std::collections::HashSet<String>,
}

const MAX_SEEN: usize = 4096;

impl SeenOrigins {
    pub fn remember(&mut self, bytes: &[u8]) {
        let mut from = 0;
        while self.origins.len() < MAX_SEEN {
            let Some(i) = find(&bytes[from..], b"://") else { return };
            let at = from + i;
            let scheme_start = bytes[..at].iter().rposition(|b| !b.is_ascii_alphabetic()).map_or(0, |p| p + 1);
            let scheme = bytes[scheme_start..at].to_ascii_lowercase();
            let rest = &bytes[at + 3..];
            let end = rest
                .iter()
                .position(|b| matches!(b, b'/' | b'"' | b'\'' | b' ' | b'\n' | b'\r' | b'\t' | b'?' | b'#' | b'>' | b'<' | b','))
                .unwrap_or(rest.len());
            if (scheme == b"https" || scheme == b"http")
                && end > 0
                && let Ok(authority) = std::str::from_utf8(&rest[..end])
            {
                self.origins.insert(format!("{}://{}", String::from_utf8_lossy(&scheme), authority.to_ascii_lowercase()));
            }
            from = at + 3;
        }
    }

    pub fn contains(&self, origin: &str) -> bool {
        self.origins.contains(origin)
    }

    fn clear(&mut self) {
        self.origins.clear();
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl CallState {
    pub fn new(caps: Arc<Capabilities>, format: Option<String>, memory_bytes: usize, cpu_budget: Duration) -> CallState {
        CallState {
            caps,
            format,
            repo: None,
            limits: MemoryLimit { max: memory_bytes, grown_to: 0 },
            // No preopens, no environment, no sockets: a plugin's only authority is the host API.
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            clock: CallClock::new(cpu_budget),
            offer: None,
            only_read: true,
            readable: super::caps::Readable::all(),
            seen: SeenOrigins::default(),
            collection: false,
            refused: Default::default(),
            leases: Vec::new(),
        }
    }

    /// The call is over: the fetches it started are no longer joinable.
    pub fn end(&mut self) {
        self.leases.clear();
    }

    /// Starts the accounting of one more call in this store (a reused instance serves the next
    /// request of the same repository).
    pub fn begin(&mut self, repo: Option<Arc<Repository>>, readable: super::caps::Readable) {
        self.repo = repo;
        self.readable = readable;
        self.seen.clear();
        self.clock.begin();
        self.offer = None;
        self.only_read = true;
        self.collection = false;
        self.refused = Default::default();
    }

    /// This call is garbage collection's: `budget` of CPU, not throttled.
    pub fn for_collection(&mut self, budget: Duration) {
        self.clock.for_collection(budget);
        self.collection = true;
    }

    /// The offer of the call that just returned, if the call only read.
    pub fn take_offer(&mut self) -> Option<super::reuse::Offer> {
        self.offer.take().filter(|_| self.only_read)
    }

    pub fn scope(&self) -> super::caps::Scope {
        super::caps::Scope {
            caps: self.caps.clone(),
            format: self.format.clone(),
            repo: self.repo.clone(),
            readable: self.readable.clone(),
            collection: self.collection,
            refused: self.refused.clone(),
        }
    }

    /// See `CallClock::credit_bytes`.
    pub fn credit_bytes(&mut self, bytes: usize) {
        self.clock.credit_bytes(bytes);
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
