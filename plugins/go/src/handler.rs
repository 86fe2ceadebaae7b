//! The entry points of the `format` interface: routing by repository type and path.

use crate::contract::{
    Failure, FailureKind, FetchedFile, Host, HostError, LivePage, MemberAnswer, Mount, Plan,
    PluginInfo, RepoType, Repository, Request, Response, UploadOutcome,
};
use crate::error::GoError;
use crate::module;
use crate::{local, merge, remote};
use binaryrepo_plugin_sdk::Format;
use binaryrepo_plugin_sdk::error::{plan_for, response_for, with_challenge};

pub const FORMAT: &str = "go";
/// The path method: `GOPROXY=http://host/go/<repository>`.
pub const ROOTS: &[&str] = &["/go/"];

pub struct Go;

/// The request path without the leading `/` (and without the format root for the path method).
fn path(req: &Request) -> &str {
    let p = match req.mount {
        Mount::Path => req.path.strip_prefix("/go").unwrap_or(&req.path),
        _ => &req.path,
    };
    p.trim_start_matches('/')
}

fn respond(req: &Request, r: Result<Response, GoError>) -> Response {
    response_for(&req.method, r, GoError::text)
}

fn plan(req: &Request, r: Result<Plan, GoError>) -> Plan {
    plan_for(&req.method, r, GoError::text)
}

fn dispatch(host: &impl Host, req: &Request) -> Result<Plan, GoError> {
    let repo = req
        .repository
        .as_ref()
        .ok_or_else(|| GoError::not_found("no Go module repository here"))?;
    let path = path(req);
    if path == "@modules" && repo.repo_type == RepoType::Local && req.is_read() {
        return local::catalog(host).map(Plan::Respond);
    }
    let route = module::route(path)?;
    let read = req.is_read();
    match (repo.repo_type, route) {
        (_, None) if read => Err(GoError::not_found(format!("/{path} not found"))),
        (RepoType::Remote, Some(r)) if read => remote::read(host, req, &r),
        (RepoType::Local, Some(r)) if read => local::read(host, &r),
        (RepoType::Local, Some(r)) if req.method == "PUT" => local::publish(req, host, &r),
        (RepoType::Virtual, _) if !read => Err(GoError::new(
            405,
            "publish modules to a local repository, not a virtual one",
        )),
        (RepoType::Virtual, _) => Err(GoError::not_found(format!(
            "/{path} not found in any member"
        ))),
        _ => Err(GoError::new(
            405,
            format!("{} is not supported here", req.method),
        )),
    }
}

impl Format for Go {
    const INFO: PluginInfo = PluginInfo {
        format: FORMAT,
        roots: ROOTS,
        merged: &["/@v/list", "/@latest"],
        settings: &[remote::CHECKSUM_DATABASES],
    };

    fn handle(host: &impl Host, req: &Request) -> Plan {
        plan(req, dispatch(host, req))
    }

    fn handle_body(host: &impl Host, req: &Request, body: &[u8]) -> Plan {
        let r = local::route_of(path(req))
            .and_then(|route| local::publish_small(host, req, &route, body));
        Plan::Respond(respond(req, r))
    }

    fn upload_complete(
        host: &impl Host,
        req: &Request,
        id: &str,
        outcome: &UploadOutcome,
    ) -> Response {
        let r = local::route_of(path(req))
            .and_then(|route| local::zip_complete(host, req, &route, id, outcome));
        if r.is_err() {
            let _ = host.upload_cancel(id);
        }
        respond(req, r)
    }

    fn merge(host: &impl Host, req: &Request, answers: &[MemberAnswer]) -> Plan {
        if req.path.ends_with("/@latest") {
            return plan(req, merge::latest(host, answers));
        }
        plan(req, merge::merge(host, answers))
    }

    fn file_fetched(
        host: &impl Host,
        _req: &Request,
        key: &str,
        file: &FetchedFile,
    ) -> Result<(), HostError> {
        remote::file_fetched(host, key, file)
    }

    fn render_failure(req: &Request, failure: &Failure) -> Response {
        let e = match (failure.kind, failure.status) {
            // passed on as it is, like a 404: both mean "not here" to `GOPROXY=a,b`
            (FailureKind::UpstreamStatus, Some(410)) => GoError::new(410, "gone upstream"),
            _ => GoError::from_failure(failure).for_request_method(&req.method),
        };
        with_challenge(e.text()).for_method(&req.method)
    }

    fn live_blobs_page(
        host: &impl Host,
        repo: &Repository,
        cursor: Option<&str>,
    ) -> Result<LivePage, HostError> {
        match repo.repo_type {
            RepoType::Local => local::live_blobs_page(host, cursor),
            RepoType::Remote => remote::live_blobs_page(host, cursor),
            RepoType::Virtual => Ok(LivePage::default()),
        }
    }
}
