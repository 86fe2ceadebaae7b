//! Permissions: who may do what on one repository.
//!
//! A repository carries a list of [`Grant`]s; [`permits`] answers whether an identity may
//! perform one kind of [`Access`]. The levels nest as Artifactory's UI sets them and as Docker
//! clients need them: `write` and `delete` each include `read` (a push checks which blobs the
//! registry already has, and a client that may delete a tag can see it anyway), `admin`
//! includes all three; `write` does not include `delete`, so a CI account that pushes cannot
//! remove what others pushed. Replacing a tag is a write. A user with `admin: true` may do
//! everything everywhere.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::identity::Identity;
use super::names::{GroupName, NameError, UserName};

/// One kind of access to a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Pull, list, search.
    Read,
    /// Push, upload, tag (includes read).
    Write,
    /// Delete manifests, tags, blobs (includes read).
    Delete,
    /// Configure the repository (includes everything).
    Admin,
}

impl Access {
    /// Whether holding `self` allows `wanted`.
    pub fn includes(self, wanted: Access) -> bool {
        self == wanted || self == Access::Admin || wanted == Access::Read
    }
}

/// To whom a grant applies.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    /// Everybody, with or without credentials.
    Anonymous,
    /// Every signed-in user.
    Authenticated,
    User(UserName),
    Group(GroupName),
}

impl Principal {
    pub fn matches(&self, identity: &Identity) -> bool {
        match (self, identity) {
            (Principal::Anonymous, _) => true,
            (_, Identity::Anonymous) => false,
            (Principal::Authenticated, Identity::User(_)) => true,
            (Principal::User(name), Identity::User(u)) => &u.name == name,
            (Principal::Group(group), Identity::User(u)) => u.groups.contains(group),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrincipalError {
    #[error("{0:?} is not a principal: anonymous, authenticated, user:NAME or group:NAME")]
    Syntax(String),
    #[error(transparent)]
    Name(#[from] NameError),
}

impl FromStr for Principal {
    type Err = PrincipalError;
    fn from_str(s: &str) -> Result<Principal, PrincipalError> {
        match s {
            "anonymous" => Ok(Principal::Anonymous),
            "authenticated" => Ok(Principal::Authenticated),
            _ => match s.split_once(':') {
                Some(("user", name)) => Ok(Principal::User(UserName::parse(name)?)),
                Some(("group", name)) => Ok(Principal::Group(GroupName::parse(name)?)),
                _ => Err(PrincipalError::Syntax(s.chars().take(80).collect())),
            },
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Anonymous => f.write_str("anonymous"),
            Principal::Authenticated => f.write_str("authenticated"),
            Principal::User(n) => write!(f, "user:{n}"),
            Principal::Group(n) => write!(f, "group:{n}"),
        }
    }
}

impl Serialize for Principal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Principal {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Principal, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `{"who": "user:alice", "allow": ["read", "write"]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub who: Principal,
    pub allow: Vec<Access>,
}

/// Whether `identity` may perform `access` on a repository with these grants. Admin users may
/// do everything; otherwise some grant must name the caller and include the access.
pub fn permits(identity: &Identity, grants: &[Grant], access: Access) -> bool {
    identity.is_admin() || grants.iter().any(|g| g.who.matches(identity) && g.allow.iter().any(|a| a.includes(access)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::auth::identity::{UserIdentity, Via};

    fn user(name: &str, groups: &[&str], admin: bool) -> Identity {
        Identity::User(Arc::new(UserIdentity {
            name: UserName::parse(name).unwrap(),
            groups: groups.iter().map(|g| GroupName::parse(g).unwrap()).collect(),
            admin,
            via: Via::Password,
        }))
    }

    fn grants(json: &str) -> Vec<Grant> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn serde_shape() {
        let g = grants(r#"[{"who":"user:alice","allow":["read","write"]},{"who":"anonymous","allow":["read"]}]"#);
        assert_eq!(g[0].who, Principal::User(UserName::parse("alice").unwrap()));
        assert_eq!(g[0].allow, vec![Access::Read, Access::Write]);
        assert_eq!(serde_json::to_string(&g[1]).unwrap(), r#"{"who":"anonymous","allow":["read"]}"#);
        for bad in [
            r#"[{"who":"alice","allow":["read"]}]"#,
            r#"[{"who":"user:Alice","allow":["read"]}]"#,
            r#"[{"who":"anonymous","allow":["push"]}]"#,
        ] {
            assert!(serde_json::from_str::<Vec<Grant>>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn permits_matrix() {
        use Access::*;
        let anon = Identity::Anonymous;
        let alice = user("alice", &["dev"], false);
        let bob = user("bob", &[], false);
        let root = user("root", &[], true);
        let g = grants(
            r#"[{"who":"anonymous","allow":["read"]},
                {"who":"group:dev","allow":["write"]},
                {"who":"user:bob","allow":["delete"]}]"#,
        );
        // (identity, access, expected)
        let cases = [
            (&anon, Read, true),
            (&anon, Write, false),
            (&anon, Delete, false),
            (&anon, Admin, false),
            (&alice, Read, true),
            (&alice, Write, true),
            (&alice, Delete, false),
            (&alice, Admin, false),
            (&bob, Read, true),
            (&bob, Write, false),
            (&bob, Delete, true),
            (&bob, Admin, false),
            (&root, Admin, true),
        ];
        for (who, access, expected) in cases {
            assert_eq!(permits(who, &g, access), expected, "{} {access:?}", who.name());
        }
        // No grants: only admins.
        assert!(!permits(&alice, &[], Read));
        assert!(permits(&root, &[], Delete));
        // `authenticated` excludes anonymous; `admin` on a repository includes everything there.
        let g = grants(r#"[{"who":"authenticated","allow":["admin"]}]"#);
        assert!(!permits(&anon, &g, Read));
        for a in [Read, Write, Delete, Admin] {
            assert!(permits(&bob, &g, a));
        }
        // Write alone does not include delete; delete alone does not include write.
        assert!(!Write.includes(Delete) && !Delete.includes(Write) && Write.includes(Read) && Delete.includes(Read));
    }
}
