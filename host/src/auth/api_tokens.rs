//! API tokens: long-lived secrets a user creates for CI, usable wherever a password is.
//!
//! The secret (`brt_` + 32 random bytes, base64url) is shown once, at creation; `tokens.json`
//! keeps only its SHA-256, which is also how a presented token is found (one hash, one map
//! look-up; no bcrypt needed, the secret has 256 bits of entropy).

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use super::names::UserName;

pub const PREFIX: &str = "brt_";
/// Tokens one user may hold, so that neither memory nor `tokens.json` grows without bound.
pub const MAX_PER_USER: usize = 100;
pub const MAX_NAME_CHARS: usize = 64;

pub type TokenHash = [u8; 32];

pub fn hash(secret: &str) -> TokenHash {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref());
    out
}

pub fn secret_from(random: &[u8; 32]) -> TokenSecret {
    TokenSecret(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(random)))
}

/// A token's secret, shown once. Not printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenSecret(String);

impl TokenSecret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSecret(..)")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredToken {
    pub id: String,
    pub user: UserName,
    /// The owner's record id at creation (see `StoredUser::id`).
    pub user_id: String,
    pub name: String,
    /// SHA-256 of the secret, hex.
    pub sha256: String,
    pub created_at: u64,
    #[serde(default)]
    pub expires_at: Option<u64>,
}

impl StoredToken {
    pub fn view(&self) -> TokenView {
        TokenView {
            id: self.id.clone(),
            user: self.user.clone(),
            name: self.name.clone(),
            created_at: self.created_at,
            expires_at: self.expires_at,
        }
    }

    pub fn expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensFile {
    pub tokens: Vec<StoredToken>,
}

/// What the API shows of a token (never the secret or its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenView {
    pub id: String,
    pub user: UserName,
    pub name: String,
    pub created_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// A token's name: what it is for ("ci", "laptop"), shown in listings.
pub fn valid_name(name: &str) -> bool {
    let n = name.chars().count();
    (1..=MAX_NAME_CHARS).contains(&n) && !name.chars().any(char::is_control)
}
