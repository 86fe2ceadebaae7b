//! Who may do what, before a plugin is asked: the caller's identity against the repository's
//! grants. The host decides; the repository's plugin only renders a refusal in its format's
//! shape (`render-failure` with `unauthenticated` or `denied`).

use std::net::IpAddr;

use http::Method;

use super::Caller;
use super::resolve::Resolved;
use crate::App;
use crate::auth::{Access, AuditEvent, Identity, Outcome, audit, permits};
use crate::plugins::bindings::types;
use crate::repos::{RepoType, Repository};

/// The service name the token endpoint issues tokens for.
pub const TOKEN_SERVICE: &str = "binaryrepo";

/// What a request needs: reads read, DELETE deletes, anything else writes.
pub fn access_for(method: &Method) -> Access {
    match *method {
        Method::GET | Method::HEAD | Method::OPTIONS => Access::Read,
        Method::DELETE => Access::Delete,
        _ => Access::Write,
    }
}

pub fn wit_access(a: Access) -> types::Access {
    match a {
        Access::Read => types::Access::Read,
        Access::Write => types::Access::Write,
        Access::Delete => types::Access::Delete,
        Access::Admin => types::Access::Admin,
    }
}

/// Whether `identity` may do `access` through `repo`. A write through a virtual repository is a
/// write to its default local member too, so both must allow it.
pub fn allowed(app: &App, identity: &Identity, repo: &Repository, access: Access) -> bool {
    if !permits(identity, repo.grants(), access) {
        return false;
    }
    if repo.repo_type == RepoType::Virtual
        && access != Access::Read
        && let Some(target) = repo.default_local.as_ref().and_then(|d| app.repos.get(d.as_str()))
    {
        return permits(identity, target.grants(), access);
    }
    true
}

/// The caller as plugin calls see it.
pub fn caller<'a>(app: &App, identity: &'a Identity, resolved: &'a Resolved) -> Caller<'a> {
    Caller::new(identity, app.config.token_service.then_some(resolved.base_url.as_str()))
}

/// The audit line of a request that changed something (or tried to).
pub fn audit_request(identity: Option<&Identity>, client: IpAddr, repo: Option<&str>, method: &Method, path: &str, status: u16) {
    let outcome = match status {
        s if s < 400 => Outcome::Ok,
        403 => Outcome::Denied,
        _ => Outcome::Failed,
    };
    let action = method.as_str().to_ascii_lowercase();
    audit(&AuditEvent {
        user: identity.map_or("anonymous", Identity::name),
        client,
        repository: repo,
        action: &action,
        outcome,
        detail: Some(path),
    });
}
