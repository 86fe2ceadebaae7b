//! bcrypt password hashes, and the bounded pool that checks them.
//!
//! bcrypt is slow on purpose (tens to hundreds of milliseconds), so it never runs on the async
//! threads: every check goes to tokio's blocking pool, and at most one per CPU at a time, so a
//! flood of bad passwords costs CPU time, not threads or memory.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Semaphore;

/// Work factors accepted in hashes given to binaryrepo. A higher cost makes every login with
/// that hash take seconds (cost 16 ≈ 5 s), which a hash handed in through the API must not be
/// able to impose on the server.
pub const MAX_COST: u32 = 14;
pub const MIN_COST: u32 = 4;

/// Longest password bcrypt can tell apart (it ignores everything past 72 bytes).
pub const MAX_PASSWORD_BYTES: usize = 72;
pub const MIN_PASSWORD_CHARS: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    #[error("not a bcrypt hash ($2y$, $2b$ or $2a$ followed by the cost and 53 characters)")]
    NotBcrypt,
    #[error("bcrypt cost {0} is outside {MIN_COST}..={MAX_COST}")]
    Cost(u32),
}

/// A validated bcrypt hash (`$2y$`, `$2b$` or `$2a$`).
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash(String);

impl PasswordHash {
    pub fn parse(s: &str) -> Result<PasswordHash, HashError> {
        let prefix_ok = ["$2y$", "$2b$", "$2a$"].iter().any(|p| s.starts_with(p));
        let parts: bcrypt::HashParts = match s.parse() {
            Ok(parts) if prefix_ok => parts,
            _ => return Err(HashError::NotBcrypt),
        };
        let cost = parts.get_cost();
        if !(MIN_COST..=MAX_COST).contains(&cost) {
            return Err(HashError::Cost(cost));
        }
        Ok(PasswordHash(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(..)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("password too short: at least {MIN_PASSWORD_CHARS} characters")]
    TooShort,
    #[error("password too long: at most {MAX_PASSWORD_BYTES} bytes (bcrypt ignores the rest)")]
    TooLong,
}

/// Checks a new password against the rules for passwords binaryrepo hashes itself.
pub fn check_new_password(password: &str) -> Result<(), PasswordError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(PasswordError::TooShort);
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(PasswordError::TooLong);
    }
    Ok(())
}

/// The blocking task running bcrypt did not finish (it panicked or the runtime is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("password check did not complete: {0}")]
pub struct HasherGone(String);

/// Runs bcrypt off the async threads, a bounded number at a time.
pub struct Hasher {
    permits: Arc<Semaphore>,
    cost: u32,
    /// bcrypt runs so far (checks, hashes and decoys): what the credential cache saves.
    runs: AtomicU64,
}

impl Hasher {
    pub fn new(cost: u32) -> Hasher {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Hasher { permits: Arc::new(Semaphore::new(cpus)), cost: cost.clamp(MIN_COST, MAX_COST), runs: AtomicU64::new(0) }
    }

    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, HasherGone> {
        let permit = self.permits.clone().acquire_owned().await.map_err(|e| HasherGone(e.to_string()))?;
        self.runs.fetch_add(1, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || {
            let out = work();
            drop(permit);
            out
        })
        .await
        .map_err(|e| HasherGone(e.to_string()))
    }

    /// Whether `password` matches `hash`.
    pub async fn verify(&self, password: Vec<u8>, hash: PasswordHash) -> Result<bool, HasherGone> {
        self.run(move || bcrypt::verify(&password, hash.as_str()).unwrap_or(false)).await
    }

    /// Spends what a check would, so that an unknown user name answers no faster than a known one.
    pub async fn decoy(&self) -> Result<(), HasherGone> {
        let cost = self.cost;
        self.run(move || drop(bcrypt::hash_with_salt(b"decoy", cost, [0; 16]))).await
    }

    /// A new hash of `password` at the configured cost.
    pub async fn hash(&self, password: String) -> Result<PasswordHash, HasherGone> {
        let cost = self.cost;
        let hashed = self.run(move || bcrypt::hash(password.as_bytes(), cost)).await?;
        hashed.map(PasswordHash).map_err(|e| HasherGone(e.to_string()))
    }

    /// The same, on the calling thread (start-up only).
    pub fn hash_now(&self, password: &str) -> Result<PasswordHash, HasherGone> {
        self.runs.fetch_add(1, Ordering::Relaxed);
        bcrypt::hash(password.as_bytes(), self.cost).map(PasswordHash).map_err(|e| HasherGone(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_bcrypt_variants_only() {
        let h = bcrypt::hash("secret-password", 4).unwrap();
        let parts: bcrypt::HashParts = h.parse().unwrap();
        for v in [bcrypt::Version::TwoY, bcrypt::Version::TwoB, bcrypt::Version::TwoA] {
            assert!(PasswordHash::parse(&parts.format_for_version(v)).is_ok());
        }
        assert_eq!(PasswordHash::parse(&parts.format_for_version(bcrypt::Version::TwoX)), Err(HashError::NotBcrypt));
        assert_eq!(PasswordHash::parse("$apr1$abc$def"), Err(HashError::NotBcrypt));
        assert_eq!(PasswordHash::parse("{SHA}qUqP5cyxm6YcTAhz05Hph5gvu9M="), Err(HashError::NotBcrypt));
        let costly = h.replacen("$04$", "$20$", 1);
        assert_eq!(PasswordHash::parse(&costly), Err(HashError::Cost(20)));
    }

    #[test]
    fn new_password_rules() {
        assert_eq!(check_new_password("short"), Err(PasswordError::TooShort));
        assert_eq!(check_new_password(&"x".repeat(73)), Err(PasswordError::TooLong));
        assert!(check_new_password("eight ch").is_ok());
    }
}
