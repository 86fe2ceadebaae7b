//! Refusals in the registry's shape: the host decides who may do what; this plugin only says how
//! a refusal looks to a Docker client — a `WWW-Authenticate` challenge naming the host's token
//! service (the distribution token flow) or Basic, and an OCI `UNAUTHORIZED` / `DENIED` body.

use crate::contract::{Access, Request};
use crate::error::{ErrorCode, RegistryError};
use crate::route::Route;

/// The actions of a token scope, as the distribution token spec names them.
fn actions(access: Access) -> &'static str {
    match access {
        Access::Read => "pull",
        Access::Write => "pull,push",
        Access::Delete => "delete",
        Access::Admin => "*",
    }
}

/// The repository name in a scope is the name as the client spelled it: with the path method,
/// the repository segment comes first (`docker-local/team/app`).
fn scope_name(req: &Request, name: &str) -> String {
    match &req.path_repo {
        Some(repo) => format!("{repo}/{name}"),
        None => name.to_owned(),
    }
}

/// Quotes are not allowed inside a challenge's quoted values; names never have them, but the
/// realm comes from the client's Host header.
fn quoted(v: &str) -> String {
    v.replace(['"', '\\'], "")
}

/// The `WWW-Authenticate` value for a request that needs credentials.
pub fn challenge(req: &Request, access: Option<Access>) -> String {
    let Some(ts) = &req.caller.token_service else {
        return "Basic realm=\"binaryrepo\"".to_owned();
    };
    let mut value = format!(
        "Bearer realm=\"{}\",service=\"{}\"",
        quoted(&ts.realm),
        quoted(&ts.service)
    );
    if let (Some(name), Some(access)) = (Route::parse(&req.path).name(), access) {
        value.push_str(&format!(
            ",scope=\"repository:{}:{}\"",
            quoted(&scope_name(req, name)),
            actions(access)
        ));
    }
    value
}

/// 401 with the challenge.
pub fn unauthorized(req: &Request, access: Option<Access>, message: &str) -> RegistryError {
    RegistryError::new(ErrorCode::Unauthorized, message).with_headers(vec![(
        "WWW-Authenticate".to_owned(),
        challenge(req, access),
    )])
}

/// 403: the caller is known and may not do this.
pub fn denied(message: &str) -> RegistryError {
    RegistryError::new(ErrorCode::Denied, message)
}

/// The API version check (`GET /v2/`) is where clients learn how to authenticate, so an
/// anonymous caller always gets the challenge there, as from a distribution registry with auth:
/// with a token service clients then fetch a token (an anonymous one if they have no
/// credentials); with Basic they send their credentials, or go on without any. Either way
/// `docker login` checks the credentials it was given, and anonymous pulls of what anonymous
/// may read still work.
pub fn base_needs_token(req: &Request) -> Option<RegistryError> {
    req.caller
        .user
        .is_none()
        .then(|| unauthorized(req, None, "authentication required"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{Caller, Mount, TokenService};

    fn req(path: &str, path_repo: Option<&str>, ts: bool) -> Request {
        Request {
            method: "GET".into(),
            path: path.into(),
            query: None,
            headers: vec![],
            base_url: "http://h:1".into(),
            path_repo: path_repo.map(str::to_owned),
            repository: None,
            mount: Mount::Path,
            now: 0,
            caller: Caller {
                user: None,
                token_service: ts.then(|| TokenService {
                    realm: "http://h:1/api/token".into(),
                    service: "binaryrepo".into(),
                }),
            },
        }
    }

    #[test]
    fn bearer_challenge_names_the_scope_as_the_client_spelled_it() {
        let r = req("/v2/team/app/manifests/1", Some("docker-local"), true);
        assert_eq!(
            challenge(&r, Some(Access::Write)),
            r#"Bearer realm="http://h:1/api/token",service="binaryrepo",scope="repository:docker-local/team/app:pull,push""#
        );
        let r = req("/v2/", None, true);
        assert_eq!(
            challenge(&r, None),
            r#"Bearer realm="http://h:1/api/token",service="binaryrepo""#
        );
    }

    #[test]
    fn basic_without_a_token_service() {
        let r = req("/v2/app/blobs/sha256:00", None, false);
        assert_eq!(
            challenge(&r, Some(Access::Read)),
            "Basic realm=\"binaryrepo\""
        );
        let ping = base_needs_token(&req("/v2/", None, false)).expect("challenge");
        assert_eq!(ping.headers[0].1, "Basic realm=\"binaryrepo\"");
    }

    #[test]
    fn anonymous_ping_with_tokens_is_challenged() {
        let e = base_needs_token(&req("/v2/", None, true)).expect("challenge");
        assert_eq!(e.status, 401);
        assert_eq!(e.code, ErrorCode::Unauthorized);
    }
}
