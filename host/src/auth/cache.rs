//! Verified passwords, remembered for a short while so that a client sending Basic credentials
//! with every request (most of them do) costs a keyed hash and a map look-up, not a bcrypt.
//!
//! The key is HMAC-SHA256(process key, user ‖ 0 ‖ password): only the exact pair that was
//! verified ever matches (a wrong password is a different key, so it is never answered from
//! here), and the table holds no password or anything that could be checked against one
//! outside this process. An entry names the generation of the user record it was verified
//! against; any change to that user (password, groups, admin, deletion) gives the record a
//! new generation, so the entry is dropped at its next look-up.
//!
//! A client that opens many connections at once (Docker, containerd and wrk open 4–16) sends the
//! same new credentials on all of them before the first check has finished. They take turns by
//! key (`turn`): the first runs bcrypt, the others find its result in the cache, so a burst costs
//! one bcrypt instead of one per connection (each tens of milliseconds of a core).

use std::time::Duration;

use quick_cache::sync::Cache;
use ring::hmac;
use tokio::time::Instant;

pub type Key = [u8; 32];

#[derive(Clone)]
struct Entry {
    generation: u64,
    verified_at: Instant,
}

/// Turns are taken on one of these locks, chosen by the key: a fixed set, so nothing a client
/// sends makes it grow. Two pairs that share a lock wait for each other's bcrypt, which the
/// hasher's permits (one per core) would mostly have serialised anyway.
const TURNS: usize = 256;

pub struct CredentialCache {
    key: hmac::Key,
    entries: Option<Cache<Key, Entry>>,
    ttl: Duration,
    turns: Box<[tokio::sync::Mutex<()>]>,
}

impl CredentialCache {
    /// `capacity` 0 or a zero `ttl` turns caching off.
    pub fn new(process_key: &[u8; 32], capacity: usize, ttl: Duration) -> CredentialCache {
        let entries = (capacity > 0 && !ttl.is_zero()).then(|| Cache::new(capacity));
        let turns = (0..TURNS).map(|_| tokio::sync::Mutex::new(())).collect();
        CredentialCache { key: hmac::Key::new(hmac::HMAC_SHA256, process_key), entries, ttl, turns }
    }

    /// How long a verified password is taken without bcrypt; None when caching is off.
    pub fn ttl(&self) -> Option<Duration> {
        self.entries.as_ref().map(|_| self.ttl)
    }

    pub fn key(&self, user: &str, password: &[u8]) -> Key {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(user.as_bytes());
        ctx.update(&[0]);
        ctx.update(password);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// Whether this pair was verified against the user record of `generation`, recently.
    pub fn hit(&self, key: &Key, generation: u64) -> bool {
        let Some(entries) = &self.entries else { return false };
        match entries.get(key) {
            Some(e) if e.generation == generation && e.verified_at.elapsed() < self.ttl => true,
            Some(_) => {
                entries.remove(key);
                false
            }
            None => false,
        }
    }

    /// Waits for the checks of the same pair that are under way; hold the guard while checking,
    /// and look in the cache again once it is held. None when caching is off (nothing to wait for).
    pub async fn turn(&self, key: &Key) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        self.entries.as_ref()?;
        Some(self.turns[usize::from(key[0]) % TURNS].lock().await)
    }

    pub fn insert(&self, key: Key, generation: u64) {
        if let Some(entries) = &self.entries {
            entries.insert(key, Entry { generation, verified_at: Instant::now() });
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.as_ref().map_or(0, |e| e.len())
    }
}
