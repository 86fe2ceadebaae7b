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
use crate::server::pace::{PaceError, Paced};
use crate::server::respond::json as json_response;

mod stats;

pub use stats::SizeCache;

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
    /// The server cannot take the change now (a full disk); retrying later may work.
    #[error("{0}")]
    Unavailable(String),
    /// The client's body stopped or crawled (the request-body pace limits).
    #[error("{0}")]
    TooSlow(String),
}

impl From<RepoError> for ApiError {
    fn from(e: RepoError) -> ApiError {
        match e {
            RepoError::Invalid(m) => ApiError::BadRequest(m),
            RepoError::Conflict(m) => ApiError::Conflict(m),
            RepoError::NotFound(_) => ApiError::NotFound(e.to_string()),
            RepoError::Persist { ref source, .. } if crate::storage::durable::is_out_of_space(source) => {
                ApiError::Unavailable(e.to_string())
            }
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
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
            ApiError::TooSlow(_) => (StatusCode::REQUEST_TIMEOUT, "REQUEST_TIMEOUT"),
        };
        if status.is_server_error() {
            tracing::error!(error = %self, "api");
        }
        let mut resp = json_response(status, &json!({"error": {"code": code, "message": self.to_string()}}));
        if status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body may still be on its way: the connection cannot be reused.
            resp.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Basic realm=\"binaryrepo\""));
        }
        resp
    }
}

fn ok(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    json_response(status, &value)
}

/// A repository as the API shows it, with who owns its definition: the configuration file
/// (`repositories_mode = "managed"`) or the API.
fn view(app: &App, repo: &Repository) -> serde_json::Value {
    let mut value = serde_json::to_value(repo.view()).unwrap_or(serde_json::Value::Null);
    if let Some(obj) = value.as_object_mut() {
        let by = if app.live.is_file_managed(repo.name.as_str()) { "file" } else { "api" };
        obj.insert("managed_by".into(), json!(by));
    }
    value
}

/// A repository the configuration file manages is changed there, not through the API.
fn not_file_managed(app: &App, name: &str) -> Result<(), ApiError> {
    if app.live.is_file_managed(name) {
        return Err(ApiError::Conflict(format!(
            "repository {name} is declared in the configuration file (repositories_mode = \"managed\"); change it there"
        )));
    }
    Ok(())
}

/// Creates or replaces a repository the configuration file declares (a reload).
pub(crate) async fn apply_declared(app: &Arc<App>, name: &str, input: RepositoryInput) -> Result<(), String> {
    put(app, name, input).await.map(|_| ()).map_err(|e| e.to_string())
}

/// The OpenAPI 3.1 description of this API (`GET /api/openapi.json`).
const OPENAPI: &str = include_str!("api/openapi.json");

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
            let input: NewUser = read_json(app, req).await?;
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
            let change: UserUpdate = read_json(app, req).await?;
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
            let input: NewToken = read_json(app, req).await?;
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
    let reasons: Vec<String> = readiness(app).await.into_iter().filter_map(|(_, r)| r).collect();
    if reasons.is_empty() {
        ok(StatusCode::OK, json!({"status": "ready"}))
    } else {
        ok(StatusCode::SERVICE_UNAVAILABLE, json!({"status": "not ready", "reasons": reasons}))
    }
}

/// Each readiness check by name, with the reason it failed (None: passed).
async fn readiness(app: &Arc<App>) -> Vec<(&'static str, Option<String>)> {
    let data_dir = app.config.data_dir.clone();
    let caps = app.caps.clone();
    let probed = tokio::task::spawn_blocking(move || {
        let health = caps.store.health();
        let probe = data_dir.join(".ready-probe");
        let data = std::fs::write(&probe, b"1").and_then(|()| std::fs::remove_file(&probe)).err().map(|e| {
            health.note(&e);
            let _ = std::fs::remove_file(&probe);
            format!("data directory not writable: {e}")
        });
        // "api" is a name no repository may have: the host's own key.
        let meta = caps.meta.put("api", "ready", b"1").err().map(|e| format!("metadata store not answering: {e}"));
        // A full disk (or a failed store) stays reported until the recovery check found room again.
        let data = data.or_else(|| health.is_out_of_space().then(|| health.reasons(&caps.meta).join("; ")));
        let meta = meta.or_else(|| caps.meta.failing().map(|e| format!("metadata store failed ({e}); reopening it")));
        [("data_dir", data), ("metadata", meta)]
    })
    .await;
    let mut checks = match probed {
        Ok(c) => c.to_vec(),
        Err(e) => vec![("data_dir", Some(format!("readiness check failed: {e}"))), ("metadata", None)],
    };
    checks.push(("plugins", app.plugins.formats().is_empty().then(|| "no format plugins loaded".to_owned())));
    checks
}

fn user_error(e: UserError) -> ApiError {
    match e.status() {
        StatusCode::NOT_FOUND => ApiError::NotFound(e.to_string()),
        StatusCode::CONFLICT => ApiError::Conflict(e.to_string()),
        StatusCode::SERVICE_UNAVAILABLE => ApiError::Unavailable(e.to_string()),
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

/// Reads a JSON body, held to the request-body pace limits like every other body.
async fn read_json<T: serde::de::DeserializeOwned>(app: &App, req: Request<Incoming>) -> Result<T, ApiError> {
    let paced = Paced::new(req.into_body(), &app.config.request_body);
    let bytes: Bytes = match Limited::new(paced, MAX_BODY).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(ApiError::TooLarge(format!("request body over {MAX_BODY} bytes")));
        }
        Err(e) if e.is::<PaceError>() => return Err(ApiError::TooSlow(format!("request body cut: {e}"))),
        Err(e) => return Err(ApiError::BadRequest(format!("cannot read the request body: {e}"))),
    };
    serde_json::from_slice(&bytes).map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))
}

async fn read_input(app: &App, req: Request<Incoming>) -> Result<RepositoryInput, ApiError> {
    read_json(app, req).await
}

/// The Prometheus exposition of `crate::metrics`, with the health and readiness gauges (checked
/// at scrape time, as `/api/ready` checks).
pub async fn metrics(app: &Arc<App>, method: &Method) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        return ApiError::MethodNotAllowed(format!("{method} is not supported on /metrics")).response();
    }
    let checks = readiness(app).await;
    // What worker threads hold of requests they answered counts before the scrape.
    crate::server::account::flush_all();
    match app.metrics.render(app.fills.in_flight()) {
        Ok(mut text) => {
            use std::fmt::Write as _;
            // Before the exposition's closing `# EOF`.
            if text.ends_with("# EOF\n") {
                text.truncate(text.len() - "# EOF\n".len());
            }
            let ready = checks.iter().all(|(_, r)| r.is_none());
            let _ = writeln!(text, "# HELP binaryrepo_health Whether the server answers (GET /api/health)");
            let _ = writeln!(text, "# TYPE binaryrepo_health gauge");
            let _ = writeln!(text, "binaryrepo_health 1");
            let _ = writeln!(text, "# HELP binaryrepo_ready Whether the server can do its work (GET /api/ready)");
            let _ = writeln!(text, "# TYPE binaryrepo_ready gauge");
            let _ = writeln!(text, "binaryrepo_ready {}", u8::from(ready));
            let _ = writeln!(text, "# HELP binaryrepo_ready_check Each readiness check: 1 passed, 0 failed");
            let _ = writeln!(text, "# TYPE binaryrepo_ready_check gauge");
            for (check, reason) in &checks {
                let _ = writeln!(text, "binaryrepo_ready_check{{check=\"{check}\"}} {}", u8::from(reason.is_none()));
            }
            text.push_str("# EOF\n");
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
    if let Some(which) = stats_path(&path) {
        let result = match identity {
            Err(e) => Err(ApiError::Unauthenticated(e.to_string())),
            Ok(_) if req.method() != Method::GET => Err(ApiError::MethodNotAllowed(format!("{} is not supported on {path}", req.method()))),
            Ok(identity) => stats::answer(app, identity, which).await,
        };
        return result.unwrap_or_else(|e| e.response());
    }
    let result = match who_may(&path, app.live.metrics_anonymous()) {
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

/// `/api/stats` (every repository the caller may read) or `/api/repositories/<name>/stats`.
fn stats_path(path: &str) -> Option<Option<&str>> {
    if path == "/api/stats" {
        return Some(None);
    }
    let name = path.strip_prefix("/api/repositories/")?.strip_suffix("/stats")?;
    (!name.is_empty() && !name.contains('/')).then_some(Some(name))
}

#[derive(PartialEq, Eq)]
enum Needs {
    Nobody,
    User,
    Admin,
}

fn who_may(path: &str, metrics_anonymous: bool) -> Needs {
    match path {
        "/api/health" | "/api/ready" | "/api/openapi.json" => Needs::Nobody,
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
        return Ok(metrics(app, req.method()).await);
    }
    let segments: Vec<&str> = path.split('/').skip(2).collect();
    let method = req.method().clone();
    match (method, segments.as_slice()) {
        (Method::GET, ["health"]) => Ok(ok(StatusCode::OK, json!({"status": "ok"}))),
        (Method::GET, ["ready"]) => Ok(ready(app).await),
        (Method::GET, ["openapi.json"]) => {
            let mut resp = Response::new(body::full(Bytes::from_static(OPENAPI.as_bytes())));
            resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
            Ok(resp)
        }
        (_, ["users", ..] | ["tokens", ..]) => accounts(app, req, user, &segments).await,
        (_, ["repositories", name]) if !may_administer(app, user, name) => {
            Err(ApiError::Denied(format!("configuring repository {name:?} needs an admin, or admin access to it")))
        }
        (Method::GET, ["plugins"]) => Ok(ok(StatusCode::OK, plugins_view(app))),
        (Method::POST, ["plugins", "reload"]) => {
            app.plugins.reload(crate::plugins::reload::Wait::No).await;
            Ok(ok(StatusCode::OK, plugins_view(app)))
        }
        (Method::GET, ["repositories"]) => {
            Ok(ok(StatusCode::OK, serde_json::Value::Array(app.repos.list().iter().map(|r| view(app, r)).collect())))
        }
        (Method::POST, ["repositories"] | ["repository"]) => {
            let input = read_input(app, req).await?;
            create(app, input).await
        }
        (Method::GET, ["repositories" | "repository", name]) => {
            let repo = app.repos.get(name).ok_or_else(|| ApiError::NotFound(format!("repository {name:?} not found")))?;
            Ok(ok(StatusCode::OK, view(app, &repo)))
        }
        (Method::PUT, ["repositories" | "repository", name]) => {
            not_file_managed(app, name)?;
            let name = (*name).to_owned();
            let input = read_input(app, req).await?;
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
        (Method::DELETE, ["repositories" | "repository", name]) => {
            not_file_managed(app, name)?;
            delete(app, name)
        }
        (Method::POST, ["gc"]) => gc(app, req.uri().query()).await,
        (Method::GET, ["gc"]) => Ok(gc_status(app)),
        (Method::POST, ["repositories" | "repository", name, "gc"]) => {
            if app.repos.get(name).is_none() {
                return Err(ApiError::NotFound(format!("repository {name:?} not found")));
            }
            gc(app, req.uri().query()).await
        }
        (
            _,
            ["health" | "ready" | "openapi.json" | "plugins" | "repositories" | "repository" | "gc"]
            | ["plugins", "reload"]
            | ["repositories" | "repository", _]
            | ["repositories" | "repository", _, "gc"],
        ) => Err(ApiError::MethodNotAllowed(format!("{} is not supported on {path}", req.method()))),
        _ => Err(ApiError::NotFound(format!("no API at {path}"))),
    }
}

/// The plugins serving and the files refused, with why. Admins only (the default of `who_may`):
/// file paths and load errors describe the server's installation, not anything a user needs.
fn plugins_view(app: &App) -> serde_json::Value {
    let registry = app.plugins.registry();
    let time = |t: std::time::SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    let mut plugins: Vec<_> = registry.plugins().collect();
    plugins.sort_by(|a, b| a.meta.format.cmp(&b.meta.format));
    let plugins: Vec<_> = plugins
        .into_iter()
        .map(|p| {
            json!({
                "format": p.meta.format,
                "contract": p.meta.contract,
                "file": p.meta.file,
                "sha256": p.sha256,
                "roots": p.meta.roots,
                "loaded_at": time(p.loaded_at),
            })
        })
        .collect();
    let refused: Vec<_> = registry.refused().iter().map(|r| json!({"file": r.file, "reason": r.reason, "at": time(r.at)})).collect();
    json!({"plugins": plugins, "refused": refused})
}

/// Blobs are shared by content across repositories, so a collection always considers the
/// whole store; the per-repository endpoint exists for the original API's shape. The run goes
/// on in the background: 202 with its status, or 409 with the run already going. `?wait=true`
/// answers when the run has finished (the run goes on if the client leaves).
async fn gc(app: &Arc<App>, query: Option<&str>) -> Result<Response<Body>, ApiError> {
    let mut grace = app.config.gc_grace;
    let mut wait = false;
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "grace_seconds" => {
                let secs: u64 = v.parse().map_err(|_| ApiError::BadRequest(format!("grace_seconds {v:?} is not a number")))?;
                grace = std::time::Duration::from_secs(secs);
            }
            "wait" => wait = matches!(&*v, "" | "true" | "1"),
            _ => {}
        }
    }
    let run = match crate::gc::Gc::start(app, grace, crate::gc::Trigger::Api) {
        Ok(run) => run,
        Err(running) => {
            let message = format!("garbage collection {} is running; see GET /api/gc", running.id);
            return Ok(ok(StatusCode::CONFLICT, json!({"error": {"code": "CONFLICT", "message": message}, "run": running.status()})));
        }
    };
    if !wait {
        return Ok(ok(StatusCode::ACCEPTED, serde_json::to_value(run.status()).unwrap_or_default()));
    }
    run.wait().await;
    let status = run.status();
    match &status.error {
        None => Ok(ok(StatusCode::OK, serde_json::to_value(&status).unwrap_or_default())),
        Some(e) => Err(ApiError::Internal(e.clone())),
    }
}

/// The run in progress, or the last one.
fn gc_status(app: &Arc<App>) -> Response<Body> {
    match app.gc.current() {
        Some(run) => ok(StatusCode::OK, serde_json::to_value(run.status()).unwrap_or_default()),
        None => ok(StatusCode::OK, json!({"state": "idle"})),
    }
}

async fn create(app: &Arc<App>, input: RepositoryInput) -> Result<Response<Body>, ApiError> {
    let repo = input.validate(None, &app.plugins.formats())?;
    app.plugins.check_settings(&repo)?;
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
            Ok(ok(StatusCode::CREATED, view(app, &repo)))
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
    app.plugins.check_settings(&repo)?;
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
            app.sizes.clear();
            let status = if old.is_some() { StatusCode::OK } else { StatusCode::CREATED };
            tracing::info!(repo = %repo.name, replaced = old.is_some(), "repository stored");
            Ok(ok(status, view(app, &repo)))
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
    app.sizes.clear();
    if let Err(e) = app.caps.meta.delete_repository(name) {
        tracing::error!(repo = name, error = %e, "repository deleted but its metadata could not be removed");
    }
    tracing::info!(repo = name, "repository deleted");
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    Ok(resp)
}
