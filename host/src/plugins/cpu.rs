//! The CPU time a plugin call takes, counted on the threads that actually ran it.
//!
//! Plugin calls are async: the guest runs on a fiber that wasmtime resumes inside the `poll` of
//! the call's future, and a call that yields (every epoch tick, every host call that waits for
//! I/O) may be polled next time by another tokio worker thread. The call's time is therefore
//! taken at the start and the end of every poll of the call (`metered`): the call's CPU is the
//! sum of its poll segments, each measured on the one thread that ran it, and the epoch
//! callback, which runs inside a segment on that same thread, adds the open segment's share so
//! far. Time spent waiting between polls (a CPU-starved machine, the throttle's pauses, I/O) is
//! nobody's CPU and is not counted. Host calls are metered the same way (`host_call`) and taken
//! off: the budget is the plugin's own code.
//!
//! Two clocks. Until the call first reaches an epoch tick, its segments are timed on the
//! monotonic wall clock (read in user space); from that tick on, on the thread's CPU clock
//! (`CLOCK_THREAD_CPUTIME_ID`), whose every read is a system call (no vDSO path: about a
//! microsecond on a virtual machine, a sixth of a whole short call when read twice per poll).
//! Nearly every call ends before its first tick. A call that does not is charged at most the
//! wall time its polls took before that tick (within two ticks, `EPOCH_TICK`, of its start,
//! however starved the machine: ticks come by the wall clock), and exactly its CPU after it.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rustix::time::{ClockId, clock_gettime};

/// CPU time the calling thread has used since it started.
pub fn thread_cpu() -> Duration {
    let t = clock_gettime(ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos().try_into().unwrap_or(u64::MAX)
}

/// The monotonic clock, in nanoseconds since the first reading.
fn wall() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    nanos(EPOCH.get_or_init(Instant::now).elapsed())
}

/// No poll segment is open.
const CLOSED: u64 = u64::MAX;

/// One call's CPU, shared by its store (the epoch callback reads it) and the future that polls
/// the call (which writes it). Atomics, not a lock: the two never run at once (the callback runs
/// inside the poll), but the future may move between threads, so it must be `Sync`.
#[derive(Debug)]
pub struct CpuAccount {
    /// CPU of the call's poll segments that ended.
    closed: AtomicU64,
    /// The clock (`precise`'s) when the open segment began; `CLOSED` between polls.
    open_since: AtomicU64,
    /// CPU spent in host calls (part of the segments above, not the plugin's).
    host: AtomicU64,
    /// Segments are timed on the polling thread's CPU clock: the call reached an epoch tick.
    precise: AtomicBool,
}

impl Default for CpuAccount {
    fn default() -> Self {
        CpuAccount {
            closed: AtomicU64::new(0),
            open_since: AtomicU64::new(CLOSED),
            host: AtomicU64::new(0),
            precise: AtomicBool::new(false),
        }
    }
}

impl CpuAccount {
    /// Starts counting a new call.
    pub fn reset(&self) {
        self.closed.store(0, Ordering::Relaxed);
        self.open_since.store(CLOSED, Ordering::Relaxed);
        self.host.store(0, Ordering::Relaxed);
        self.precise.store(false, Ordering::Relaxed);
    }

    /// The clock segments are timed on now: the wall clock, or the thread's CPU clock.
    fn now(&self) -> u64 {
        if self.precise.load(Ordering::Relaxed) { nanos(thread_cpu()) } else { wall() }
    }

    /// The plugin's CPU so far: on the thread running the call when inside a poll (the epoch
    /// callback, which from then on times the call on the CPU clock), or what the ended
    /// segments add up to. `None` when the call is not metered at all (no segment ever ran
    /// through `metered`).
    pub fn guest(&self) -> Option<Duration> {
        let closed = self.closed.load(Ordering::Relaxed);
        let open = match self.open_since.load(Ordering::Relaxed) {
            CLOSED if closed == 0 => return None,
            CLOSED => 0,
            since if self.precise.load(Ordering::Relaxed) => nanos(thread_cpu()).saturating_sub(since),
            since => {
                // The first tick: the open segment so far on the wall clock, the rest of it on
                // the CPU clock, from now.
                let so_far = wall().saturating_sub(since);
                self.closed.fetch_add(so_far, Ordering::Relaxed);
                self.precise.store(true, Ordering::Relaxed);
                self.open_since.store(nanos(thread_cpu()), Ordering::Relaxed);
                so_far
            }
        };
        let total = closed.saturating_add(open);
        Some(Duration::from_nanos(total.saturating_sub(self.host.load(Ordering::Relaxed))))
    }

    fn open(&self) {
        self.open_since.store(self.now(), Ordering::Relaxed);
    }

    fn close(&self) {
        let since = self.open_since.swap(CLOSED, Ordering::Relaxed);
        let spent = self.now().saturating_sub(since);
        // A segment that measured nothing still marks the call as metered.
        self.closed.fetch_add(spent.max(1), Ordering::Relaxed);
    }
}

/// Runs a plugin call (or instantiation), counting the CPU of each poll into `account`.
pub async fn metered<F: Future>(account: Arc<CpuAccount>, call: F) -> F::Output {
    let mut call = std::pin::pin!(call);
    std::future::poll_fn(|cx| {
        account.open();
        let out = call.as_mut().poll(cx);
        account.close();
        out
    })
    .await
}

/// Runs a host call made by a plugin, counting its time as the host's: it runs inside the
/// call's segments, and is taken off what the plugin spent, on the clock the segments are
/// timed on (the epoch callback, which changes it, does not run during a host call).
pub async fn host_call<F: Future>(account: Arc<CpuAccount>, call: F) -> F::Output {
    let mut call = std::pin::pin!(call);
    std::future::poll_fn(|cx| {
        let since = account.now();
        let out = call.as_mut().poll(cx);
        let spent = account.now().saturating_sub(since);
        account.host.fetch_add(spent, Ordering::Relaxed);
        out
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spin(d: Duration) {
        let start = thread_cpu();
        while thread_cpu() - start < d {
            std::hint::black_box(0u64);
        }
    }

    #[tokio::test]
    async fn counts_the_cpu_of_every_poll_and_not_the_waits_between() {
        let account = Arc::new(CpuAccount::default());
        assert_eq!(account.guest(), None, "nothing metered yet");
        let wall = std::time::Instant::now();
        metered(account.clone(), async {
            for _ in 0..3 {
                spin(Duration::from_millis(10));
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        })
        .await;
        let cpu = account.guest().unwrap_or_default();
        assert!(wall.elapsed() >= Duration::from_millis(120), "{:?}", wall.elapsed());
        assert!(cpu >= Duration::from_millis(30) && cpu < Duration::from_millis(60), "{cpu:?}");
    }

    /// Guards the switch to the CPU clock at the first tick (`guest` inside a poll): without it
    /// the time a call is held off the CPU after its first tick counts as its own.
    #[tokio::test]
    async fn a_call_is_timed_by_the_wall_clock_until_its_first_tick_then_by_its_cpu() {
        let account = Arc::new(CpuAccount::default());
        metered(account.clone(), async {
            // Off the CPU, before the first tick: charged (the wall clock's bound).
            std::thread::sleep(Duration::from_millis(20));
            let at_tick = account.guest().unwrap_or_default();
            assert!(at_tick >= Duration::from_millis(20), "{at_tick:?}");
            // Off the CPU after it: not charged.
            std::thread::sleep(Duration::from_millis(60));
            spin(Duration::from_millis(10));
        })
        .await;
        let cpu = account.guest().unwrap_or_default();
        assert!(cpu >= Duration::from_millis(30) && cpu < Duration::from_millis(60), "{cpu:?}");
    }

    #[tokio::test]
    async fn host_calls_are_not_the_plugins() {
        let account = Arc::new(CpuAccount::default());
        metered(account.clone(), async {
            spin(Duration::from_millis(10));
            host_call(account.clone(), async { spin(Duration::from_millis(40)) }).await;
        })
        .await;
        let cpu = account.guest().unwrap_or_default();
        assert!(cpu >= Duration::from_millis(10) && cpu < Duration::from_millis(25), "{cpu:?}");
        account.reset();
        assert_eq!(account.guest(), None);
    }
}
