//! `scratch-*`: volatile per-repository values with a lifetime (bearer tokens), kept in
//! memory only so secrets never reach the disk.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Scope;

const MAX_ENTRIES: usize = 100_000;
const MAX_VALUE: usize = 64 * 1024;
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// (repository, key) -> (value, expiry)
type Entries = HashMap<(String, String), (Vec<u8>, Instant)>;

#[derive(Default)]
pub struct Scratch {
    entries: Mutex<Entries>,
}

impl Scratch {
    pub fn get(&self, repo: &str, key: &str) -> Option<Vec<u8>> {
        let map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&(repo.to_owned(), key.to_owned())).filter(|(_, until)| Instant::now() < *until).map(|(v, _)| v.clone())
    }

    pub fn put(&self, repo: &str, key: &str, value: Vec<u8>, ttl: Duration) {
        if value.len() > MAX_VALUE || ttl.is_zero() {
            return;
        }
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_ENTRIES {
            let now = Instant::now();
            map.retain(|_, (_, until)| *until > now);
            if map.len() >= MAX_ENTRIES {
                return;
            }
        }
        map.insert((repo.to_owned(), key.to_owned()), (value, Instant::now() + ttl.min(MAX_TTL)));
    }

    pub fn forget_repository(&self, repo: &str) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).retain(|(r, _), _| r != repo);
    }
}

pub fn get(state: &Scope, key: &str) -> Option<Vec<u8>> {
    let repo = state.repo().ok()?;
    state.caps.scratch.get(repo.name.as_str(), key)
}

pub fn put(state: &Scope, key: &str, value: Vec<u8>, ttl_seconds: u64) {
    if let Ok(repo) = state.repo() {
        state.caps.scratch.put(repo.name.as_str(), key, value, Duration::from_secs(ttl_seconds));
    }
}
