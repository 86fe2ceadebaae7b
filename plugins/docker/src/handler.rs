//! The entry points of the `format` interface, independent of the component glue.

use crate::access;
use crate::catalog;
use crate::contract::{
    CleanupReport, CleanupRules, Failure, FailureKind, Host, HostError, Level, LivePage, Plan,
    PluginInfo, RepoType, Repository, Request, Response, UploadOutcome, header,
};
use crate::error::{API_VERSION, API_VERSION_HEADER, ErrorCode, RegistryError};
use crate::gc;
use crate::local;
use crate::paging::Paging;
use crate::plan;
use crate::push;
use crate::reference::{Digest, InvalidReference, Name, Reference};
use crate::referrers;
use crate::remote::Remote;
use crate::route::Route;
use crate::upload::{self, Session};
use serde_json::json;

pub const FORMAT: &str = "docker";
pub const ROOTS: &[&str] = &["/v2/"];

/// The format as the component exports it.
pub struct Docker;

impl binaryrepo_plugin_sdk::Format for Docker {
    const INFO: PluginInfo = PluginInfo {
        format: FORMAT,
        roots: ROOTS,
        // virtual repositories resolve every read member by member: nothing is merged
        merged: &[],
        settings: &[],
    };

    fn handle(host: &impl Host, req: &Request) -> Plan {
        handle(host, req)
    }
    fn handle_body(host: &impl Host, req: &Request, body: &[u8]) -> Plan {
        handle_body(host, req, body)
    }
    fn upload_complete(
        host: &impl Host,
        req: &Request,
        id: &str,
        outcome: &UploadOutcome,
    ) -> Response {
        upload_complete(host, req, id, outcome)
    }
    fn render_failure(req: &Request, failure: &Failure) -> Response {
        render_failure(req, failure)
    }
    fn live_blobs_page(
        host: &impl Host,
        repo: &Repository,
        cursor: Option<&str>,
    ) -> Result<LivePage, HostError> {
        gc::live_blobs_page(host, repo, cursor)
    }
    fn cleanup(
        host: &impl Host,
        repo: &Repository,
        rules: &CleanupRules,
        now: u64,
    ) -> Result<CleanupReport, String> {
        crate::cleanup::cleanup(host, repo, rules, now)
    }
}

pub fn handle(host: &impl Host, req: &Request) -> Plan {
    let plan = dispatch(host, req).unwrap_or_else(|e| Plan::Respond(error_response(host, req, &e)));
    finish(plan, &req.method)
}

/// After a `read-body` plan: the request again, with its body.
pub fn handle_body(host: &impl Host, req: &Request, body: &[u8]) -> Plan {
    let plan = dispatch_body(host, req, body)
        .unwrap_or_else(|e| Plan::Respond(error_response(host, req, &e)));
    finish(plan, &req.method)
}

/// After a `receive-upload` plan: the client's answer, given what the host did.
pub fn upload_complete(
    host: &impl Host,
    req: &Request,
    id: &str,
    outcome: &UploadOutcome,
) -> Response {
    let response = Route::parse(&req.path)
        .name()
        .ok_or_else(|| RegistryError::new(ErrorCode::NameUnknown, "not an upload URL"))
        .and_then(parse_name)
        .and_then(|name| upload::complete(host, req, &name, id, outcome))
        .unwrap_or_else(|e| error_response(host, req, &e));
    finish_response(response, &req.method)
}

pub fn render_failure(req: &Request, failure: &Failure) -> Response {
    let error = match failure.kind {
        FailureKind::Unauthenticated => access::unauthorized(req, failure.access, &failure.message),
        _ => failure_error(Route::parse(&req.path), failure),
    };
    finish_response(error.to_response(), &req.method)
}

/// Garbage collection: every page of the digests `repo` still needs (`gc`), for tests. An
/// error means "do not collect".
#[cfg(test)]
pub fn live_blobs(host: &impl Host, repo: &Repository) -> Result<Vec<String>, HostError> {
    <Docker as binaryrepo_plugin_sdk::Format>::live_blobs(host, repo)
}

/// The error as the client gets it, logged: server faults as warnings, client mistakes for
/// debugging only.
fn error_response(host: &impl Host, req: &Request, e: &RegistryError) -> Response {
    let level = if e.status >= 500 {
        Level::Warn
    } else {
        Level::Debug
    };
    host.log(
        level,
        &format!(
            "{} {}: {} {} {}",
            req.method,
            req.path,
            e.status,
            e.code.as_str(),
            e.message
        ),
    );
    e.to_response()
}

/// What a blob GET gets when its fetch is answered `status` by the upstream: `render_failure`
/// of the host's failed fill ("upstream answered <status>", the host's wording). A remote
/// answers a refused confirmation with it, so that a blob stored for another name looks like
/// one stored nowhere.
pub(crate) fn blob_fetch_refused(status: u16) -> RegistryError {
    let failure = Failure {
        kind: FailureKind::UpstreamStatus,
        status: Some(status),
        message: format!("upstream answered {status}"),
        access: None,
    };
    failure_error(Route::Unknown, &failure)
}

fn failure_error(route: Route<'_>, failure: &Failure) -> RegistryError {
    // A plan for a manifest that failed to find its blob means the manifest is unknown.
    let not_found = match route {
        Route::Manifest { .. } => ErrorCode::ManifestUnknown,
        _ => ErrorCode::BlobUnknown,
    };
    let message = failure.message.clone();
    match failure.kind {
        FailureKind::BlobUnknown => RegistryError::new(not_found, message),
        FailureKind::UpstreamStatus => {
            let status = failure.status.unwrap_or(502);
            let code = match status {
                404 => not_found,
                401 => ErrorCode::Unauthorized,
                403 => ErrorCode::Denied,
                429 => ErrorCode::TooManyRequests,
                _ => ErrorCode::UpstreamUnavailable,
            };
            RegistryError::new(code, message).with_detail(json!({ "upstream_status": status }))
        }
        FailureKind::UpstreamUnreachable => {
            RegistryError::new(ErrorCode::UpstreamUnavailable, message)
        }
        FailureKind::DigestMismatch => RegistryError::new(
            ErrorCode::DigestInvalid,
            format!("upstream content does not match its digest: {message}"),
        )
        .with_status(502),
        FailureKind::Internal => RegistryError::new(ErrorCode::Unknown, message),
        FailureKind::TooLarge => match route {
            Route::Manifest { .. } => push::too_large(),
            _ => RegistryError::new(ErrorCode::SizeInvalid, message).with_status(413),
        },
        // rendered with the request's challenge in `render_failure`
        FailureKind::Unauthenticated => RegistryError::new(ErrorCode::Unauthorized, message),
        FailureKind::Denied => access::denied(&message),
        FailureKind::TooManyRequests => RegistryError::new(ErrorCode::TooManyRequests, message),
        FailureKind::BadRequest => match route {
            Route::Upload { .. } => RegistryError::new(ErrorCode::BlobUploadInvalid, message),
            _ => RegistryError::new(ErrorCode::Unsupported, message).with_status(400),
        },
        FailureKind::Unavailable => {
            RegistryError::new(ErrorCode::Unknown, message).with_status(503)
        }
    }
}

fn base(req: &Request) -> Result<Plan, RegistryError> {
    match access::base_needs_token(req) {
        Some(e) => Err(e),
        None => Ok(plan::api_base()),
    }
}

fn is_read(method: &str) -> bool {
    method == "GET" || method == "HEAD"
}

fn dispatch(host: &impl Host, req: &Request) -> Result<Plan, RegistryError> {
    let route = Route::parse(&req.path);
    let Some(repo) = &req.repository else {
        return match route {
            Route::Base if route.allows(&req.method) => base(req),
            Route::Catalog if route.allows(&req.method) => catalog::list(host, req),
            _ => Err(RegistryError::new(
                ErrorCode::NameUnknown,
                "no repository for this request: name one in the path (/v2/<repository>/...) or configure a default repository",
            )),
        };
    };
    check_method(route, &req.method)?;
    match route {
        Route::Base => return base(req),
        Route::Catalog => return catalog::list(host, req),
        _ => {}
    }
    let read = is_read(&req.method);
    match repo.repo_type {
        // the host resolves virtual repositories through their members; one reaches us only
        // when it has nothing to resolve to
        RepoType::Virtual => {
            let message = if read {
                format!(
                    "virtual repository {} has no member that can answer",
                    repo.name
                )
            } else {
                format!(
                    "virtual repository {} has no default-local member to receive pushes and deletes",
                    repo.name
                )
            };
            return Err(RegistryError::new(ErrorCode::Unsupported, message));
        }
        RepoType::Remote if !read || matches!(route, Route::Upload { .. }) => {
            return Err(RegistryError::new(
                ErrorCode::Unsupported,
                format!(
                    "repository {} is remote: remote repositories are read-only caches",
                    repo.name
                ),
            ));
        }
        _ => {}
    }
    let is_remote = repo.repo_type == RepoType::Remote;
    match route {
        Route::Manifest { name, reference } => {
            let name = parse_name(name)?;
            let reference = if read {
                parse_read_reference(&name, reference)?
            } else {
                parse_reference(reference)?
            };
            if is_remote {
                return remote(host, req, repo, &name)?.manifest(&reference);
            }
            match req.method.as_str() {
                "PUT" => push::begin(req, &reference),
                "DELETE" => local::delete_manifest(host, repo, &name, &reference),
                _ => local::manifest(host, &name, &reference),
            }
        }
        Route::Blob { name, digest } => {
            let name = parse_name(name)?;
            let digest = parse_digest(digest)?;
            if is_remote {
                remote(host, req, repo, &name)?.blob(&digest)
            } else if req.method == "DELETE" {
                local::delete_blob(host, repo, &name, &digest)
            } else {
                local::blob(host, &name, &digest)
            }
        }
        Route::Upload { name, session } => {
            let name = parse_name(name)?;
            let Some(session) = session else {
                return upload::start(host, req, repo, &name);
            };
            let session = Session::parse(session)?;
            match req.method.as_str() {
                "PATCH" => upload::patch(host, req, &name, &session),
                "PUT" => upload::put(host, req, &name, &session),
                "DELETE" => upload::cancel(host, &session),
                _ => upload::status(host, req, &name, &session),
            }
        }
        Route::TagsList { name } => {
            let name = parse_name(name)?;
            let paging = Paging::from_query(req.query.as_deref())?;
            if is_remote {
                remote(host, req, repo, &name)?.tag_list(&paging)
            } else {
                local::tag_list(host, req, &name, &paging)
            }
        }
        Route::Referrers { name, digest } => {
            let name = parse_name(name)?;
            let digest = parse_digest(digest)?;
            if is_remote {
                remote(host, req, repo, &name)?.referrers(&digest)
            } else {
                referrers::local(host, req, &name, &digest)
            }
        }
        // answered above, or refused by check_method
        Route::Base | Route::Catalog | Route::Unknown => Err(RegistryError::new(
            ErrorCode::Unsupported,
            "unsupported operation",
        )),
    }
}

/// Only a manifest PUT to a local repository asks for its body.
fn dispatch_body(host: &impl Host, req: &Request, body: &[u8]) -> Result<Plan, RegistryError> {
    let route = Route::parse(&req.path);
    let local = req
        .repository
        .as_ref()
        .is_some_and(|r| r.repo_type == RepoType::Local);
    match route {
        Route::Manifest { name, reference } if req.method == "PUT" && local => {
            let name = parse_name(name)?;
            let reference = parse_reference(reference)?;
            push::put(host, req, &name, &reference, body)
        }
        _ => Err(RegistryError::new(
            ErrorCode::Unknown,
            "the host handed over a request body that was not asked for",
        )),
    }
}

fn remote<'a, H: Host>(
    host: &'a H,
    req: &'a Request,
    repo: &'a Repository,
    name: &'a Name,
) -> Result<Remote<'a, H>, RegistryError> {
    let Some(url) = repo.remote_url.as_deref().filter(|u| !u.is_empty()) else {
        return Err(RegistryError::new(
            ErrorCode::Unknown,
            format!("remote repository {} has no URL", repo.name),
        ));
    };
    Ok(Remote::new(
        host,
        req,
        url,
        repo.has_credentials,
        repo.tag_check_seconds,
        name,
    ))
}

fn check_method(route: Route<'_>, method: &str) -> Result<(), RegistryError> {
    if route.allows(method) {
        return Ok(());
    }
    Err(match route {
        Route::Unknown => {
            RegistryError::new(ErrorCode::NameUnknown, "unknown registry API path").with_status(404)
        }
        _ => RegistryError::new(
            ErrorCode::Unsupported,
            format!("{method} is not supported here"),
        )
        .with_detail(json!({ "method": method })),
    })
}

fn parse_name(name: &str) -> Result<Name, RegistryError> {
    Name::parse(name).map_err(|_| {
        RegistryError::new(ErrorCode::NameInvalid, "invalid repository name")
            .with_detail(json!({ "name": name }))
    })
}

fn parse_digest(digest: &str) -> Result<Digest, RegistryError> {
    Digest::parse(digest).map_err(|_| invalid_digest(digest))
}

fn invalid_digest(digest: &str) -> RegistryError {
    RegistryError::new(ErrorCode::DigestInvalid, "invalid digest")
        .with_detail(json!({ "digest": digest }))
}

fn parse_reference(reference: &str) -> Result<Reference, RegistryError> {
    Reference::parse(reference).map_err(|e| match e {
        InvalidReference::Tag => {
            RegistryError::new(ErrorCode::TagInvalid, "manifest tag did not match URI")
                .with_detail(json!({ "tag": reference }))
        }
        InvalidReference::Digest => invalid_digest(reference),
    })
}

/// A manifest reference to read: one that is neither a tag nor a digest names no manifest
/// (the spec allows no other format), so it is MANIFEST_UNKNOWN like any tag never pushed.
/// A malformed digest stays DIGEST_INVALID: the client meant a digest and got it wrong.
fn parse_read_reference(name: &Name, reference: &str) -> Result<Reference, RegistryError> {
    Reference::parse(reference).map_err(|e| match e {
        InvalidReference::Tag => RegistryError::new(ErrorCode::ManifestUnknown, "manifest unknown")
            .with_detail(json!({ "name": name.as_str(), "reference": reference })),
        InvalidReference::Digest => invalid_digest(reference),
    })
}

/// Every answer says which API it speaks; plans get the header on the response the host builds.
fn finish(plan: Plan, method: &str) -> Plan {
    let version = || (API_VERSION_HEADER.to_owned(), API_VERSION.to_owned());
    match plan {
        Plan::Respond(r) => Plan::Respond(finish_response(r, method)),
        Plan::ServeBlob(mut s) => {
            s.headers.push(version());
            Plan::ServeBlob(s)
        }
        Plan::FetchBlob(mut f) => {
            f.headers.push(version());
            Plan::FetchBlob(f)
        }
        // the response comes from handle-body or upload-complete, which finish it there
        // fetch-file is not planned by this format (content is addressed by digest)
        p @ (Plan::ReadBody(_) | Plan::ReceiveUpload(_) | Plan::FetchFile(_)) => p,
    }
}

/// HEAD answers carry the length the GET body would have, and no body. An empty body with
/// no length (a blob whose size the upstream did not tell) is left without one.
fn finish_response(mut r: Response, method: &str) -> Response {
    if header(&r.headers, API_VERSION_HEADER).is_none() {
        r.headers
            .push((API_VERSION_HEADER.to_owned(), API_VERSION.to_owned()));
    }
    if method == "HEAD" {
        if !r.body.is_empty() && header(&r.headers, "content-length").is_none() {
            r.headers
                .push(("Content-Length".to_owned(), r.body.len().to_string()));
        }
        r.body.clear();
    }
    r
}
