//! Listeners and the per-request path: the management API, or resolve the repository, ask its
//! plugin for a plan, and carry the plan out.

pub mod body;
pub mod resolve;
pub mod respond;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;

use crate::App;
use crate::plugins::bindings::types::{self, RepoType};
use crate::repos::Repository;
use body::Body;
use resolve::ResolveError;
use respond::{Exchange, json};

/// Listeners bound to single repositories, started and stopped as repositories change.
#[derive(Default)]
pub struct RepoListeners {
    active: Mutex<HashMap<u16, tokio::task::JoinHandle<()>>>,
}

impl RepoListeners {
    /// Binds `port` (on the main listener's address) for a repository, unless already bound.
    pub async fn ensure(&self, app: &Arc<App>, port: u16) -> std::io::Result<()> {
        if self.active.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&port) {
            return Ok(());
        }
        let addr = SocketAddr::new(app.config.listen.ip(), port);
        let listener = TcpListener::bind(addr).await?;
        tracing::info!(%addr, "repository listener started");
        let task = tokio::spawn(accept_loop(app.clone(), listener, false));
        self.active.lock().unwrap_or_else(|e| e.into_inner()).insert(port, task);
        Ok(())
    }

    pub fn stop(&self, port: u16) {
        if let Some(task) = self.active.lock().unwrap_or_else(|e| e.into_inner()).remove(&port) {
            tracing::info!(port, "repository listener stopped");
            task.abort();
        }
    }
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn wit_repository(r: &Repository) -> types::Repository {
    types::Repository {
        name: r.name.to_string(),
        repo_type: match r.repo_type {
            crate::repos::RepoType::Local => RepoType::Local,
            crate::repos::RepoType::Remote => RepoType::Remote,
            crate::repos::RepoType::Virtual => RepoType::Virtual,
        },
        remote_url: r.url.clone(),
        has_credentials: r.credentials().is_some(),
        tag_check_seconds: r.tag_check_seconds,
        members: r.members.iter().map(|m| m.to_string()).collect(),
        delete_enabled: r.delete_enabled,
    }
}

async fn dispatch(app: &App, main_listener: bool, local_port: u16, req: Request<Incoming>) -> Response<Body> {
    let resolved = match resolve::resolve(app, main_listener, local_port, (req.uri(), req.headers())) {
        Ok(r) => r,
        Err(e) => {
            let (status, code) = match &e {
                ResolveError::UnknownRepository(_) => (StatusCode::NOT_FOUND, "REPOSITORY_NOT_FOUND"),
                ResolveError::NoRoute(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
                ResolveError::NoPlugin { .. } => (StatusCode::SERVICE_UNAVAILABLE, "FORMAT_NOT_LOADED"),
            };
            return json(status, &serde_json::json!({"error": {"code": code, "message": e.to_string()}}));
        }
    };
    if let Some(repo) = &resolved.repo {
        tracing::Span::current().record("repo", repo.name.as_str());
    }
    let headers: Vec<(String, String)> =
        req.headers().iter().filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_owned(), v.to_owned()))).collect();
    let request = types::Request {
        method: req.method().as_str().to_owned(),
        path: resolved.path.clone(),
        query: req.uri().query().map(str::to_owned),
        headers,
        base_url: resolved.base_url.clone(),
        path_repo: resolved.path_repo.clone(),
        repository: resolved.repo.as_deref().map(wit_repository),
        now: now_unix(),
    };
    let plan = match app.plugins.handle(&resolved.plugin, resolved.repo.clone(), &request).await {
        Ok(plan) => plan,
        Err(e) => return respond::plugin_fault(&resolved.plugin.meta.format, e),
    };
    let exchange = Exchange {
        app,
        plugin: &resolved.plugin,
        repo: resolved.repo.clone(),
        request: &request,
        head: req.method() == http::Method::HEAD,
        range: req.headers().get(http::header::RANGE).and_then(|v| v.to_str().ok()).map(str::to_owned),
    };
    exchange.execute(plan).await
}

async fn handle(app: Arc<App>, main_listener: bool, local_port: u16, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let span = tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), repo = tracing::field::Empty);
    async move {
        let path = req.uri().path();
        let resp = if main_listener && (path == "/api" || path.starts_with("/api/")) {
            crate::api::handle(&app, req).await
        } else {
            dispatch(&app, main_listener, local_port, req).await
        };
        tracing::info!(status = resp.status().as_u16(), ms = started.elapsed().as_millis() as u64, "served");
        resp
    }
    .instrument(span)
    .await
}

fn connection_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(30)).keep_alive(true);
    builder
}

/// Boxed so that a listener started from an API request (inside a connection) can spawn
/// another accept loop without a recursive future type.
fn accept_loop(app: Arc<App>, listener: TcpListener, main_listener: bool) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(accept_loop_inner(app, listener, main_listener))
}

async fn accept_loop_inner(app: Arc<App>, listener: TcpListener, main_listener: bool) {
    let open = app.open_connections.clone();
    let mut shutdown = app.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let local_port = stream.local_addr().map_or(0, |a| a.port());
        let mut stop = app.shutdown.subscribe();
        let app = app.clone();
        let service = service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, std::convert::Infallible>(handle(app, main_listener, local_port, req).await) }
        });
        let open = open.clone();
        tokio::spawn(async move {
            let _open = open;
            let builder = connection_builder();
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.changed() => {
                    // Finish the request in flight, then close.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// Serves until SIGINT/SIGTERM, then lets requests in flight finish (up to 30 s).
pub async fn run(app: Arc<App>) -> std::io::Result<()> {
    let listener = TcpListener::bind(app.config.listen).await?;
    tracing::info!(addr = %app.config.listen, "binaryrepo listening");
    for repo in app.repos.list() {
        if let Some(port) = repo.port {
            if let Err(e) = app.listeners.ensure(&app, port).await {
                tracing::error!(repo = %repo.name, port, error = %e, "cannot listen for repository");
            }
        }
    }
    let main = tokio::spawn(accept_loop(app.clone(), listener, true));
    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = app.shutdown.send(true);
    let _ = main.await;
    // Every connection task holds a clone of `open_connections`; wait for them to finish.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Arc::strong_count(&app.open_connections) > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Sends a shutdown to every accept loop.
pub fn shutdown_channel() -> watch::Sender<bool> {
    watch::channel(false).0
}
