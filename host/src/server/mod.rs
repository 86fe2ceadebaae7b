//! Listeners and the per-request path: the management API, or resolve the repository, ask its
//! plugin for a plan, and carry the plan out.

pub mod account;
pub mod body;
pub mod forwarded;
pub mod front;
pub mod gate;
mod merge;
pub mod oversized;
pub mod pace;
pub mod range;
pub mod resolve;
pub mod respond;
pub mod stop;
pub mod tls;
pub mod zero_copy;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::Instrument;

use crate::App;
use crate::auth::{AuthFailure, Identity};
use crate::plugins::bindings::types;
use crate::plugins::caps::Readable;
use crate::plugins::{LoadedPlugin, reuse, wit_repository};
use crate::repos::{RepoType, Repository};
use body::Body;
use http_body_util::BodyExt;
use resolve::ResolveError;
use respond::{Exchange, PluginRequest, json};

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

/// Who the request is from, as plugin calls need it: made the first time a plugin call asks (a
/// read answered by a reused plan calls none, and making it costs a few allocations).
pub struct Caller<'a> {
    identity: &'a Identity,
    /// the token service's realm, when the server issues tokens: this base URL + `TOKEN_PATH`
    token_base: Option<&'a str>,
    wit: std::sync::OnceLock<types::Caller>,
    readable: std::sync::OnceLock<Readable>,
}

impl<'a> Caller<'a> {
    pub fn new(identity: &'a Identity, token_base: Option<&'a str>) -> Caller<'a> {
        Caller { identity, token_base, wit: Default::default(), readable: Default::default() }
    }

    pub fn user(&self) -> Option<&str> {
        self.identity.user().map(|u| u.name.as_str())
    }

    pub fn wit(&self) -> &types::Caller {
        self.wit.get_or_init(|| types::Caller {
            user: self.user().map(str::to_owned),
            token_service: self
                .token_base
                .map(|base| types::TokenService { realm: [base, TOKEN_PATH].concat(), service: gate::TOKEN_SERVICE.to_owned() }),
        })
    }

    /// Which other repositories the caller may read.
    pub fn readable(&self) -> Readable {
        self.readable
            .get_or_init(|| {
                if self.identity.is_admin() {
                    Readable::all()
                } else {
                    let who = self.identity.clone();
                    Readable::only(Arc::new(move |r: &Repository| crate::auth::permits(&who, r.grants(), crate::auth::Access::Read)))
                }
            })
            .clone()
    }
}

/// The identity of a request refused before its credentials counted (see `dispatch`, `oversized`).
static ANONYMOUS: Identity = Identity::Anonymous;

/// Credentials are the host's: plugins never see them.
fn hidden_from_plugins(name: &http::HeaderName) -> bool {
    name == http::header::AUTHORIZATION || name == http::header::COOKIE || name == http::header::PROXY_AUTHORIZATION
}

/// The request as plugins see it, for one (member) repository.
pub(crate) fn wit_request(
    parts: &http::request::Parts,
    resolved: &resolve::Resolved,
    repo: Option<&Repository>,
    caller: &Caller<'_>,
) -> types::Request {
    types::Request {
        method: parts.method.as_str().to_owned(),
        path: resolved.path.clone(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts
            .headers
            .iter()
            .filter(|(k, _)| !hidden_from_plugins(k))
            .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_owned(), v.to_owned())))
            .collect(),
        base_url: resolved.base_url.clone(),
        path_repo: resolved.path_repo.clone(),
        repository: repo.map(wit_repository),
        mount: resolved.mount,
        now: now_unix(),
        caller: caller.wit().clone(),
    }
}

/// Asks `repo`'s plugin for a plan, or reuses the plan it offered for the same request, and
/// carries it out. `front`: the request may be indexed by the front index (`front.rs`).
// The request's parts as `dispatch` and `run_virtual` have them, one by one.
#[allow(clippy::too_many_arguments)]
async fn run_plan(
    app: &App,
    plugin: &Arc<LoadedPlugin>,
    repo: Option<Arc<Repository>>,
    parts: &http::request::Parts,
    resolved: &resolve::Resolved,
    caller: &Caller<'_>,
    body: Option<Incoming>,
    front: Option<front::Admit>,
) -> Response<Body> {
    let exchange = Exchange::of_request(app, plugin, repo.as_ref(), parts, resolved, caller);
    // Garbage collection waits for requests that began before it (see `storage::touch`).
    let _in_flight = app.caps.store.touches().enter();
    let repo_name = repo.as_ref().map(|r| r.name.as_str());
    let query = parts.uri.query();
    let key = reuse::Key::of(
        &parts.method,
        &resolved.path,
        query,
        repo_name,
        &resolved.base_url,
        resolved.path_repo.as_deref(),
        resolved.mount,
        caller.user(),
    );
    if let Some(key) = &key {
        let removals = app.plugins.blob_removals();
        if let Some(kept) = app.plugins.plans.lookup(key, repo.as_ref(), &parts.headers, removals) {
            exchange.series().reused(kept.ready());
            let resp = exchange.execute_ready(kept.ready(), body).await;
            // A reused plan that no longer works (its blob was removed) is decided afresh next time.
            if !resp.status().is_success() {
                app.plugins.plans.forget(key);
            } else if let Some(admit) = front
                && let Some(arrived) = admit.arrived(parts)
            {
                // Anonymous: nothing to check again. With credentials: until they must be.
                let trusted = match parts.headers.get(http::header::AUTHORIZATION) {
                    None => Some(None),
                    Some(h) => app.auth.trusted_until(h).map(Some),
                };
                if let Some(until) = trusted {
                    let entry = front::Entry {
                        resolved: resolved.clone(),
                        identity: caller.identity.clone(),
                        until,
                        kept,
                        plan: key.clone(),
                        stamp: admit.stamp(),
                    };
                    app.front.insert(&arrived, entry);
                }
            }
            return resp;
        }
    }
    // A read whose span `handle` left to be made here, now that it does more than reuse a plan.
    let span =
        if tracing::Span::current().is_none() { request_span(&parts.method, parts.uri.path(), repo_name) } else { tracing::Span::none() };
    // Boxed: a plugin call is a large future, and a reused plan (above) needs none of it.
    Box::pin(
        async {
            let snapshot = key.as_ref().map(|_| app.plugins.snapshot(repo.clone()));
            let (plan, offer) = match app.plugins.handle(plugin, repo.clone(), caller.readable(), exchange.request.get()).await {
                Ok(handled) => handled,
                Err(e) => return exchange.plugin_error(&e).await,
            };
            if let (Some(key), Some(snapshot), Some(offer)) = (key, snapshot, offer) {
                app.plugins.plans.insert(key, snapshot, offer, &plan, &parts.headers);
            }
            exchange.series().plan(&plan, false);
            exchange.execute(plan, body).await
        }
        .instrument(span),
    )
    .await
}

/// The span of one request: the context of every line logged while it is handled.
fn request_span(method: &http::Method, path: &str, repo: Option<&str>) -> tracing::Span {
    tracing::info_span!("request", method = %method, path = %path, repo = repo)
}

/// A virtual repository resolves reads through its members in order (the first answer that
/// is not a 404 or 410 wins: a member's upstream that says "gone" does not hide the next
/// member, nor does one that is down) and sends writes to its default local member. Generic:
/// nothing here knows a format, only HTTP's "not found", "gone" and "bad gateway".
async fn run_virtual(
    app: &App,
    virt: &Arc<Repository>,
    parts: &http::request::Parts,
    resolved: &resolve::Resolved,
    caller: &Caller<'_>,
    body: Incoming,
) -> Response<Body> {
    let members = || virt.members.iter().filter_map(|m| app.repos.get(m.as_str()));
    let read = parts.method == http::Method::GET || parts.method == http::Method::HEAD;
    if !read {
        let target = virt.default_local.as_ref().and_then(|d| app.repos.get(d.as_str())).unwrap_or_else(|| virt.clone());
        return run_plan(app, &resolved.plugin, Some(target), parts, resolved, caller, Some(body), None).await;
    }
    if resolved.plugin.meta.merges(&resolved.path) {
        return run_merged(app, virt, members().collect(), parts, resolved, caller).await;
    }
    let mut last = None;
    // A member that cannot answer because its upstream is down (502, 503, 504) does not hide the
    // members after it either, as a group repository skips an unavailable member in Nexus and
    // Artifactory: its answer is given only when no later member has the file.
    let mut unavailable = None;
    for member in members() {
        let Some(plugin) = app.plugins.get(&member.format) else { continue };
        let resp = run_plan(app, &plugin, Some(member), parts, resolved, caller, None, None).await;
        match resp.status() {
            StatusCode::NOT_FOUND | StatusCode::GONE => last = Some(resp),
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT => {
                unavailable.get_or_insert(resp);
            }
            _ => return resp,
        }
    }
    match unavailable.or(last) {
        Some(resp) => resp,
        None => run_plan(app, &resolved.plugin, Some(virt.clone()), parts, resolved, caller, None, None).await,
    }
}

/// A read the plugin merges over the members (`merged` paths): every member's plan is carried
/// out into an answer (a fetch into the store first), then the virtual repository's plugin
/// turns the answers into one plan.
async fn run_merged(
    app: &App,
    virt: &Arc<Repository>,
    members: Vec<Arc<Repository>>,
    parts: &http::request::Parts,
    resolved: &resolve::Resolved,
    caller: &Caller<'_>,
) -> Response<Body> {
    let plugin = &resolved.plugin;
    let exchange = Exchange {
        app,
        plugin,
        repo: Some(virt.clone()),
        caller,
        request: PluginRequest::new(parts, resolved, Some(virt), caller),
        head: parts.method == http::Method::HEAD,
        range: parts.headers.get(http::header::RANGE).and_then(|v| v.to_str().ok()).map(str::to_owned),
        content_length: None,
        series: None,
    };
    let mut answers = Vec::with_capacity(members.len());
    for member in members {
        // A member of another format cannot answer in this format's terms.
        if member.format != virt.format {
            continue;
        }
        let request = wit_request(parts, resolved, Some(&member), caller);
        let plan = match app.plugins.handle(plugin, Some(member.clone()), caller.readable(), &request).await {
            Ok((plan, _)) => plan,
            Err(e) => return exchange.plugin_error(&e).await,
        };
        answers.push(merge::answer(app, plugin, &member, &request, plan).await);
    }
    let plan = match app.plugins.merge(plugin, Some(virt.clone()), caller.readable(), exchange.request.get(), &answers).await {
        Ok(plan) => plan,
        Err(e) => return exchange.plugin_error(&e).await,
    };
    if matches!(plan, types::Plan::ReadBody(_) | types::Plan::ReceiveUpload(_)) {
        return respond::plugin_fault(&plugin.meta.format, "merge answered a read with a plan for a request body");
    }
    app.metrics.series_of(Some(virt)).plan(&plan, false);
    exchange.execute(plan, None).await
}

/// Where the token service answers, on every listener and under every mount, so that the realm
/// a plugin names (its base URL + this) always reaches it.
pub const TOKEN_PATH: &str = "/api/token";

/// The token endpoint: reads its (small) body and answers.
pub async fn token_endpoint(app: &App, req: Request<Incoming>, client: std::net::IpAddr) -> Response<Body> {
    let (parts, body) = req.into_parts();
    // Held to the request-body pace limits: a form sent a byte at a time must not hold the connection.
    let paced = pace::Paced::new(body, &app.config.request_body);
    let body = match http_body_util::Limited::new(paced, 64 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<pace::PaceError>() => {
            let mut resp = json(
                StatusCode::REQUEST_TIMEOUT,
                &serde_json::json!({"error": "invalid_request", "error_description": format!("request body cut: {e}")}),
            );
            resp.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
            return resp;
        }
        Err(_) => {
            return json(
                StatusCode::PAYLOAD_TOO_LARGE,
                &serde_json::json!({"error": {"code": "TOO_LARGE", "message": "token request body over 64 KiB"}}),
            );
        }
    };
    let (status, headers, body) =
        crate::auth::token_endpoint(&app.auth, &parts.method, parts.uri.query(), &parts.headers, &body, client).await;
    let mut resp = Response::new(body::full(body));
    *resp.status_mut() = status;
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (http::HeaderName::from_bytes(k.as_bytes()), http::HeaderValue::from_str(&v)) {
            resp.headers_mut().append(k, v);
        }
    }
    resp
}

/// A request refused before its plugin is asked, in the format's shape.
// The request's parts and what the refusal says, as `render_failure` takes them, plus the body to drain.
#[allow(clippy::too_many_arguments)]
async fn refuse(
    app: &App,
    resolved: &resolve::Resolved,
    parts: &http::request::Parts,
    caller: &Caller<'_>,
    body: Incoming,
    kind: types::FailureKind,
    access: Option<crate::auth::Access>,
    message: String,
) -> Response<Body> {
    let content_length = parts.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let resp = render_failure(app, resolved, parts, caller, kind, access, message).await;
    respond::discard_unread(body, content_length, resp).await
}

/// A failure in the format's shape, rendered by the resolved repository's plugin.
pub(crate) async fn render_failure(
    app: &App,
    resolved: &resolve::Resolved,
    parts: &http::request::Parts,
    caller: &Caller<'_>,
    kind: types::FailureKind,
    access: Option<crate::auth::Access>,
    message: String,
) -> Response<Body> {
    let exchange = Exchange {
        app,
        plugin: &resolved.plugin,
        repo: resolved.repo.clone(),
        caller,
        request: PluginRequest::new(parts, resolved, resolved.repo.as_deref(), caller),
        head: parts.method == http::Method::HEAD,
        range: None,
        content_length: None,
        series: None,
    };
    let failure = types::Failure { kind, status: None, message, access: access.map(gate::wit_access) };
    exchange.render(failure).await
}

/// Why writes are refused now (a full disk, a failed metadata store), if they are.
fn storage_down(app: &App) -> Option<String> {
    let health = app.caps.store.health();
    health.degraded(&app.caps.meta).then(|| format!("storage unavailable: {}", health.reasons(&app.caps.meta).join("; ")))
}

async fn dispatch(
    app: &App,
    resolved: Result<resolve::Resolved, ResolveError>,
    req: Request<Incoming>,
    identity: &Result<Identity, AuthFailure>,
    client: std::net::IpAddr,
    front: Option<front::Admit>,
) -> Response<Body> {
    let resolved = match resolved {
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
    if resolved.path == TOKEN_PATH {
        return Box::pin(token_endpoint(app, req, client)).await;
    }
    let (parts, body) = req.into_parts();
    let access = gate::access_for(&parts.method);
    let identity = match identity {
        Ok(i) => i,
        Err(e) => {
            let caller = gate::caller(app, &ANONYMOUS, &resolved);
            let kind = match e {
                AuthFailure::Unavailable(_) => types::FailureKind::Unavailable,
                _ => types::FailureKind::Unauthenticated,
            };
            return Box::pin(refuse(app, &resolved, &parts, &caller, body, kind, Some(access), e.to_string())).await;
        }
    };
    let caller = gate::caller(app, identity, &resolved);
    if let Some(repo) = &resolved.repo
        && !gate::allowed(app, identity, repo, access)
    {
        let (kind, message) = match identity {
            Identity::Anonymous => (types::FailureKind::Unauthenticated, "authentication required".to_owned()),
            Identity::User(u) => {
                (types::FailureKind::Denied, format!("{} may not {access:?} repository {}", u.name, repo.name).to_lowercase())
            }
        };
        return Box::pin(refuse(app, &resolved, &parts, &caller, body, kind, Some(access), message)).await;
    }
    // While storage does not take writes, they are refused in the format's shape (503) until it
    // recovers by itself; reads go on, and so do deletes, which free space.
    if access == crate::auth::Access::Write
        && let Some(reason) = storage_down(app)
    {
        return Box::pin(refuse(app, &resolved, &parts, &caller, body, types::FailureKind::Unavailable, None, reason)).await;
    }
    let resp = match resolved.repo.clone() {
        Some(repo) if repo.repo_type == RepoType::Virtual => Box::pin(run_virtual(app, &repo, &parts, &resolved, &caller, body)).await,
        repo => run_plan(app, &resolved.plugin, repo, &parts, &resolved, &caller, Some(body), front).await,
    };
    // A write that failed inside the plugin's handling because the disk filled up (or the
    // metadata store failed) is the server's unavailability, not a bug: 503, not 500.
    if resp.status() == StatusCode::INTERNAL_SERVER_ERROR && access != crate::auth::Access::Read {
        let layout = app.caps.store.layout().clone();
        let health = app.caps.store.health().clone();
        let _ = tokio::task::spawn_blocking(move || health.suspect(&layout)).await;
        if let Some(reason) = storage_down(app) {
            let mut unavailable =
                Box::pin(render_failure(app, &resolved, &parts, &caller, types::FailureKind::Unavailable, None, reason)).await;
            // The body may have been left unread: keep the decision to close the connection.
            if let Some(close) = resp.headers().get(http::header::CONNECTION) {
                unavailable.headers_mut().insert(http::header::CONNECTION, close.clone());
            }
            return unavailable;
        }
    }
    resp
}

/// `peer`: the TCP peer (a proxy's address behind one: `resolve::client_addr` gives the client's).
/// `admit`: the request as the front index would key it, noted before it was resolved (None:
/// one the index does not take).
async fn handle(
    app: Arc<App>,
    main_listener: bool,
    local_port: u16,
    peer: SocketAddr,
    req: Request<Incoming>,
    admit: Option<front::Admit>,
) -> Response<Body> {
    let started = Instant::now();
    let forwarded = app.config.trusted_proxies.contains(peer.ip());
    // Kept for the access line: the request itself is consumed below.
    let method = req.method().clone();
    let uri = req.uri().clone();
    let path = uri.path();
    let api = main_listener && (path == "/api" || path.starts_with("/api/") || path == "/metrics");
    // The web page: `/ui/` on the main listener, and `/` there when no repository answers it.
    let page = main_listener && crate::ui::owns(path);
    let front = admit.filter(|_| !api && !page);
    // Resolved before the span exists, so that the span is made with its repository: recording a
    // field afterwards costs the log formatter a second pass.
    let resolved = (!api && !page).then(|| resolve::resolve(&app, main_listener, local_port, forwarded, (req.uri(), req.headers())));
    let page = page
        || (main_listener
            && path == "/"
            && matches!(method, http::Method::GET | http::Method::HEAD)
            && !matches!(&resolved, Some(Ok(r)) if r.repo.is_some()));
    let client = forwarded::client_addr(peer, req.headers(), &app.config.trusted_proxies);
    let repo = resolved.as_ref().and_then(|r| r.as_ref().ok()).and_then(|r| r.repo.clone());
    let repo_name = repo.as_ref().map(|r| r.name.as_str());
    // A read of a local or remote repository is mostly answered from a plan offered for reuse,
    // which logs nothing but its access line (written below, with the same fields): making,
    // formatting and closing a span for it was about an eighth of such a request's user-space
    // CPU. Its span is made in `run_plan` once the plugin has to decide; lines logged before
    // that (a refused credential, say) go out without it, next to the access line.
    let deferred =
        matches!(method, http::Method::GET | http::Method::HEAD) && repo.as_ref().is_some_and(|r| r.repo_type != RepoType::Virtual);
    let span = if deferred { tracing::Span::none() } else { request_span(&method, path, repo_name) };
    let resp = async {
        // The token endpoint checks its own credentials; everything else is checked here, once.
        let token = api && path == TOKEN_PATH;
        let identity =
            if token || page { None } else { Some(app.auth.authenticate(req.headers().get(http::header::AUTHORIZATION), client).await) };
        let resp = match (resolved, &identity) {
            _ if page => crate::ui::serve(&method, path),
            (None, _) if token => Box::pin(token_endpoint(&app, req, client)).await,
            (None, Some(identity)) => Box::pin(crate::api::handle(&app, req, identity)).await,
            (Some(resolved), Some(identity)) => dispatch(&app, resolved, req, identity, client, front).await,
            (_, None) => Box::pin(token_endpoint(&app, req, client)).await,
        };
        let identity = identity.as_ref().and_then(|i| i.as_ref().ok());
        if !matches!(method, http::Method::GET | http::Method::HEAD | http::Method::OPTIONS) && !token {
            gate::audit_request(identity, client, repo_name, &method, path, resp.status().as_u16());
        }
        account::account(&app, &method, &uri, repo.as_ref(), &resp, started, client, identity);
        resp
    }
    .instrument(span);
    // Upstream answers asked for after this moment may serve the request (upstream/shared.rs).
    crate::upstream::shared::ARRIVED.scope(started, resp).await
}

/// A request the front index has an entry for (`front`): the plan it names is carried out as
/// `run_plan` would reuse it, without resolving, authenticating or keying the request again.
/// An entry whose plan no longer holds is dropped and the request handled in full.
async fn serve_front(
    app: Arc<App>,
    entry: Arc<front::Entry>,
    main_listener: bool,
    local_port: u16,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    // Entered before the plan's blob removals are read, as in `run_plan`.
    let in_flight = app.caps.store.touches().enter();
    // Drops the entry, and gives what handling the request afresh may index it by. Only when the
    // entry is dropped: the look-up in `request` had the key, but not past the move.
    let forget = |parts: &http::request::Parts| {
        let arrived = app.front.arrived(main_listener, local_port, false, &parts.method, &parts.uri, &parts.headers)?;
        app.front.forget(&arrived);
        Some(front::Admit::new(front::Stamp::now(&app), &arrived))
    };
    if !app.plugins.plans.holds(&entry.kept, entry.repo(), app.plugins.blob_removals()) {
        let admit = forget(&parts);
        drop(in_flight);
        return Box::pin(handle(app.clone(), main_listener, local_port, peer, Request::from_parts(parts, body), admit)).await;
    }
    let resp = async {
        let resolved = &entry.resolved;
        let caller = gate::caller(&app, &entry.identity, resolved);
        let exchange = Exchange::of_request(&app, &resolved.plugin, entry.repo(), &parts, resolved, &caller);
        let ready = entry.kept.ready();
        exchange.series().reused(ready);
        let resp = exchange.execute_ready(ready, Some(body)).await;
        if !resp.status().is_success() {
            app.plugins.plans.forget(&entry.plan);
            forget(&parts);
        }
        drop(in_flight);
        account::account(&app, &parts.method, &parts.uri, entry.repo(), &resp, started, peer.ip(), Some(&entry.identity));
        resp
    };
    crate::upstream::shared::ARRIVED.scope(started, resp).await
}

fn connection_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(30)).keep_alive(true);
    builder
}

/// One request as its connection runs it. The connection moves this future at least once
/// (into its slot for the request in flight) and touches it while the request runs, so its size
/// is paid on every request: what only rare requests need (the management API, the token
/// endpoint, virtual repositories, refusals) is boxed by `handle` and `dispatch` instead of
/// sizing every request's future, and it is `map`ped rather than wrapped in an `async move`
/// block, whose first poll would copy the whole of it from its capture into its own state.
fn request(
    app: Arc<App>,
    main_listener: bool,
    local_port: u16,
    peer: SocketAddr,
    sendfile: bool,
    req: Request<Incoming>,
) -> impl Future<Output = Result<Response<Body>, std::convert::Infallible>> + Send {
    let forwarded = app.config.trusted_proxies.contains(peer.ip());
    // The stamp is read before the request is resolved (in `handle`, on a miss): a change to the
    // definitions meanwhile leaves the entry the request may make stale from birth.
    let (indexed, admit) = match app.front.arrived(main_listener, local_port, forwarded, req.method(), req.uri(), req.headers()) {
        Some(arrived) => {
            let stamp = front::Stamp::now(&app);
            (app.front.find(stamp, &arrived, req.headers()), Some(front::Admit::new(stamp, &arrived)))
        }
        None => (None, None),
    };
    let answer = match indexed {
        Some(entry) => futures_util::future::Either::Left(serve_front(app, entry, main_listener, local_port, peer, req)),
        None => futures_util::future::Either::Right(handle(app, main_listener, local_port, peer, req, admit)),
    };
    futures_util::FutureExt::map(zero_copy::scope(sendfile, answer), Ok)
}

/// Boxed so that a listener started from an API request (inside a connection) can spawn
/// another accept loop without a recursive future type.
fn accept_loop(
    app: Arc<App>,
    listener: TcpListener,
    main_listener: bool,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(accept_loop_inner(app, listener, main_listener))
}

async fn accept_loop_inner(app: Arc<App>, listener: TcpListener, main_listener: bool) {
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
        let (open, mut stop) = app.connections.open();
        let tls = app.tls.clone();
        let sendfile = tls.is_none();
        let listener = oversized::Listener { app: app.clone(), main_listener, local_port, peer };
        let app = app.clone();
        let service = service_fn(move |req| request(app.clone(), main_listener, local_port, peer, sendfile, req));
        tokio::spawn(async move {
            let _open = open;
            match tls {
                None => {
                    let stream = oversized::Oversized::new(zero_copy::ZeroCopyStream::new(stream), listener);
                    serve_connection(stream, service, &mut stop, peer).await
                }
                Some(tls) => {
                    if let Some(stream) = tls_handshake(&tls, stream, peer).await {
                        serve_connection(oversized::Oversized::new(stream, listener), service, &mut stop, peer).await
                    }
                }
            }
        });
    }
}

/// A client that connects and sends no hello gets this long, like a request head's read timeout.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The handshake, in the connection's own task so that a slow client holds up no one else.
/// A failed one is the client's business (a wrong CA, an old protocol): logged at debug.
async fn tls_handshake(tls: &tls::Tls, stream: TcpStream, peer: SocketAddr) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let handshake = async {
        if !tls::starts_with_handshake(&stream).await? {
            tls::refuse_plain_http(stream).await;
            return Ok(None);
        }
        tls.acceptor().accept(stream).await.map(Some)
    };
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// HTTP/1.1 or HTTP/2 (by ALPN over TLS, by the connection preface otherwise) until the client
/// closes or the server shuts down.
async fn serve_connection<S, F>(stream: S, service: F, stop: &mut tokio::sync::oneshot::Receiver<()>, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: hyper::service::Service<Request<Incoming>, Response = Response<Body>, Error = std::convert::Infallible> + Send,
    F::Future: Send + 'static,
{
    let builder = connection_builder();
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop => {
            // Finish the request in flight, then close.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Serves until SIGINT/SIGTERM, then lets requests and cache fills in flight finish (up to 30 s).
pub async fn run(app: Arc<App>) -> std::io::Result<()> {
    let listener = TcpListener::bind(app.config.listen).await?;
    tracing::info!(addr = %app.config.listen, tls = app.tls.is_some(), "binaryrepo listening");
    for repo in app.repos.list() {
        if let Some(port) = repo.port
            && let Err(e) = app.listeners.ensure(&app, port).await
        {
            tracing::error!(repo = %repo.name, port, error = %e, "cannot listen for repository");
        }
    }
    let main = tokio::spawn(accept_loop(app.clone(), listener, true));
    if let Some(tls) = &app.tls {
        tokio::spawn(tls.clone().watch(app.config.tls_reload));
    }
    tokio::spawn(sweep_uploads(app.clone()));
    tokio::spawn(crate::gc::scheduled(app.clone()));
    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = app.shutdown.send(true);
    app.connections.stop_all();
    let _ = main.await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.connections.count() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Fills run on without their clients: most are only being verified by now (hashing follows
    // the transfer), so a restart right after a cold pull keeps what it fetched.
    let fills = app.fills.in_flight();
    if fills > 0 {
        tracing::info!(fills, "waiting for cache fills to finish");
    }
    while app.fills.in_flight() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.caps.store.touches().leave();
    Ok(())
}

/// Removes upload sessions nobody touched for `upload_expiry`.
async fn sweep_uploads(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    loop {
        tick.tick().await;
        let caps = app.caps.clone();
        let age = app.config.upload_expiry;
        if let Ok(n) = tokio::task::spawn_blocking(move || caps.uploads.sweep(age)).await
            && n > 0
        {
            tracing::info!(removed = n, "abandoned upload sessions removed");
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn output_size<A, B, C, D, E, G, F: Future>(_: &impl Fn(A, B, C, D, E, G) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every request's future is moved into the connection's slot and touched while it runs: the
    /// branches only rare requests take stay out of it (boxed), or every request pays for them
    /// (8,872 bytes with them all inline; 8,208 with the management API and refusals boxed; 4,424
    /// with the plugin call, uploads, fetches and failures boxed too).
    #[test]
    fn a_request_future_stays_small() {
        let size = output_size(&request);
        assert!(size <= 4 * 1024 + 512, "a request's future is {size} bytes");
    }
}
