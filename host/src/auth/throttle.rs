//! Slows down repeated failed logins from one client address.
//!
//! Each address (an IPv6 client by its /64, which one machine usually holds whole) gets a count
//! of failures within a window starting at its first failure. Past `free` failures, every
//! further one is answered only after a delay: 1 s, 2 s, 4 s … capped at 10 s. The table is
//! bounded: when it is full of live entries, new addresses share one overflow entry, so an
//! attacker with many addresses slows all of them down rather than flushing the counts of the
//! others.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

const FIRST_DELAY: Duration = Duration::from_secs(1);
pub const MAX_DELAY: Duration = Duration::from_secs(10);
pub const MAX_ADDRESSES: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4(u32),
    V6Net(u64),
    Overflow,
}

fn source(ip: IpAddr) -> Source {
    match ip {
        IpAddr::V4(v4) => Source::V4(v4.into()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => Source::V4(v4.into()),
            None => Source::V6Net((u128::from(v6) >> 64) as u64),
        },
    }
}

struct Failures {
    count: u32,
    since: Instant,
}

pub struct Throttle {
    table: Mutex<HashMap<Source, Failures>>,
    free: u32,
    window: Duration,
    capacity: usize,
}

impl Throttle {
    pub fn new(free: u32, window: Duration) -> Throttle {
        Throttle::with_capacity(free, window, MAX_ADDRESSES)
    }

    fn with_capacity(free: u32, window: Duration, capacity: usize) -> Throttle {
        Throttle { table: Mutex::new(HashMap::new()), free, window, capacity: capacity.max(1) }
    }

    /// Counts one failure from `client`; returns how long to wait before answering it.
    pub fn failure(&self, client: IpAddr) -> Duration {
        let now = Instant::now();
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let mut key = source(client);
        if !table.contains_key(&key) && table.len() >= self.capacity {
            let window = self.window;
            table.retain(|_, f| now.duration_since(f.since) < window);
            if table.len() >= self.capacity {
                key = Source::Overflow;
            }
        }
        let entry = table.entry(key).or_insert(Failures { count: 0, since: now });
        if now.duration_since(entry.since) >= self.window {
            *entry = Failures { count: 0, since: now };
        }
        entry.count = entry.count.saturating_add(1);
        delay(entry.count.saturating_sub(self.free))
    }
}

/// The delay for the `over`-th failure past the free ones (0: none).
fn delay(over: u32) -> Duration {
    match over {
        0 => Duration::ZERO,
        n => FIRST_DELAY.saturating_mul(1u32 << (n - 1).min(16)).min(MAX_DELAY),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn delay_grows_capped_and_resets_after_window() {
        let t = Throttle::new(3, Duration::from_secs(300));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let secs: Vec<u64> = (0..9).map(|_| t.failure(a).as_secs()).collect();
        assert_eq!(secs, [0, 0, 0, 1, 2, 4, 8, 10, 10]);
        // Another address is not affected; the IPv4-mapped form is the same client.
        assert_eq!(t.failure("192.0.2.2".parse().unwrap()), Duration::ZERO);
        assert_eq!(t.failure("::ffff:192.0.2.1".parse().unwrap()), MAX_DELAY);
        // One IPv6 /64 is one client.
        for i in 0..3 {
            assert_eq!(t.failure(format!("2001:db8::{i}").parse().unwrap()), Duration::ZERO);
        }
        assert_eq!(t.failure("2001:db8::ffff:1".parse().unwrap()), FIRST_DELAY);
        tokio::time::advance(Duration::from_secs(301)).await;
        assert_eq!(t.failure(a), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn full_table_sends_new_addresses_to_one_shared_entry() {
        let t = Throttle::with_capacity(1, Duration::from_secs(60), 4);
        for i in 0..4 {
            t.failure(IpAddr::from([10, 0, 0, i]));
        }
        // New addresses now share the overflow entry: the second of them is already delayed.
        assert_eq!(t.failure(IpAddr::from([10, 0, 1, 1])), Duration::ZERO);
        assert_eq!(t.failure(IpAddr::from([10, 0, 1, 2])), FIRST_DELAY);
        assert!(t.table.lock().unwrap().len() <= 5);
        // Once the old entries have expired they make room again.
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(t.failure(IpAddr::from([10, 0, 2, 1])), Duration::ZERO);
        assert!(t.table.lock().unwrap().contains_key(&Source::V4(u32::from_be_bytes([10, 0, 2, 1]))));
    }
}
