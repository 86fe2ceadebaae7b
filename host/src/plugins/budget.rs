//! A plugin call's budget: the CPU its own code may use (`plugin_cpu_ms`, plus what it earns by
//! moving large documents), checked at every epoch tick against the CPU it actually used
//! (`cpu`), so that a machine busy with other work slows a call down but never fails it. A much
//! larger ceiling on the time the call holds its request ends a call that stops making progress
//! for any other reason.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::UpdateDeadline;

use super::cpu::{self, CpuAccount};

/// Past this much CPU a plugin call is throttled: at each tick it pauses for `PAUSE_PER_CPU`
/// times the CPU it used since the previous tick, so it takes at most a fifth of a thread
/// however loaded the machine is, and a few looping plugins cannot fill every worker thread.
/// (A request takes microseconds of plugin CPU: a call this long is abnormal or very large.)
pub const LONG_CALL: Duration = Duration::from_millis(10);
const PAUSE_PER_CPU: u32 = 4;
/// The longest single pause (a tick that came late after a long run).
const PAUSE_MAX: Duration = Duration::from_millis(100);

/// The wall-clock ceiling, in multiples of the CPU budget: throttled at a fifth of a thread, a
/// call on a machine whose threads get a quarter of a core each still ends by its CPU budget.
const WALL_PER_CPU: u32 = 20;
/// ...and never less than this.
const WALL_MIN: Duration = Duration::from_secs(10);

/// Time a call earns per MiB it reads or writes through the host (`credit_bytes`): about five
/// times the CPU rewriting a chart index line by line takes.
const CPU_PER_MIB: Duration = Duration::from_millis(200);
/// The most a call earns that way (a 50 MB index read and written again).
const MAX_CREDIT: Duration = Duration::from_secs(20);

/// A call that spent its budget: the server's limit, not a fault of the plugin's code (the same
/// call may pass when retried; an endless loop ends here too).
#[derive(Debug, Clone, thiserror::Error)]
pub enum OverBudget {
    #[error("over its CPU budget: {} ms of CPU, budget {} ms", .spent.as_millis(), .budget.as_millis())]
    Cpu { spent: Duration, budget: Duration },
    #[error("over its time ceiling: held the request {:.1} s (ceiling {:.1} s) after {} ms of CPU", .held.as_secs_f64(), .ceiling.as_secs_f64(), .cpu.as_millis())]
    Wall { held: Duration, ceiling: Duration, cpu: Duration },
}

/// The clock and budget of the call a store is running.
pub struct CallClock {
    cpu: Arc<CpuAccount>,
    started: Instant,
    /// Wall time spent inside host calls (upstream I/O, storage): not the plugin's.
    host_wall: Duration,
    /// CPU this call may take.
    budget: Duration,
    default_budget: Duration,
    /// Whether a long call pauses between ticks (garbage collection's calls run alone and do not).
    throttled: bool,
    /// The call's CPU at the previous tick (what the throttle's pause is proportional to).
    cpu_at_tick: Duration,
}

impl CallClock {
    pub fn new(budget: Duration) -> CallClock {
        CallClock {
            cpu: Arc::new(CpuAccount::default()),
            started: Instant::now(),
            host_wall: Duration::ZERO,
            budget,
            default_budget: budget,
            throttled: true,
            cpu_at_tick: Duration::ZERO,
        }
    }

    /// Starts the accounting of one more call on this store.
    pub fn begin(&mut self) {
        self.cpu.reset();
        self.started = Instant::now();
        self.host_wall = Duration::ZERO;
        self.budget = self.default_budget;
        self.throttled = true;
        self.cpu_at_tick = Duration::ZERO;
    }

    /// Garbage collection's call: `budget` of CPU, not throttled.
    pub fn for_collection(&mut self, budget: Duration) {
        self.budget = budget;
        self.throttled = false;
    }

    /// What the future that polls the call counts its CPU into (`cpu::metered`).
    pub fn account(&self) -> Arc<CpuAccount> {
        self.cpu.clone()
    }

    /// The plugin's own CPU so far. A call not run through `cpu::metered` (none is) would be
    /// counted by the wall clock, minus host calls, as the safe side.
    pub fn guest_cpu(&self) -> Duration {
        self.cpu.guest().unwrap_or_else(|| self.held())
    }

    /// Wall time the call has held its request outside host calls.
    pub fn held(&self) -> Duration {
        self.started.elapsed().saturating_sub(self.host_wall)
    }

    fn wall_ceiling(&self) -> Duration {
        (self.budget * WALL_PER_CPU).max(WALL_MIN)
    }

    /// A call that moves `bytes` of a document or upload across the boundary earns CPU in
    /// proportion: work on a 50 MB index is not a runaway. Capped, so a plugin cannot buy
    /// itself unbounded time by reading the same blob in a loop.
    pub fn credit_bytes(&mut self, bytes: usize) {
        let ceiling = self.budget.max(self.default_budget + MAX_CREDIT);
        self.budget = (self.budget + CPU_PER_MIB.mul_f64(bytes as f64 / (1024.0 * 1024.0))).min(ceiling);
    }

    /// Runs a host call for the plugin: neither its CPU nor its wall time is the plugin's.
    pub async fn host_call<F: Future>(cpu: Arc<CpuAccount>, call: F) -> (F::Output, Duration) {
        let started = Instant::now();
        let out = cpu::host_call(cpu, call).await;
        (out, started.elapsed())
    }

    pub fn add_host_wall(&mut self, d: Duration) {
        self.host_wall += d;
    }

    /// The epoch callback: whether the call goes on (yielding its thread, and pausing when it is
    /// long), or ends over its budget. Runs on the thread running the guest, inside its poll.
    pub fn on_tick(&mut self) -> Result<UpdateDeadline, OverBudget> {
        let spent = self.guest_cpu();
        if spent > self.budget {
            return Err(OverBudget::Cpu { spent, budget: self.budget });
        }
        let (held, ceiling) = (self.held(), self.wall_ceiling());
        if held > ceiling {
            return Err(OverBudget::Wall { held, ceiling, cpu: spent });
        }
        let since_tick = spent.saturating_sub(self.cpu_at_tick);
        self.cpu_at_tick = spent;
        Ok(if self.throttled && spent > LONG_CALL {
            let pause = (since_tick * PAUSE_PER_CPU).min(PAUSE_MAX);
            UpdateDeadline::YieldCustom(1, Box::pin(tokio::time::sleep(pause)))
        } else {
            UpdateDeadline::Yield(1)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};
    use wasmtime::{Config, Engine, Instance, Module, Store};

    use super::*;
    use crate::plugins::epoch::Ticker;

    /// `(module (func (export "spin") (loop (br 0))))`: an endless loop.
    const SPIN: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
        0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type: () -> ()
        0x03, 0x02, 0x01, 0x00, // func 0 of type 0
        0x07, 0x08, 0x01, 0x04, b's', b'p', b'i', b'n', 0x00, 0x00, // export "spin"
        0x0a, 0x09, 0x01, 0x07, 0x00, 0x03, 0x40, 0x0c, 0x00, 0x0b, 0x0b, // loop { br 0 }
    ];

    /// Runs `spin` under a `CallClock` of `budget` the way plugin calls run (metered, the
    /// clock's tick decision as the epoch callback): the error it ended with and the wall time.
    fn spin(budget: Duration, collection: bool) -> (OverBudget, Duration) {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).expect("engine");
        let module = Module::new(&engine, SPIN).expect("module");
        let ticker = Ticker::start(engine.clone()).expect("ticker");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let mut store = Store::new(&engine, CallClock::new(budget));
            store.set_epoch_deadline(1);
            store.epoch_deadline_callback(|mut ctx| Ok(ctx.data_mut().on_tick()?));
            if collection {
                store.data_mut().for_collection(budget);
            }
            let instance = Instance::new_async(&mut store, &module, &[]).await.expect("instance");
            let f = instance.get_typed_func::<(), ()>(&mut store, "spin").expect("spin");
            let _running = ticker.running();
            store.data_mut().begin();
            if collection {
                store.data_mut().for_collection(budget);
            }
            let cpu = store.data().account();
            let started = Instant::now();
            let err = cpu::metered(cpu, f.call_async(&mut store, ())).await.expect_err("an endless loop ends");
            let over = err.downcast_ref::<OverBudget>().cloned().unwrap_or_else(|| panic!("not over budget: {err:?}"));
            (over, started.elapsed())
        })
    }

    /// Busy threads on the CPU this thread is pinned to, until dropped.
    struct Starve {
        stop: std::sync::Arc<AtomicBool>,
        threads: Vec<std::thread::JoinHandle<()>>,
    }

    impl Drop for Starve {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        }
    }

    /// Pins this thread (and the threads it starts from now on) to one CPU and runs `busy`
    /// spinning threads there: the thread then gets about 1/(busy + 1) of a core.
    fn starve(busy: usize) -> Starve {
        let allowed = sched_getaffinity(None).expect("affinity");
        let cpu = (0..CpuSet::MAX_CPU).find(|&c| allowed.is_set(c)).expect("a CPU");
        let mut one = CpuSet::new();
        one.set(cpu);
        sched_setaffinity(None, &one).expect("pin");
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let threads = (0..busy)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::black_box(0u64);
                    }
                })
            })
            .collect();
        Starve { stop, threads }
    }

    #[test]
    fn a_call_starved_of_cpu_runs_until_its_cpu_budget_not_its_wall_time() {
        let budget = Duration::from_millis(100);
        // Three spinning threads on the same core: the call gets about a quarter of it, and is
        // throttled to a fifth of that past `LONG_CALL`. A wall-clock budget would end it after
        // 100 ms having used some 10 ms of CPU.
        let (over, wall) = {
            let _starved = starve(3);
            spin(budget, false)
        };
        let OverBudget::Cpu { spent, budget: b } = over else { panic!("ended by the wall clock: {over}") };
        assert_eq!(b, budget);
        assert!(spent >= budget && spent < budget * 2, "CPU spent {spent:?}");
        assert!(wall > budget * 3, "a starved call took {wall:?} of wall time for {spent:?} of CPU: not starved?");
    }

    #[test]
    fn an_unstarved_collection_call_ends_at_its_cpu_budget() {
        let budget = Duration::from_millis(150);
        let (over, wall) = spin(budget, true);
        assert!(matches!(over, OverBudget::Cpu { .. }), "{over}");
        // Not throttled and not starved: CPU and wall time go together (the tests' machine may be
        // busy, so only a loose upper bound).
        assert!(wall >= budget && wall < budget * 20, "{wall:?}");
    }

    #[test]
    fn a_call_that_holds_its_request_past_the_ceiling_ends() {
        let mut clock = CallClock::new(Duration::from_millis(100));
        assert!(clock.on_tick().is_ok());
        // A call that began longer ago than the ceiling and ran for next to no CPU (one tiny
        // metered poll): it was held, not running, yet it ends.
        clock.started -= WALL_MIN + Duration::from_secs(1);
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        rt.block_on(cpu::metered(clock.account(), async {}));
        assert!(clock.guest_cpu() < Duration::from_millis(5), "{:?}", clock.guest_cpu());
        match clock.on_tick() {
            Err(OverBudget::Wall { held, ceiling, .. }) => assert!(held > ceiling && ceiling == WALL_MIN, "{held:?} {ceiling:?}"),
            other => panic!("expected the wall ceiling, got {:?}", other.err()),
        }
    }

    #[test]
    fn credit_is_capped() {
        let mut clock = CallClock::new(Duration::from_millis(100));
        clock.credit_bytes(1 << 20);
        assert_eq!(clock.budget, Duration::from_millis(300));
        clock.credit_bytes(1 << 30);
        assert_eq!(clock.budget, Duration::from_millis(100) + MAX_CREDIT);
    }
}
