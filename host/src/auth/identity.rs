//! Who a request comes from, once its credentials are checked.

use std::sync::Arc;

use serde::Serialize;

use super::names::{GroupName, UserName};

/// How a user proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// Basic credentials with the user's password.
    Password,
    /// An API token (`brt_…`), as a Basic password or a Bearer token.
    ApiToken,
    /// A signed token from the token endpoint.
    BearerToken,
}

/// An authenticated user, as their record stood when the credentials were checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserIdentity {
    pub name: UserName,
    pub groups: Vec<GroupName>,
    /// May do everything: every repository, the management API, GC, metrics.
    pub admin: bool,
    pub via: Via,
}

/// The caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// No credentials were sent (or an anonymous signed token).
    Anonymous,
    User(Arc<UserIdentity>),
}

impl Identity {
    /// The name audit lines use: the user's, or `anonymous` (a name no user may have).
    pub fn name(&self) -> &str {
        match self {
            Identity::Anonymous => "anonymous",
            Identity::User(u) => u.name.as_str(),
        }
    }

    pub fn user(&self) -> Option<&UserIdentity> {
        match self {
            Identity::Anonymous => None,
            Identity::User(u) => Some(u),
        }
    }

    pub fn is_admin(&self) -> bool {
        self.user().is_some_and(|u| u.admin)
    }
}
