//! User records: those created through the API (`users.json`), and the read-only ones from the
//! configuration file and the htpasswd file.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::identity::{UserIdentity, Via};
use super::names::{GroupName, UserName};
use super::password::PasswordHash;
use crate::config::ConfigUser;

/// Where a user is defined; only `api` users can be changed through the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Api,
    Config,
    Htpasswd,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Api => "api",
            Source::Config => "config",
            Source::Htpasswd => "htpasswd",
        }
    }
}

/// A user as `users.json` keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredUser {
    pub name: UserName,
    /// Random, fixed at creation: tokens name it, so a user deleted and created again under the
    /// same name does not inherit the old one's tokens.
    pub id: String,
    #[serde(with = "hash_serde")]
    pub password_hash: PasswordHash,
    #[serde(default)]
    pub groups: Vec<GroupName>,
    #[serde(default)]
    pub admin: bool,
    /// Seconds since the epoch.
    pub created_at: u64,
}

mod hash_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::PasswordHash;

    pub fn serialize<S: Serializer>(h: &PasswordHash, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(h.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PasswordHash, D::Error> {
        let s = String::deserialize(d)?;
        PasswordHash::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersFile {
    pub users: Vec<StoredUser>,
}

/// A user as the server holds it in memory.
pub struct UserRecord {
    pub id: String,
    pub hash: PasswordHash,
    pub source: Source,
    pub created_at: Option<u64>,
    /// Unique per version of the record: the credential cache and tokens compare it.
    pub generation: u64,
    /// The identity handed out per way of signing in, built once.
    pub by_password: Arc<UserIdentity>,
    pub by_api_token: Arc<UserIdentity>,
    pub by_bearer: Arc<UserIdentity>,
}

impl UserRecord {
    pub fn from_api(u: &StoredUser, generation: u64) -> UserRecord {
        let who = UserIdentity { name: u.name.clone(), groups: u.groups.clone(), admin: u.admin, via: Via::Password };
        UserRecord::build(who, u.id.clone(), u.password_hash.clone(), Source::Api, Some(u.created_at), generation)
    }

    /// A user from the configuration or htpasswd file; its id names the source, so removing it
    /// there and adding it back is the same user.
    pub fn from_fixed(u: FixedUser, generation: u64) -> UserRecord {
        let id = format!("{}:{}", u.source.as_str(), u.name);
        let who = UserIdentity { name: u.name, groups: u.groups, admin: u.admin, via: Via::Password };
        UserRecord::build(who, id, u.hash, u.source, None, generation)
    }

    fn build(who: UserIdentity, id: String, hash: PasswordHash, source: Source, created_at: Option<u64>, generation: u64) -> UserRecord {
        let with = |via| Arc::new(UserIdentity { via, ..who.clone() });
        UserRecord {
            id,
            hash,
            source,
            created_at,
            generation,
            by_password: with(Via::Password),
            by_api_token: with(Via::ApiToken),
            by_bearer: with(Via::BearerToken),
        }
    }

    pub fn name(&self) -> &UserName {
        &self.by_password.name
    }

    pub fn admin(&self) -> bool {
        self.by_password.admin
    }

    pub fn view(&self) -> UserView {
        UserView {
            name: self.name().clone(),
            groups: self.by_password.groups.clone(),
            admin: self.admin(),
            source: self.source,
            created_at: self.created_at,
        }
    }
}

/// What the API shows of a user (never the hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserView {
    pub name: UserName,
    pub groups: Vec<GroupName>,
    pub admin: bool,
    pub source: Source,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<u64>,
}

/// A user to create (`POST` body): a password or a bcrypt hash, not both.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub name: String,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_hash: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub admin: bool,
}

/// Changes to a user (`PATCH` body); absent fields stay as they are.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserUpdate {
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_hash: Option<String>,
    #[serde(default)]
    pub groups: Option<Vec<String>>,
    #[serde(default)]
    pub admin: Option<bool>,
}

/// A user from the configuration or htpasswd file, validated.
pub struct FixedUser {
    pub name: UserName,
    pub hash: PasswordHash,
    pub groups: Vec<GroupName>,
    pub admin: bool,
    pub source: Source,
}

#[derive(Debug, thiserror::Error)]
pub enum FixedUserError {
    #[error("htpasswd file {path}: {source}")]
    ReadHtpasswd { path: String, source: std::io::Error },
    #[error("htpasswd file {path}, line {line}: {reason}")]
    Htpasswd { path: String, line: usize, reason: String },
    #[error("configuration file, user {name:?}: {reason}")]
    Config { name: String, reason: String },
}

/// Parses an Apache htpasswd file: `name:hash` per line, blank lines and `#` comments skipped.
/// Only bcrypt lines (`htpasswd -B`) are accepted; MD5 (`$apr1$`), SHA-1 and crypt are weak
/// enough to refuse rather than carry.
pub fn parse_htpasswd(text: &str, path: &str) -> Result<Vec<FixedUser>, FixedUserError> {
    let mut out: Vec<FixedUser> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let err = |reason: String| FixedUserError::Htpasswd { path: path.into(), line: i + 1, reason };
        let (name, hash) = line.split_once(':').ok_or_else(|| err("expected NAME:HASH".into()))?;
        let name = UserName::parse(name).map_err(|e| err(e.to_string()))?;
        let hash = PasswordHash::parse(hash)
            .map_err(|e| err(format!("user {name}: {e}; only bcrypt lines are accepted (create them with htpasswd -B)")))?;
        if out.iter().any(|u| u.name == name) {
            return Err(err(format!("user {name} appears twice")));
        }
        out.push(FixedUser { name, hash, groups: Vec::new(), admin: false, source: Source::Htpasswd });
    }
    Ok(out)
}

pub fn load_htpasswd(path: &Path) -> Result<Vec<FixedUser>, FixedUserError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| FixedUserError::ReadHtpasswd { path: shown.clone(), source })?;
    parse_htpasswd(&text, &shown)
}

pub fn from_config(user: &ConfigUser) -> Result<FixedUser, FixedUserError> {
    let err = |reason: String| FixedUserError::Config { name: user.name.clone(), reason };
    Ok(FixedUser {
        name: UserName::parse(&user.name).map_err(|e| err(e.to_string()))?,
        hash: PasswordHash::parse(&user.password_hash).map_err(|e| err(format!("password_hash: {e}")))?,
        groups: user.groups.iter().map(|g| GroupName::parse(g)).collect::<Result<_, _>>().map_err(|e| err(e.to_string()))?,
        admin: user.admin,
        source: Source::Config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htpasswd_accepts_bcrypt_and_names_the_bad_line() {
        let y = bcrypt::hash_with_result("pw", 4).unwrap().format_for_version(bcrypt::Version::TwoY);
        let text = format!("# team\n\nalice:{y}\r\nbob:$apr1$xyz$abcdefghijklmnopqrstuv\n");
        let err = parse_htpasswd(&text, "users.htpasswd").err().unwrap().to_string();
        assert!(err.contains("line 4") && err.contains("bob") && err.contains("htpasswd -B"), "{err}");
        let users = parse_htpasswd(&format!("alice:{y}\n"), "f").unwrap();
        assert_eq!(users[0].name.as_str(), "alice");
        assert!(parse_htpasswd(&format!("alice:{y}\nalice:{y}\n"), "f").is_err());
        assert!(parse_htpasswd("no-colon\n", "f").is_err());
    }
}
