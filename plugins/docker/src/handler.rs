//! The two entry points of the `format` interface, independent of the component glue.

use crate::contract::{
    Failure, FailureKind, Host, Level, Plan, RepoType, Repository, Request, Response, header,
};
use crate::error::{API_VERSION, API_VERSION_HEADER, ErrorCode, RegistryError};
use crate::local;
use crate::plan;
use crate::reference::{Digest, InvalidReference, Name, Reference};
use crate::remote::Remote;
use crate::route::Route;
use crate::tags::Paging;
use serde_json::json;

pub const FORMAT: &str = "docker";
pub const CONTRACT: &str = "0.1.0";
pub const ROOTS: &[&str] = &["/v2/"];

pub fn handle(host: &impl Host, req: &Request) -> Plan {
    let plan = dispatch(host, req).unwrap_or_else(|e| {
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
        Plan::Respond(e.to_response())
    });
    finish(plan, &req.method)
}

pub fn render_failure(req: &Request, failure: &Failure) -> Response {
    let error = failure_error(Route::parse(&req.path), failure);
    finish_response(error.to_response(), &req.method)
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
    }
}

fn dispatch(host: &impl Host, req: &Request) -> Result<Plan, RegistryError> {
    let route = Route::parse(&req.path);
    let Some(repo) = &req.repository else {
        if route == Route::Base && route.allows(&req.method) {
            return Ok(plan::api_base());
        }
        return Err(RegistryError::new(
            ErrorCode::NameUnknown,
            "no repository for this request: name one in the path (/v2/<repository>/...) or configure a default repository",
        ));
    };
    check_method(route, &req.method)?;
    if route == Route::Base {
        return Ok(plan::api_base());
    }
    if repo.repo_type == RepoType::Virtual {
        return Err(RegistryError::new(
            ErrorCode::Unsupported,
            "virtual repositories arrive in a later version",
        ));
    }
    let is_remote = repo.repo_type == RepoType::Remote;
    match route {
        Route::Manifest { name, reference } => {
            let name = parse_name(name)?;
            let reference = parse_reference(reference)?;
            if is_remote {
                remote(host, req, repo, &name)?.manifest(&reference)
            } else {
                local::manifest(host, &name, &reference)
            }
        }
        Route::Blob { name, digest } => {
            let name = parse_name(name)?;
            let digest = Digest::parse(digest).map_err(|_| {
                RegistryError::new(ErrorCode::DigestInvalid, "invalid digest")
                    .with_detail(json!({ "digest": digest }))
            })?;
            if is_remote {
                remote(host, req, repo, &name)?.blob(&digest)
            } else {
                local::blob(host, &digest)
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
        // check_method refused these already
        Route::Base | Route::Upload { .. } | Route::Catalog | Route::Unknown => Err(
            RegistryError::new(ErrorCode::Unsupported, "unsupported operation"),
        ),
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
        Route::Catalog => RegistryError::new(ErrorCode::Unsupported, "the catalog is not offered")
            .with_status(404),
        Route::Upload { .. } => {
            RegistryError::new(ErrorCode::Unsupported, "push is not supported yet")
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

fn parse_reference(reference: &str) -> Result<Reference, RegistryError> {
    Reference::parse(reference).map_err(|e| match e {
        InvalidReference::Tag => {
            RegistryError::new(ErrorCode::TagInvalid, "manifest tag did not match URI")
                .with_detail(json!({ "tag": reference }))
        }
        InvalidReference::Digest => RegistryError::new(ErrorCode::DigestInvalid, "invalid digest")
            .with_detail(json!({ "digest": reference })),
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
