//! The management REST API (JSON): repositories, plugins, health; and `GET /metrics` for Prometheus.
//!
//! `/api/repositories[/<name>]` is ours; `POST /api/repository` is the original project's call,
//! kept working as written (its field names are accepted everywhere).

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::json;

use crate::App;
use crate::repos::{RepoError, Repository, RepositoryInput};
use crate::server::body::{self, Body};
use crate::server::respond::json as json_response;

const MAX_BODY: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    TooLarge(String),
    /// Our fault.
    #[error("{0}")]
    Internal(String),
}

impl From<RepoError> for ApiError {
    fn from(e: RepoError) -> ApiError {
        match e {
            RepoError::Invalid(m) => ApiError::BadRequest(m),
            RepoError::Conflict(m) => ApiError::Conflict(m),
            RepoError::NotFound(_) => ApiError::NotFound(e.to_string()),
            RepoError::Persist { .. } | RepoError::Load { .. } => ApiError::Internal(e.to_string()),
        }
    }
}

impl ApiError {
    fn response(&self) -> Response<Body> {
        let (status, code) = match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "INVALID"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "CONFLICT"),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "TOO_LARGE"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
        };
        if status.is_server_error() {
            tracing::error!(error = %self, "api");
        }
        json_response(status, &json!({"error": {"code": code, "message": self.to_string()}}))
    }
}

fn ok(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    json_response(status, &value)
}

fn view(repo: &Repository) -> serde_json::Value {
    serde_json::to_value(repo.view()).unwrap_or(serde_json::Value::Null)
}

async fn read_input(req: Request<Incoming>) -> Result<RepositoryInput, ApiError> {
    let bytes: Bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(ApiError::TooLarge(format!("request body over {MAX_BODY} bytes")));
        }
        Err(e) => return Err(ApiError::BadRequest(format!("cannot read the request body: {e}"))),
    };
    serde_json::from_slice(&bytes).map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))
}

/// The Prometheus exposition of `crate::metrics`.
pub fn metrics(app: &App, method: &Method) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        return ApiError::MethodNotAllowed(format!("{method} is not supported on /metrics")).response();
    }
    match app.metrics.render(app.fills.in_flight()) {
        Ok(text) => {
            let mut resp = Response::new(if method == Method::HEAD { body::empty() } else { body::full(text) });
            resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(crate::metrics::CONTENT_TYPE));
            resp
        }
        Err(e) => ApiError::Internal(format!("metrics: {e}")).response(),
    }
}

pub async fn handle(app: &Arc<App>, req: Request<Incoming>) -> Response<Body> {
    match route(app, req).await {
        Ok(resp) => resp,
        Err(e) => e.response(),
    }
}

async fn route(app: &Arc<App>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let segments: Vec<&str> = path.split('/').skip(2).collect();
    let method = req.method().clone();
    match (method, segments.as_slice()) {
        (Method::GET, ["health"]) => Ok(ok(StatusCode::OK, json!({"status": "ok"}))),
        (Method::GET, ["plugins"]) => {
            let list: Vec<_> = app
                .plugins
                .all()
                .into_iter()
                .map(|p| json!({"format": p.format, "contract": p.contract, "roots": p.roots, "file": p.file}))
                .collect();
            Ok(ok(StatusCode::OK, json!(list)))
        }
        (Method::GET, ["repositories"]) => {
            Ok(ok(StatusCode::OK, serde_json::Value::Array(app.repos.list().iter().map(|r| view(r)).collect())))
        }
        (Method::POST, ["repositories"] | ["repository"]) => {
            let input = read_input(req).await?;
            create(app, input).await
        }
        (Method::GET, ["repositories" | "repository", name]) => {
            let repo = app.repos.get(name).ok_or_else(|| ApiError::NotFound(format!("repository {name:?} not found")))?;
            Ok(ok(StatusCode::OK, view(&repo)))
        }
        (Method::PUT, ["repositories" | "repository", name]) => {
            let name = (*name).to_owned();
            let input = read_input(req).await?;
            put(app, &name, input).await
        }
        (Method::DELETE, ["repositories" | "repository", name]) => delete(app, name),
        (Method::POST, ["gc"]) => gc(app, req.uri().query()).await,
        (Method::POST, ["repositories" | "repository", name, "gc"]) => {
            if app.repos.get(name).is_none() {
                return Err(ApiError::NotFound(format!("repository {name:?} not found")));
            }
            gc(app, req.uri().query()).await
        }
        (
            _,
            ["health" | "plugins" | "repositories" | "repository" | "gc"]
            | ["repositories" | "repository", _]
            | ["repositories" | "repository", _, "gc"],
        ) => Err(ApiError::MethodNotAllowed(format!("{} is not supported on {path}", req.method()))),
        _ => Err(ApiError::NotFound(format!("no API at {path}"))),
    }
}

/// Blobs are shared by content across repositories, so a collection always considers the
/// whole store; the per-repository endpoint exists for the original API's shape.
async fn gc(app: &Arc<App>, query: Option<&str>) -> Result<Response<Body>, ApiError> {
    let mut grace = app.config.gc_grace;
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if k == "grace_seconds" {
            let secs: u64 = v.parse().map_err(|_| ApiError::BadRequest(format!("grace_seconds {v:?} is not a number")))?;
            grace = std::time::Duration::from_secs(secs);
        }
    }
    let report = crate::gc::collect(app, grace).await.map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(ok(StatusCode::OK, serde_json::to_value(&report).unwrap_or_default()))
}

async fn create(app: &Arc<App>, input: RepositoryInput) -> Result<Response<Body>, ApiError> {
    let repo = input.validate(None, &app.plugins.formats())?;
    if app.repos.get(repo.name.as_str()).is_some() {
        return Err(ApiError::Conflict(format!("repository {} already exists", repo.name)));
    }
    let port = repo.port;
    if let Some(port) = port {
        bind(app, port).await?;
    }
    match app.repos.create(repo) {
        Ok(repo) => {
            tracing::info!(repo = %repo.name, "repository created");
            Ok(ok(StatusCode::CREATED, view(&repo)))
        }
        Err(e) => {
            if let Some(port) = port {
                app.listeners.stop(port);
            }
            Err(e.into())
        }
    }
}

async fn bind(app: &Arc<App>, port: u16) -> Result<(), ApiError> {
    if app.repos.by_port(port).is_some() {
        return Ok(());
    }
    app.listeners.ensure(app, port).await.map_err(|e| ApiError::Conflict(format!("cannot listen on port {port}: {e}")))
}

async fn put(app: &Arc<App>, name: &str, input: RepositoryInput) -> Result<Response<Body>, ApiError> {
    let repo = input.validate(Some(name), &app.plugins.formats())?;
    let new_port = repo.port;
    let old_port = app.repos.get(name).and_then(|r| r.port);
    let bound_new = match new_port {
        Some(p) if Some(p) != old_port => {
            bind(app, p).await?;
            true
        }
        _ => false,
    };
    match app.repos.put(repo) {
        Ok((repo, old)) => {
            if let Some(p) = old_port.filter(|p| Some(*p) != new_port) {
                app.listeners.stop(p);
            }
            // A changed remote or credentials invalidates cached tokens.
            app.caps.scratch.forget_repository(name);
            let status = if old.is_some() { StatusCode::OK } else { StatusCode::CREATED };
            tracing::info!(repo = %repo.name, replaced = old.is_some(), "repository stored");
            Ok(ok(status, view(&repo)))
        }
        Err(e) => {
            if let (true, Some(p)) = (bound_new, new_port) {
                app.listeners.stop(p);
            }
            Err(e.into())
        }
    }
}

fn delete(app: &Arc<App>, name: &str) -> Result<Response<Body>, ApiError> {
    let old = app.repos.delete(name)?;
    if let Some(port) = old.port {
        app.listeners.stop(port);
    }
    app.caps.scratch.forget_repository(name);
    app.caps.uploads.forget_repository(name);
    if let Err(e) = app.caps.meta.delete_repository(name) {
        tracing::error!(repo = name, error = %e, "repository deleted but its metadata could not be removed");
    }
    tracing::info!(repo = name, "repository deleted");
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    Ok(resp)
}
