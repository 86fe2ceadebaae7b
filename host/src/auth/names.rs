//! Validated user and group names. Both appear in audit lines and in permission strings
//! (`user:NAME`, `group:NAME`), so they are kept to a small, unambiguous alphabet.

use std::fmt;

use serde::{Deserialize, Serialize};

/// `[a-z0-9][a-z0-9._-]{0,63}`.
fn valid(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-'))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{kind} name {name:?} is not valid: 1 to 64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit")]
    Invalid { kind: &'static str, name: String },
    /// `anonymous` names the caller without credentials in audit lines and permissions.
    #[error("user name {0:?} is reserved")]
    Reserved(String),
}

/// A user's name, validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserName(String);

impl UserName {
    pub fn parse(s: &str) -> Result<UserName, NameError> {
        if !valid(s) {
            return Err(NameError::Invalid { kind: "user", name: s.chars().take(80).collect() });
        }
        if s == "anonymous" {
            return Err(NameError::Reserved(s.into()));
        }
        Ok(UserName(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `admin`, the user a first start creates.
    pub(super) fn first_admin() -> UserName {
        UserName(super::FIRST_ADMIN.into())
    }
}

/// A group's name, validated (same alphabet as user names).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GroupName(String);

impl GroupName {
    pub fn parse(s: &str) -> Result<GroupName, NameError> {
        if !valid(s) {
            return Err(NameError::Invalid { kind: "group", name: s.chars().take(80).collect() });
        }
        Ok(GroupName(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! string_newtype {
    ($t:ident) => {
        impl TryFrom<String> for $t {
            type Error = NameError;
            fn try_from(s: String) -> Result<$t, NameError> {
                $t::parse(&s)
            }
        }
        impl From<$t> for String {
            fn from(n: $t) -> String {
                n.0
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}
string_newtype!(UserName);
string_newtype!(GroupName);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_documented_alphabet() {
        for ok in ["a", "alice", "ci-bot.2", "0day", &"x".repeat(64)] {
            assert!(UserName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Alice", "-x", ".x", "a b", "a:b", "a/b", "ä", &"x".repeat(65), "anonymous"] {
            assert!(UserName::parse(bad).is_err(), "{bad}");
        }
        assert!(GroupName::parse("anonymous").is_ok());
    }
}
