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
use crate::auth::{AuthFailure, Identity, NewUser, UserError, UserIdentity, UserUpdate};
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
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Denied(String),
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
            ApiError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
            ApiError::Denied(_) => (StatusCode::FORBIDDEN, "DENIED"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
        };
        if status.is_server_error() {
            tracing::error!(error = %self, "api");
        }
        let mut resp = json_response(status, &json!({"error": {"code": code, "message": self.to_string()}}));
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Basic realm=\"binaryrepo\""));
        }
        resp
    }
}

fn ok(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    json_response(status, &value)
}

fn view(repo: &Repository) -> serde_json::Value {
    serde_json::to_value(repo.view()).unwrap_or(serde_json::Value::Null)
}

/// Users (admins) and API tokens (each user their own; admins any).
async fn accounts(
    app: &Arc<App>,
    req: Request<Incoming>,
    user: Option<&Arc<UserIdentity>>,
    segments: &[&str],
) -> Result<Response<Body>, ApiError> {
    let Some(user) = user else { return Err(ApiError::Unauthenticated("authentication required".into())) };
    let admin = || if user.admin { Ok(()) } else { Err(ApiError::Denied(format!("{} is not an admin", user.name))) };
    let method = req.method().clone();
    match (method, segments) {
        (Method::GET, ["users", "me"]) => {
            Ok(ok(StatusCode::OK, json!({"name": user.name.as_str(), "admin": user.admin, "groups": user.groups})))
        }
        (Method::GET, ["users"]) => {
            admin()?;
            Ok(ok(StatusCode::OK, json!(app.auth.users())))
        }
        (Method::POST, ["users"]) => {
            admin()?;
            let input: NewUser = read_json(req).await?;
            let created = app.auth.create_user(input).await.map_err(user_error)?;
            Ok(ok(StatusCode::CREATED, json!(created)))
        }
        (Method::GET, ["users", name]) => {
            admin()?;
            let found = app.auth.user(name).ok_or_else(|| ApiError::NotFound(format!("user {name:?} not found")))?;
            Ok(ok(StatusCode::OK, json!(found)))
        }
        (Method::PUT | Method::PATCH, ["users", name]) => {
            admin()?;
            let name = (*name).to_owned();
            let change: UserUpdate = read_json(req).await?;
            let updated = app.auth.update_user(&name, change).await.map_err(user_error)?;
            Ok(ok(StatusCode::OK, json!(updated)))
        }
        (Method::DELETE, ["users", name]) => {
            admin()?;
            let auth = app.auth.clone();
            let name = (*name).to_owned();
            blocking(move || auth.delete_user(&name)).await?;
            Ok(no_content())
        }
        (Method::GET, ["tokens"]) => Ok(ok(StatusCode::OK, json!(app.auth.tokens(user.name.as_str())))),
        (Method::POST, ["tokens"]) => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct NewToken {
                name: String,
                #[serde(default)]
                expires_in_seconds: Option<u64>,
            }
            let input: NewToken = read_json(req).await?;
            let auth = app.auth.clone();
            let owner = user.name.as_str().to_owned();
            let (view, secret) = blocking(move || auth.create_token(&owner, &input.name, input.expires_in_seconds)).await?;
            let mut body = json!(view);
            if let Some(obj) = body.as_object_mut() {
                obj.insert("token".into(), json!(secret.expose()));
            }
            Ok(ok(StatusCode::CREATED, body))
        }
        (Method::DELETE, ["tokens", id]) => {
            let found = app.auth.token(id).ok_or_else(|| ApiError::NotFound(format!("token {id:?} not found")))?;
            if found.user != user.name && !user.admin {
                // another user's token looks like none at all
                return Err(ApiError::NotFound(format!("token {id:?} not found")));
            }
            let auth = app.auth.clone();
            let id = (*id).to_owned();
            blocking(move || auth.revoke_token(&id)).await?;
            Ok(no_content())
        }
        (_, ["users"] | ["users", _] | ["tokens"] | ["tokens", _]) => {
            Err(ApiError::MethodNotAllowed(format!("{} is not supported here", req.method())))
        }
        _ => Err(ApiError::NotFound("no such API".into())),
    }
}

/// An admin user, or a user with `admin` access to this existing repository (who may then show,
/// replace or delete it; creating one needs an admin user).
fn may_administer(app: &App, user: Option<&Arc<UserIdentity>>, name: &str) -> bool {
    let Some(user) = user else { return false };
    user.admin
        || app.repos.get(name).is_some_and(|r| crate::auth::permits(&Identity::User(user.clone()), r.grants(), crate::auth::Access::Admin))
}

/// Whether the server can do its work: the data directory takes a write, the metadata store
/// takes a write, plugins are loaded. 503 with the reasons otherwise (a full disk, a failing
/// metadata store), so a load balancer or an orchestrator stops sending traffic.
async fn ready(app: &Arc<App>) -> Response<Body> {
    let data_dir = app.config.data_dir.clone();
    let caps = app.caps.clone();
    let probed = tokio::task::spawn_blocking(move || {
        let mut reasons = Vec::new();
        let probe = data_dir.join(".ready-probe");
        if let Err(e) = std::fs::write(&probe, b"1").and_then(|()| std::fs::remove_file(&probe)) {
            reasons.push(format!("data directory not writable: {e}"));
        }
        // "api" is a name no repository may have: the host's own key.
        if let Err(e) = caps.meta.put("api", "ready", b"1") {
            reasons.push(format!("metadata store not answering: {e}"));
        }
        reasons
    })
    .await;
    let mut reasons = probed.unwrap_or_else(|e| vec![format!("readiness check failed: {e}")]);
    if app.plugins.formats().is_empty() {
        reasons.push("no format plugins loaded".into());
    }
    if reasons.is_empty() {
        ok(StatusCode::OK, json!({"status": "ready"}))
    } else {
        ok(StatusCode::SERVICE_UNAVAILABLE, json!({"status": "not ready", "reasons": reasons}))
    }
}

fn user_error(e: UserError) -> ApiError {
    match e.status() {
        StatusCode::NOT_FOUND => ApiError::NotFound(e.to_string()),
        StatusCode::CONFLICT => ApiError::Conflict(e.to_string()),
        s if s.is_server_error() => ApiError::Internal(e.to_string()),
        _ => ApiError::BadRequest(e.to_string()),
    }
}

/// Changes to users and tokens write and fsync a file: off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, UserError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::Internal(e.to_string()))?.map_err(user_error)
}

fn no_content() -> Response<Body> {
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}

async fn read_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, ApiError> {
    let bytes: Bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(ApiError::TooLarge(format!("request body over {MAX_BODY} bytes")));
        }
        Err(e) => return Err(ApiError::BadRequest(format!("cannot read the request body: {e}"))),
    };
    serde_json::from_slice(&bytes).map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))
}

async fn read_input(req: Request<Incoming>) -> Result<RepositoryInput, ApiError> {
    read_json(req).await
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

/// `identity`: what the request's credentials proved. Health is open; a user's own account and
/// API tokens need a signed-in user; everything else (repositories, GC, plugins, users) an admin,
/// and `/metrics` an admin unless `metrics_anonymous`.
pub async fn handle(app: &Arc<App>, req: Request<Incoming>, identity: &Result<Identity, AuthFailure>) -> Response<Body> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let result = match who_may(&path, app.config.metrics_anonymous) {
        Needs::Nobody => route(app, req, None).await,
        need => match identity {
            Err(e) => Err(ApiError::Unauthenticated(e.to_string())),
            Ok(Identity::Anonymous) => Err(ApiError::Unauthenticated("authentication required".into())),
            Ok(Identity::User(u)) if need == Needs::Admin && !u.admin => Err(ApiError::Denied(format!("{} is not an admin", u.name))),
            Ok(Identity::User(u)) => {
                let u = u.clone();
                route(app, req, Some(&u)).await
            }
        },
    };
    match result {
        Ok(resp) => resp,
        Err(e) => e.response(),
    }
}

#[derive(PartialEq, Eq)]
enum Needs {
    Nobody,
    User,
    Admin,
}

fn who_may(path: &str, metrics_anonymous: bool) -> Needs {
    match path {
        "/api/health" | "/api/ready" => Needs::Nobody,
        "/metrics" if metrics_anonymous => Needs::Nobody,
        "/api/users/me" | "/api/tokens" => Needs::User,
        p if p.starts_with("/api/tokens/") => Needs::User,
        // one repository: its own admins too (checked in `route`)
        p if p.strip_prefix("/api/repositories/").is_some_and(|name| !name.is_empty() && !name.contains('/')) => Needs::User,
        _ => Needs::Admin,
    }
}

async fn route(app: &Arc<App>, req: Request<Incoming>, user: Option<&Arc<UserIdentity>>) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    if path == "/metrics" {
        return Ok(metrics(app, req.method()));
    }
    let segments: Vec<&str> = path.split('/').skip(2).collect();
    let method = req.method().clone();
    match (method, segments.as_slice()) {
        (Method::GET, ["health"]) => Ok(ok(StatusCode::OK, json!({"status": "ok"}))),
        (Method::GET, ["ready"]) => Ok(ready(app).await),
        (_, ["users", ..] | ["tokens", ..]) => accounts(app, req, user, &segments).await,
        (_, ["repositories", name]) if !may_administer(app, user, name) => {
            Err(ApiError::Denied(format!("configuring repository {name:?} needs an admin, or admin access to it")))
        }
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
            // A repository's own admins configure it, not the server: listeners, host names and
            // the default route stay an admin user's.
            if !user.is_some_and(|u| u.admin)
                && let Some(old) = app.repos.get(&name)
            {
                let hostnames: Vec<String> = input.hostnames.iter().flatten().map(|h| h.to_ascii_lowercase()).collect();
                if input.port != old.port || hostnames != old.hostnames || input.default.unwrap_or(false) != old.default {
                    return Err(ApiError::Denied("only an admin user may change a repository's port, hostnames or default".into()));
                }
            }
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
            ["health" | "ready" | "plugins" | "repositories" | "repository" | "gc"]
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
    // Only a listener this call started is stopped again when the create fails: a port another
    // repository holds keeps serving it.
    let started = match port {
        Some(port) => bind(app, port).await?,
        None => false,
    };
    match app.repos.create(repo) {
        Ok(repo) => {
            tracing::info!(repo = %repo.name, "repository created");
            Ok(ok(StatusCode::CREATED, view(&repo)))
        }
        Err(e) => {
            if let (true, Some(port)) = (started, port) {
                app.listeners.stop(port);
            }
            Err(e.into())
        }
    }
}

/// Listens on `port` unless a repository already does; true when this call started the listener.
async fn bind(app: &Arc<App>, port: u16) -> Result<bool, ApiError> {
    if app.repos.by_port(port).is_some() {
        return Ok(false);
    }
    app.listeners.ensure(app, port).await.map_err(|e| ApiError::Conflict(format!("cannot listen on port {port}: {e}")))?;
    Ok(true)
}

async fn put(app: &Arc<App>, name: &str, input: RepositoryInput) -> Result<Response<Body>, ApiError> {
    let repo = input.validate(Some(name), &app.plugins.formats())?;
    let new_port = repo.port;
    let old_port = app.repos.get(name).and_then(|r| r.port);
    let bound_new = match new_port {
        Some(p) if Some(p) != old_port => bind(app, p).await?,
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
