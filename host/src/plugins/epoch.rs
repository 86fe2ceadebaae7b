//! The clock of plugin deadlines: wasmtime's epoch, advanced every `EPOCH_TICK` while any plugin
//! code runs. An idle server does not tick, so it does not wake 500 times a second for nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::Thread;
use std::time::Duration;

use wasmtime::Engine;

/// A plugin call that runs past a tick gives its worker thread back (and is checked against its
/// budget, `budget::CallClock::on_tick`): a looping plugin delays the requests queued behind it
/// by at most this much.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

pub struct Ticker {
    /// Guest calls (and instantiations) under way.
    running: Arc<AtomicUsize>,
    thread: Thread,
}

/// Held while guest code may run; the ticker sleeps once none is held.
pub struct Running<'a>(&'a Ticker);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Ticker {
    pub fn start(engine: Engine) -> std::io::Result<Ticker> {
        let running = Arc::new(AtomicUsize::new(0));
        let handle = std::thread::Builder::new().name("wasm-epoch".into()).spawn({
            let running = running.clone();
            move || loop {
                if running.load(Ordering::Acquire) == 0 {
                    // An `unpark` that came before this `park` makes it return at once, so a
                    // call that starts between the check and here is not missed.
                    std::thread::park();
                    continue;
                }
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        })?;
        Ok(Ticker { running, thread: handle.thread().clone() })
    }

    /// Marks guest code as running until the guard drops (also on cancellation).
    pub fn running(&self) -> Running<'_> {
        if self.running.fetch_add(1, Ordering::AcqRel) == 0 {
            self.thread.unpark();
        }
        Running(self)
    }
}
