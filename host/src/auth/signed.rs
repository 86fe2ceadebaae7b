//! Signed bearer tokens in the shape of the distribution token spec: a JWT (`header.claims.
//! signature`, base64url without padding) signed with HMAC-SHA256 under the key in
//! `signing.key`. The token names its user; what that user may do is decided per request from
//! the user's current permissions, so the `access` claim only echoes the scopes asked for.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use serde::{Deserialize, Serialize};

/// `{"alg":"HS256","typ":"JWT"}`, encoded once: binaryrepo only checks tokens it issued, so a
/// token whose header is anything else is refused without looking further (no `alg` games).
const HEADER: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";
pub const ISSUER: &str = "binaryrepo";
/// Longest token looked at; ours are a few hundred bytes plus the scopes.
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Tokens issued up to this far in the future (clock adjustments) still count.
const CLOCK_SKEW_SECONDS: u64 = 60;
pub const MAX_SCOPES: usize = 16;
const MAX_SCOPE_BYTES: usize = 512;

/// One scope asked of the token endpoint: `repository:library/alpine:pull,push`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("scope {0:?} is not TYPE:NAME:ACTIONS")]
pub struct ScopeError(pub String);

impl Scope {
    /// The resource type is before the first `:`, the actions after the last (a name may hold a
    /// `host:port`).
    pub fn parse(s: &str) -> Result<Scope, ScopeError> {
        let bad = || ScopeError(s.chars().take(80).collect());
        if s.len() > MAX_SCOPE_BYTES || s.chars().any(|c| c.is_control() || c == ' ') {
            return Err(bad());
        }
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        let (name, actions) = rest.rsplit_once(':').ok_or_else(bad)?;
        if kind.is_empty() || name.is_empty() {
            return Err(bad());
        }
        let actions = actions.split(',').filter(|a| !a.is_empty()).map(String::from).collect();
        Ok(Scope { kind: kind.into(), name: name.into(), actions })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// The user's name; empty for an anonymous token.
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub jti: String,
    #[serde(default)]
    pub access: Vec<Scope>,
    /// The user record's id: a user deleted and created again under the same name does not
    /// inherit the old one's tokens.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed or its signature does not match")]
    Invalid,
    #[error("token has expired")]
    Expired,
}

pub struct Signer {
    key: hmac::Key,
}

impl Signer {
    pub fn new(key: &[u8]) -> Signer {
        Signer { key: hmac::Key::new(hmac::HMAC_SHA256, key) }
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let body = serde_json::to_vec(claims).unwrap_or_default();
        let mut token = String::with_capacity(HEADER.len() + body.len() * 4 / 3 + 48);
        token.push_str(HEADER);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&body, &mut token);
        let tag = hmac::sign(&self.key, token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(tag.as_ref(), &mut token);
        token
    }

    /// Checks the signature (one HMAC), then the issuer and the validity period at `now`
    /// (seconds since the epoch).
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Invalid);
        }
        let (signed, signature) = token.rsplit_once('.').ok_or(TokenError::Invalid)?;
        let (header, body) = signed.split_once('.').ok_or(TokenError::Invalid)?;
        if header != HEADER {
            return Err(TokenError::Invalid);
        }
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| TokenError::Invalid)?;
        hmac::verify(&self.key, signed.as_bytes(), &signature).map_err(|_| TokenError::Invalid)?;
        let body = URL_SAFE_NO_PAD.decode(body).map_err(|_| TokenError::Invalid)?;
        let claims: Claims = serde_json::from_slice(&body).map_err(|_| TokenError::Invalid)?;
        if claims.iss != ISSUER || claims.nbf > now + CLOCK_SKEW_SECONDS || claims.iat > now + CLOCK_SKEW_SECONDS {
            return Err(TokenError::Invalid);
        }
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(now: u64) -> Claims {
        Claims {
            iss: ISSUER.into(),
            sub: "alice".into(),
            aud: "binaryrepo".into(),
            exp: now + 300,
            nbf: now,
            iat: now,
            jti: "j".into(),
            access: vec![Scope::parse("repository:localhost:5000/library/alpine:pull,push").unwrap()],
            uid: "u1".into(),
        }
    }

    #[test]
    fn header_constant_is_hs256() {
        let header = URL_SAFE_NO_PAD.decode(HEADER).unwrap();
        assert_eq!(std::str::from_utf8(&header).unwrap(), r#"{"alg":"HS256","typ":"JWT"}"#);
    }

    #[test]
    fn scope_parsing() {
        let s = Scope::parse("repository:localhost:5000/library/alpine:pull,push").unwrap();
        assert_eq!((s.kind.as_str(), s.name.as_str()), ("repository", "localhost:5000/library/alpine"));
        assert_eq!(s.actions, ["pull", "push"]);
        assert_eq!(Scope::parse("registry:catalog:*").unwrap().actions, ["*"]);
        for bad in ["repository", "repository:x", ":x:pull", "repository::pull", "repository:a b:pull", "a:b\n:pull"] {
            assert!(Scope::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sign_verify_expiry_tamper() {
        let now = 1_800_000_000;
        let signer = Signer::new(&[7; 32]);
        let token = signer.sign(&claims(now));
        assert_eq!(signer.verify(&token, now + 10).unwrap(), claims(now));
        // Expired at exp exactly.
        assert_eq!(signer.verify(&token, now + 300), Err(TokenError::Expired));
        // Another key.
        assert_eq!(Signer::new(&[8; 32]).verify(&token, now), Err(TokenError::Invalid));
        // Claims changed (sub: alice -> admin), signature kept.
        let (h, rest) = token.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let mut forged = claims(now);
        forged.sub = "admin".into();
        let forged = format!("{h}.{}.{sig}", URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap()));
        assert_eq!(signer.verify(&forged, now), Err(TokenError::Invalid));
        // alg=none with the signature dropped.
        let none = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let body = token.split('.').nth(1).unwrap();
        assert_eq!(signer.verify(&format!("{none}.{body}."), now), Err(TokenError::Invalid));
        // A flipped signature bit; garbage.
        let mut bytes = token.clone().into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(signer.verify(std::str::from_utf8(&bytes).unwrap(), now), Err(TokenError::Invalid));
        for junk in ["", ".", "..", "a.b.c", &"x".repeat(20_000)] {
            assert_eq!(signer.verify(junk, now), Err(TokenError::Invalid));
        }
        // Issued in the future (beyond skew).
        let early = signer.sign(&claims(now + 3600));
        assert_eq!(signer.verify(&early, now), Err(TokenError::Invalid));
    }
}
