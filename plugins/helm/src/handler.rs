//! The entry points of the `format` interface: routing by repository type and path.

use crate::contract::{
    Failure, FailureKind, FetchedFile, Host, HostError, LivePage, MemberAnswer, Plan, PluginInfo,
    RepoType, Repository, Request, Response, UploadOutcome,
};
use crate::error::{self, HelmError};
use crate::{local, merge, remote};
use binaryrepo_plugin_sdk::Format;
use binaryrepo_plugin_sdk::error::{plan_for, response_for, with_challenge};

pub const FORMAT: &str = "helm";
/// The path method: `/helm/<repository>/index.yaml`.
pub const ROOTS: &[&str] = &["/helm/"];

pub struct Helm;

/// The request path without the leading `/` (and without the format root for the path method).
fn path(req: &Request) -> String {
    let p = match req.mount {
        crate::contract::Mount::Path => req.path.strip_prefix("/helm").unwrap_or(&req.path),
        _ => &req.path,
    };
    // Helm resolves `abs/http/host:port/...` as a path; some clients escape the colon
    p.trim_start_matches('/')
        .replace("%3A", ":")
        .replace("%3a", ":")
}

/// Whether errors take ChartMuseum's JSON shape.
fn is_api(req: &Request) -> bool {
    path(req).starts_with("api/")
}

fn respond(req: &Request, r: Result<Response, HelmError>) -> Response {
    response_for(&req.method, r, |e| error::to_response(e, is_api(req)))
}

fn plan(req: &Request, r: Result<Plan, HelmError>) -> Plan {
    plan_for(&req.method, r, |e| error::to_response(e, is_api(req)))
}

fn not_allowed(method: &str) -> HelmError {
    HelmError::new(405, format!("{method} is not supported here"))
}

fn dispatch(host: &impl Host, req: &Request) -> Result<Plan, HelmError> {
    let repo = req
        .repository
        .as_ref()
        .ok_or_else(|| HelmError::not_found("no Helm chart repository here"))?;
    let path = path(req);
    let read = req.is_read();
    match repo.repo_type {
        RepoType::Remote if !read => Err(not_allowed(&req.method)),
        RepoType::Remote if path == "index.yaml" => remote::index(host, req),
        RepoType::Remote if path.ends_with(".tgz") || path.ends_with(".prov") => {
            remote::file(host, req, &path)
        }
        RepoType::Local => local_dispatch(host, req, repo, &path),
        RepoType::Virtual if !read => Err(HelmError::new(
            405,
            "upload charts to a local repository, not a virtual one",
        )),
        _ => Err(HelmError::not_found(format!("/{path} not found"))),
    }
}

fn local_dispatch(
    host: &impl Host,
    req: &Request,
    repo: &Repository,
    path: &str,
) -> Result<Plan, HelmError> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let m = req.method.as_str();
    let respond = |r: Response| Ok(Plan::Respond(r));
    match (m, segments.as_slice()) {
        ("GET" | "HEAD", ["index.yaml"]) => local::index(host),
        ("GET" | "HEAD", ["api", "charts", rest @ ..]) => respond(local::api_get(host, rest)?),
        ("POST", ["api", "charts"]) => local::upload(host, req),
        ("DELETE", ["api", "charts", name, version]) if repo.delete_enabled => {
            respond(local::api_delete(host, name, version)?)
        }
        ("DELETE", ["api", "charts", _, _]) => {
            Err(HelmError::new(405, "this repository refuses deletes"))
        }
        ("GET" | "HEAD", ["charts", file] | [file]) => local::file(host, file),
        ("PUT", ["charts", file] | [file]) if file.ends_with(".tgz") => local::upload(host, req),
        (_, ["api", "charts", ..]) => Err(not_allowed(m)),
        ("GET" | "HEAD", _) => Err(HelmError::not_found(format!("/{path} not found"))),
        _ => Err(not_allowed(m)),
    }
}

impl Format for Helm {
    const INFO: PluginInfo = PluginInfo {
        format: FORMAT,
        roots: ROOTS,
        merged: &["/index.yaml"],
        settings: &[],
    };

    fn handle(host: &impl Host, req: &Request) -> Plan {
        plan(req, dispatch(host, req))
    }

    fn upload_complete(
        host: &impl Host,
        req: &Request,
        id: &str,
        outcome: &UploadOutcome,
    ) -> Response {
        respond(req, local::upload_complete(host, req, id, outcome))
    }

    fn merge(host: &impl Host, req: &Request, answers: &[MemberAnswer]) -> Plan {
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
        let e = match failure.kind {
            FailureKind::DigestMismatch => {
                HelmError::bad_gateway("the upstream's file does not match the digest in its index")
            }
            _ => HelmError::from_failure(failure).for_request_method(&req.method),
        };
        with_challenge(error::to_response(&e, is_api(req))).for_method(&req.method)
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
