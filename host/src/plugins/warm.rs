//! Plugin instances kept between requests.
//!
//! A plugin is stateless by contract, so an instance that finished a call cleanly may serve the
//! next request of the same repository: that skips instantiation and the reset of its memory,
//! which are most of a small request's plugin cost. An instance is dropped, never reused, after a
//! trap, a timeout or a cancelled call (the future owning it is dropped), after `reuse` requests,
//! or once its memory grew past `KEEP_MEMORY`, so neither state nor memory piles up.
//!
//! Instances are kept by the loaded plugin they came from (`LoadedPlugin::id`), not by format:
//! after a plugin is replaced, an instance of the old build is never handed to a request that
//! resolved the new one, and the old build's idle instances are dropped at the swap.

use std::sync::Mutex;

use wasmtime::Store;

use super::instance::Instance;
use super::state::CallState;

/// Idle instances kept across all plugins and repositories; the pooling allocator reserves
/// slots for them on top of the ones requests use.
pub const IDLE_MAX: usize = 16;
/// A store whose memory grew past this (a large manifest, say) is dropped after its call.
const KEEP_MEMORY: usize = 8 << 20;

pub struct Warm {
    pub store: Store<CallState>,
    pub instance: Instance,
    served: u32,
    plugin: u64,
    repo: Option<String>,
}

impl Warm {
    pub fn new(store: Store<CallState>, instance: Instance, plugin: u64, repo: Option<&str>) -> Warm {
        Warm { store, instance, served: 0, plugin, repo: repo.map(str::to_owned) }
    }
}

pub struct WarmPool {
    idle: Mutex<Vec<Warm>>,
    reuse: u32,
}

impl WarmPool {
    pub fn new(reuse: u32) -> WarmPool {
        WarmPool { idle: Mutex::new(Vec::with_capacity(IDLE_MAX)), reuse }
    }

    /// The most recently used idle instance of this plugin for this repository.
    pub fn take(&self, plugin: u64, repo: Option<&str>) -> Option<Warm> {
        if self.reuse <= 1 {
            return None;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let i = idle.iter().rposition(|w| w.plugin == plugin && w.repo.as_deref() == repo)?;
        Some(idle.remove(i))
    }

    /// Drops the idle instances of a plugin that was replaced or removed.
    pub fn forget(&self, plugin: u64) {
        let dropped: Vec<Warm> = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let (gone, kept) = std::mem::take(&mut *idle).into_iter().partition(|w| w.plugin == plugin);
            *idle = kept;
            gone
        };
        drop(dropped);
    }

    /// Keeps an instance whose call just succeeded, unless it has served its share.
    pub fn give_back(&self, mut warm: Warm) {
        warm.served += 1;
        if warm.served >= self.reuse || warm.store.data().limits.grown_to > KEEP_MEMORY {
            return;
        }
        let evicted = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.push(warm);
            (idle.len() > IDLE_MAX).then(|| idle.remove(0))
        };
        // Dropped outside the lock: dropping a store resets its memory slot, which takes a while.
        drop(evicted);
    }
}
