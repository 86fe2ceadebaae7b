//! Which upstream origins recently failed to connect, so requests for cached content do not
//! wait out a connect timeout every time while an upstream is down.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Health {
    down_for: Duration,
    down_until: Mutex<HashMap<String, Instant>>,
}

impl Health {
    pub fn new(down_for: Duration) -> Health {
        Health { down_for, down_until: Mutex::new(HashMap::new()) }
    }

    pub fn is_down(&self, origin: &str) -> bool {
        let map = self.down_until.lock().unwrap_or_else(|e| e.into_inner());
        map.get(origin).is_some_and(|until| Instant::now() < *until)
    }

    pub fn mark_down(&self, origin: &str) {
        if self.down_for.is_zero() {
            return;
        }
        tracing::warn!(origin, seconds = self.down_for.as_secs(), "upstream unreachable; failing fast for a while");
        let mut map = self.down_until.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(origin.to_owned(), Instant::now() + self.down_for);
    }

    pub fn mark_up(&self, origin: &str) {
        let mut map = self.down_until.lock().unwrap_or_else(|e| e.into_inner());
        if map.remove(origin).is_some() {
            tracing::info!(origin, "upstream reachable again");
        }
    }
}
