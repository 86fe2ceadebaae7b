//! Carries out a plugin's plan: a small response, a stored blob streamed from disk, or a blob
//! fetched from upstream through the single-flight fill.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::body::{self, Body};
use super::pace::Paced;
use super::range::parse_range;
use crate::App;
use crate::digest::Digest;
use crate::plugins::bindings::types::{self, Failure, FailureKind, Plan, UploadDone, UploadOutcome};
use crate::plugins::reuse::{self, Ready};
use crate::plugins::{LoadedPlugin, PluginError};
use crate::repos::Repository;
use crate::storage::blobs::{BlobError, Opened};
use crate::storage::uploads::{Appender, UploadError, UploadId};
use crate::upstream::fill::{FillError, Joined, Progress};
use crate::upstream::{UpstreamError, parse_request};

/// The request as the plugin sees it, built when a plugin call needs it: a reused plan that
/// works never calls the plugin, and building it (every header copied) is a good part of a
/// small request's cost.
pub struct PluginRequest<'a> {
    parts: &'a http::request::Parts,
    resolved: &'a super::resolve::Resolved,
    repo: Option<&'a Repository>,
    caller: &'a super::Caller<'a>,
    built: std::sync::OnceLock<types::Request>,
}

impl<'a> PluginRequest<'a> {
    pub fn new(
        parts: &'a http::request::Parts,
        resolved: &'a super::resolve::Resolved,
        repo: Option<&'a Repository>,
        caller: &'a super::Caller<'a>,
    ) -> Self {
        PluginRequest { parts, resolved, repo, caller, built: std::sync::OnceLock::new() }
    }

    pub fn get(&self) -> &types::Request {
        self.built.get_or_init(|| super::wit_request(self.parts, self.resolved, self.repo, self.caller))
    }
}

/// One request's context while its plan runs.
pub struct Exchange<'a> {
    pub app: &'a App,
    pub plugin: &'a Arc<LoadedPlugin>,
    pub repo: Option<Arc<Repository>>,
    pub caller: &'a super::Caller<'a>,
    pub request: PluginRequest<'a>,
    pub head: bool,
    pub range: Option<String>,
    pub content_length: Option<u64>,
    /// the repository's metric series, when the request already looked it up
    pub series: Option<Arc<crate::metrics::Series>>,
}

impl<'a> Exchange<'a> {
    /// The context of a request to `repo` (a local or remote one, or none) as it arrived.
    pub fn of_request(
        app: &'a App,
        plugin: &'a Arc<LoadedPlugin>,
        repo: Option<&'a Arc<Repository>>,
        parts: &'a http::request::Parts,
        resolved: &'a super::resolve::Resolved,
        caller: &'a super::Caller<'a>,
    ) -> Exchange<'a> {
        Exchange {
            app,
            plugin,
            repo: repo.cloned(),
            caller,
            request: PluginRequest::new(parts, resolved, repo.map(|r| &**r), caller),
            head: parts.method == http::Method::HEAD,
            range: parts.headers.get(http::header::RANGE).and_then(|v| v.to_str().ok()).map(str::to_owned),
            content_length: parts.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()),
            series: Some(app.metrics.series_of(repo.map(|r| &**r))),
        }
    }
}

/// Request bodies are written to upload sessions in pieces of this size.
const APPEND_CHUNK: usize = 1024 * 1024;

/// The plugin broke the contract (bad header, bad digest in a plan): its fault, a 500 that
/// says so.
/// A small body left unread is read (and dropped) at most this large...
const DISCARD_MAX: u64 = 1 << 20;
/// ...within this long.
const DISCARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The answer to a request whose body was not read (an early error, a GET with a body): a
/// small body is read and dropped so the client can send its next request on the same
/// connection, as it expects; anything else closes the connection, saying so.
pub(crate) async fn discard_unread(body: Incoming, content_length: Option<u64>, mut resp: Response<Body>) -> Response<Body> {
    if hyper::body::Body::is_end_stream(&body) {
        return resp;
    }
    if content_length.is_some_and(|n| n <= DISCARD_MAX) {
        let read = tokio::time::timeout(DISCARD_TIMEOUT, Limited::new(body, DISCARD_MAX as usize).collect()).await;
        if matches!(read, Ok(Ok(_))) {
            return resp;
        }
    }
    resp.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// A body cut short is not read further: the connection cannot carry another request.
fn with_close(mut resp: Response<Body>) -> Response<Body> {
    resp.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

pub fn plugin_fault(format: &str, message: impl std::fmt::Display) -> Response<Body> {
    tracing::error!(plugin = format, "{message}");
    fault_response(format, message)
}

/// A plugin call that failed: one log line with the backtrace, the cause to the client. A call
/// over its budget is the server's limit: 503 (`over_budget`), not the plugin's fault.
pub fn plugin_failed(format: &str, e: &PluginError) -> Response<Body> {
    if let PluginError::OverBudget { .. } = e {
        return with_retry_after(plain_failure(&over_budget(format, e)));
    }
    if let PluginError::Unavailable { message, .. } = e {
        tracing::warn!(plugin = format, "answered 503: {message}");
        let failure = Failure { kind: FailureKind::Unavailable, status: None, message: message.clone(), access: None };
        return with_retry_after(plain_failure(&failure));
    }
    tracing::error!(plugin = format, "plugin call failed: {}", e.detail());
    fault_response(format, e.cause())
}

/// How long a client is asked to wait after a call over its budget: the budget is spent again
/// by a retry only if the machine is still as loaded or the request is too large for it.
const OVER_BUDGET_RETRY_SECONDS: u32 = 5;

/// A call over its CPU budget (or time ceiling), logged as the server's limit: the failure the
/// client is answered with (503, `unavailable`).
fn over_budget(format: &str, e: &PluginError) -> Failure {
    tracing::warn!(plugin = format, "plugin call over budget, answered 503: {}", e.cause());
    Failure {
        kind: FailureKind::Unavailable,
        status: None,
        message: format!("the {format} plugin went {}; try again later", e.cause()),
        access: None,
    }
}

fn with_retry_after(mut resp: Response<Body>) -> Response<Body> {
    if !resp.headers().contains_key(http::header::RETRY_AFTER) {
        resp.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from(OVER_BUDGET_RETRY_SECONDS));
    }
    resp
}

fn fault_response(format: &str, message: impl std::fmt::Display) -> Response<Body> {
    let body = serde_json::json!({"error": {"code": "PLUGIN_FAILED", "message": format!("the {format} plugin failed: {message}")}});
    json(StatusCode::INTERNAL_SERVER_ERROR, &body)
}

/// The host's own shape for a failure the plugin's contract version cannot render (a 0.2
/// plugin asked to refuse a login): JSON, with a Basic challenge on a 401.
pub fn plain_failure(failure: &Failure) -> Response<Body> {
    let (status, code) = match failure.kind {
        FailureKind::Unauthenticated => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
        FailureKind::Denied => (StatusCode::FORBIDDEN, "DENIED"),
        FailureKind::TooManyRequests => (StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_REQUESTS"),
        FailureKind::BadRequest => (StatusCode::BAD_REQUEST, "BAD_REQUEST"),
        FailureKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
        FailureKind::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "TOO_LARGE"),
        FailureKind::BlobUnknown => (StatusCode::NOT_FOUND, "NOT_FOUND"),
        FailureKind::UpstreamStatus | FailureKind::UpstreamUnreachable | FailureKind::DigestMismatch => {
            (StatusCode::BAD_GATEWAY, "UPSTREAM")
        }
        FailureKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
    };
    let mut resp = json(status, &serde_json::json!({"error": {"code": code, "message": failure.message}}));
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"binaryrepo\""));
    }
    resp
}

pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(body::full(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The plugin's headers, taken by value: each value's string becomes the header value without a
/// copy (this runs for every response; copying and growing the map cost ~1.5k instructions).
fn apply_headers(resp: &mut Response<Body>, headers: Vec<(String, String)>) -> Result<(), String> {
    let map = resp.headers_mut();
    // and room for the ones the host adds (Content-Length, Accept-Ranges, Content-Range)
    map.reserve(headers.len() + 3);
    for (k, v) in headers {
        let (name, value) = reuse::parse_header(&k, Bytes::from(v))?;
        map.append(name, value);
    }
    Ok(())
}

/// Headers parsed before (a reused plan's), with room for the ones the host adds.
fn append_headers(resp: &mut Response<Body>, headers: &[(HeaderName, HeaderValue)]) {
    let map = resp.headers_mut();
    map.reserve(headers.len() + 3);
    for (name, value) in headers {
        map.append(name.clone(), value.clone());
    }
}

/// `Content-Range` for `count` bytes from `start` of a `len`-byte blob.
fn content_range(start: u64, count: u64, len: u64) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("bytes {}-{}/{}", start, start + count - 1, len)).ok()
}

fn range_not_satisfiable(len: u64) -> Response<Body> {
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
        resp.headers_mut().insert(http::header::CONTENT_RANGE, v);
    }
    resp
}

impl Exchange<'_> {
    pub fn series(&self) -> Arc<crate::metrics::Series> {
        match &self.series {
            Some(s) => s.clone(),
            None => self.app.metrics.series_of(self.repo.as_deref()),
        }
    }

    pub async fn execute(&self, plan: Plan, body: Option<Incoming>) -> Response<Body> {
        // Only what a cached read takes is inline: every request's future is as large as the
        // largest branch it could take, and is moved and touched on every request (see
        // `server::request`). Uploads and upstream fetches pay one allocation instead.
        let resp = match plan {
            Plan::ReadBody(max) => return Box::pin(self.read_body(max, body)).await,
            Plan::ReceiveUpload(u) => return Box::pin(self.receive_upload(u, body)).await,
            Plan::Respond(r) => self.respond(r),
            Plan::ServeBlob(s) => match s.digest.parse::<Digest>() {
                Ok(digest) => self.serve_stored(&digest, &s.headers).await,
                Err(e) => plugin_fault(&self.plugin.meta.format, format!("serve-blob: {e}")),
            },
            Plan::FetchBlob(f) => Box::pin(self.fetch_blob(f)).await,
            Plan::FetchFile(f) => Box::pin(self.fetch_file(f)).await,
        };
        self.finish(resp, body).await
    }

    /// Carries out a plan kept from an earlier request (`reuse`), parsed when it was kept.
    pub async fn execute_ready(&self, ready: &Ready, body: Option<Incoming>) -> Response<Body> {
        let resp = match ready {
            Ready::Respond { status, headers, body } => self.respond_with(*status, headers, body.clone()),
            Ready::ServeBlob { digest, headers } => self.serve_blob(digest, headers).await,
        };
        self.finish(resp, body).await
    }

    /// A request body the plan left unread is drained (or the connection closed) after `resp`.
    async fn finish(&self, resp: Response<Body>, body: Option<Incoming>) -> Response<Body> {
        match body {
            Some(body) if !hyper::body::Body::is_end_stream(&body) => Box::pin(discard_unread(body, self.content_length, resp)).await,
            _ => resp,
        }
    }

    async fn read_body(&self, max: u64, body: Option<Incoming>) -> Response<Body> {
        let format = &self.plugin.meta.format;
        let Some(body) = body else {
            return plugin_fault(format, "read-body when the body was already read");
        };
        if self.content_length.is_some_and(|n| n > max) {
            let resp = self.failure(FailureKind::TooLarge, None, format!("request body over {max} bytes")).await;
            return discard_unread(body, self.content_length, resp).await;
        }
        let paced = Paced::new(body, &self.app.config.request_body);
        let bytes = match Limited::new(paced, max as usize).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return self.failure(FailureKind::TooLarge, None, format!("request body over {max} bytes")).await;
            }
            Err(e) => {
                let resp = self.failure(FailureKind::BadRequest, None, format!("cannot read the request body: {e}")).await;
                return with_close(resp);
            }
        };
        let plan =
            match self.app.plugins.handle_body(self.plugin, self.repo.clone(), self.caller.readable(), self.request.get(), &bytes).await {
                Ok(p) => p,
                Err(e) => return self.plugin_error(&e).await,
            };
        if matches!(plan, Plan::ReadBody(_) | Plan::ReceiveUpload(_)) {
            return plugin_fault(format, "handle-body asked for the body again");
        }
        Box::pin(self.execute(plan, None)).await
    }

    async fn receive_upload(&self, plan: types::ReceiveUpload, body: Option<Incoming>) -> Response<Body> {
        let format = &self.plugin.meta.format;
        let Some(repo) = self.repo.clone() else {
            return plugin_fault(format, "receive-upload for a request with no repository");
        };
        let commit = match plan.commit.as_deref().map(str::parse::<Digest>).transpose() {
            Ok(d) => d,
            Err(e) => return plugin_fault(format, format!("receive-upload: {e}")),
        };
        let mut body = body;
        let outcome = match UploadId::parse(&plan.id) {
            None => UploadOutcome::UnknownSession,
            Some(id) => self.append_and_commit(&repo, &id, plan.expect_offset, commit, &mut body).await,
        };
        let resp = match self
            .app
            .plugins
            .upload_complete(self.plugin, Some(repo), self.caller.readable(), self.request.get(), &plan.id, &outcome)
            .await
        {
            Ok(r) => self.respond(r),
            Err(e) => self.plugin_error(&e).await,
        };
        // An unknown session or an out-of-order chunk is refused before its body is read.
        match body {
            Some(body) => discard_unread(body, self.content_length, resp).await,
            None => resp,
        }
    }

    async fn append_and_commit(
        &self,
        repo: &Repository,
        id: &UploadId,
        expect_offset: Option<u64>,
        commit: Option<Digest>,
        body: &mut Option<Incoming>,
    ) -> UploadOutcome {
        let caps = self.app.caps.clone();
        let repo_name = repo.name.to_string();
        let lock = caps.uploads.lock(&repo_name, id);
        let _writer = lock.lock().await;
        let opened = {
            let (caps, repo_name, id) = (caps.clone(), repo_name.clone(), id.clone());
            tokio::task::spawn_blocking(move || caps.uploads.open_append(&repo_name, &id, expect_offset)).await
        };
        let appender = match opened {
            Ok(Ok(a)) => a,
            Ok(Err(UploadError::Unknown)) => return UploadOutcome::UnknownSession,
            Ok(Err(UploadError::OffsetMismatch(size))) => return UploadOutcome::OffsetMismatch(size),
            Ok(Err(e)) => return UploadOutcome::Internal(e.to_string()),
            Err(e) => return UploadOutcome::Internal(e.to_string()),
        };
        let (appender, body_error) = match body.take() {
            Some(body) => match append(appender, Paced::new(body, &self.app.config.request_body)).await {
                Ok(appended) => appended,
                Err(e) => return UploadOutcome::Internal(e),
            },
            None => (appender, None),
        };
        let digest = match (commit, body_error) {
            (Some(digest), None) => digest,
            (_, body_error) => {
                // The chunk is acknowledged (or, cut short, kept for a resume): durable first.
                let size = match tokio::task::spawn_blocking(move || appender.finish()).await {
                    Ok(Ok(size)) => size,
                    Ok(Err(e)) => return UploadOutcome::Internal(e.to_string()),
                    Err(e) => return UploadOutcome::Internal(e.to_string()),
                };
                if let Some(e) = body_error {
                    tracing::info!(error = %e, size, "upload body ended early");
                    return UploadOutcome::BodyError(e);
                }
                return UploadOutcome::Done(UploadDone { size, committed: None });
            }
        };
        let committed = {
            let (id, digest) = (id.clone(), digest.clone());
            tokio::task::spawn_blocking(move || caps.uploads.commit_appended(&repo_name, &id, appender, &digest)).await
        };
        match committed {
            Ok(Ok(size)) => UploadOutcome::Done(UploadDone { size, committed: Some(digest.to_string()) }),
            Ok(Err(UploadError::DigestMismatch(actual))) => UploadOutcome::DigestMismatch(actual.to_string()),
            Ok(Err(UploadError::Unknown)) => UploadOutcome::UnknownSession,
            Ok(Err(e)) => UploadOutcome::Internal(e.to_string()),
            Err(e) => UploadOutcome::Internal(e.to_string()),
        }
    }

    fn respond(&self, r: types::Response) -> Response<Body> {
        let status = match reuse::final_status(r.status) {
            Ok(s) => s,
            Err(e) => return plugin_fault(&self.plugin.meta.format, e),
        };
        // HEAD answers keep the plugin's Content-Length (it describes the GET) but no body.
        let mut resp = Response::new(if self.head { body::empty() } else { body::full(r.body) });
        *resp.status_mut() = status;
        if let Err(e) = apply_headers(&mut resp, r.headers) {
            return plugin_fault(&self.plugin.meta.format, e);
        }
        resp
    }

    fn respond_with(&self, status: StatusCode, headers: &[(HeaderName, HeaderValue)], body: Bytes) -> Response<Body> {
        let mut resp = Response::new(if self.head { body::empty() } else { body::full(body) });
        *resp.status_mut() = status;
        append_headers(&mut resp, headers);
        resp
    }

    async fn failure(&self, kind: FailureKind, status: Option<u16>, message: String) -> Response<Body> {
        self.render(Failure { kind, status, message, access: None }).await
    }

    /// A plugin call of this request that failed: over its budget, 503 in the format's shape
    /// (rendered by a fresh call) with `Retry-After`; anything else the plugin's fault (500).
    pub async fn plugin_error(&self, e: &PluginError) -> Response<Body> {
        let format = &self.plugin.meta.format;
        let failure = match e {
            PluginError::OverBudget { .. } => over_budget(format, e),
            PluginError::Unavailable { message, .. } => {
                tracing::warn!(plugin = format, "answered 503: {message}");
                Failure { kind: FailureKind::Unavailable, status: None, message: message.clone(), access: None }
            }
            _ => return plugin_failed(format, e),
        };
        let rendered =
            Box::pin(self.app.plugins.render_failure(self.plugin, self.repo.clone(), self.caller.readable(), self.request.get(), &failure))
                .await;
        with_retry_after(match rendered {
            Ok(Some(r)) => self.respond(r),
            Ok(None) | Err(_) => plain_failure(&failure),
        })
    }

    /// The failure in the format's shape, as the repository's plugin renders it.
    /// Boxed: a plugin call is a large future, and the requests that may fail are most requests.
    pub async fn render(&self, failure: Failure) -> Response<Body> {
        let rendered =
            Box::pin(self.app.plugins.render_failure(self.plugin, self.repo.clone(), self.caller.readable(), self.request.get(), &failure))
                .await;
        match rendered {
            Ok(Some(r)) => self.respond(r),
            Ok(None) => plain_failure(&failure),
            Err(e) => plugin_failed(&self.plugin.meta.format, &e),
        }
    }

    /// `fetch-file`: like `fetch-blob`, but the digest is learnt by hashing the file as it arrives
    /// (upstream/fill.rs); the request that started the fill has the plugin record it once it is
    /// stored, in a task of its own so that a client that leaves does not lose the record.
    async fn fetch_file(&self, plan: types::FetchFile) -> Response<Body> {
        let format = &self.plugin.meta.format;
        let Some(repo) = self.repo.clone() else {
            return plugin_fault(format, "fetch-file for a request with no repository");
        };
        let r = &plan.request;
        let request = match parse_request(&r.method, &r.url, &r.headers, r.with_credentials) {
            Ok(req) => req,
            Err(e) => return plugin_fault(format, format!("fetch-file: {e}")),
        };
        let (fill, started) = match self.app.fills.join_or_start_file(repo.clone(), plan.key.clone(), request, plan.max_bytes) {
            Ok((Joined::StoredAs(digest, _), _)) => return self.serve_stored(&digest, &plan.headers).await,
            Ok((Joined::Stored, _)) => return self.failure(FailureKind::Internal, None, "file fill found no file".into()).await,
            Ok((Joined::Filling(fill), started)) => (fill, started),
            Err(e) => return self.fill_failure(e).await,
        };
        if started {
            let (plugins, plugin, request) = (self.app.plugins.clone(), self.plugin.clone(), self.request.get().clone());
            let (progress, key) = (fill.progress.clone(), plan.key.clone());
            tokio::spawn(async move {
                let Ok((digest, size)) = wait_stored(&progress).await else { return };
                let file = types::FetchedFile { digest: digest.to_string(), size };
                if let Err(e) = plugins.file_fetched(&plugin, Some(repo), &request, &key, &file).await {
                    tracing::warn!(key, digest = %digest, error = %e.detail(), "the plugin did not record a fetched file");
                }
            });
        }
        self.stream_fill(fill, plan.headers).await
    }

    /// `serve_blob` with the headers as the plugin gave them.
    async fn serve_stored(&self, digest: &Digest, headers: &[(String, String)]) -> Response<Body> {
        match reuse::parse_headers(headers) {
            Ok(headers) => self.serve_blob(digest, &headers).await,
            Err(e) => plugin_fault(&self.plugin.meta.format, e),
        }
    }

    async fn serve_blob(&self, digest: &Digest, headers: &[(HeaderName, HeaderValue)]) -> Response<Body> {
        let store = self.app.caps.store.clone();
        // Before the look-up, so a collection running now either keeps the blob or has removed
        // it already (see `storage::touch`).
        if let Err(e) = store.touches().touch(digest) {
            tracing::warn!(%digest, error = %e, "blob not served");
            return with_retry_after(self.failure(FailureKind::Unavailable, None, e.to_string()).await);
        }
        self.pulled(digest);
        if !self.head
            && let Some(repo) = self.repo.as_deref().filter(|r| r.blob_redirect)
            && let Some(resp) = Box::pin(self.redirect_to_store(repo, digest, headers)).await
        {
            return resp;
        }
        let opened = match store.cached(digest) {
            Some(bytes) => Ok(Ok(Opened::Small(bytes))),
            None => {
                tokio::task::spawn_blocking({
                    let digest = digest.clone();
                    move || store.open_for_serving(&digest)
                })
                .await
            }
        };
        let opened = match opened {
            Ok(Ok(o)) => o,
            Ok(Err(BlobError::Unknown(d))) => return self.failure(FailureKind::BlobUnknown, None, format!("blob {d} is not stored")).await,
            Ok(Err(e)) => return self.failure(FailureKind::Internal, None, e.to_string()).await,
            Err(e) => return self.failure(FailureKind::Internal, None, e.to_string()).await,
        };
        let len = match &opened {
            Opened::Small(b) => b.len() as u64,
            Opened::File(_, len) | Opened::Object(len) => *len,
        };
        let (status, start, count) = match self.range.as_deref().and_then(|r| parse_range(r, len)) {
            None => (StatusCode::OK, 0, len),
            Some(Ok((start, count))) => (StatusCode::PARTIAL_CONTENT, start, count),
            Some(Err(())) => return range_not_satisfiable(len),
        };
        if !self.head && self.repo.is_some() {
            self.series().served_from_store(count);
        }
        let body = match opened {
            _ if self.head => body::empty(),
            Opened::Small(b) => body::full(b.slice(start as usize..(start + count) as usize)),
            Opened::File(file, _) => body::file_range(Arc::new(file), start, count),
            Opened::Object(_) => body::stream(self.app.caps.store.stream(digest, start, count)),
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        append_headers(&mut resp, headers);
        let h = resp.headers_mut();
        h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(count));
        h.insert(http::header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        if status == StatusCode::PARTIAL_CONTENT
            && let Some(v) = content_range(start, count, len)
        {
            h.insert(http::header::CONTENT_RANGE, v);
        }
        resp
    }

    /// A 307 to a presigned URL of the stored blob (`blob_redirect`), so the object store sends
    /// the bytes. The caller's access was checked before the plan ran. None: serve it here (the
    /// backend has no URLs, or the blob is not stored and the usual answer follows).
    async fn redirect_to_store(
        &self,
        repo: &crate::repos::Repository,
        digest: &Digest,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Option<Response<Body>> {
        // A document the plugin serves with its own media type (a manifest) stays here: the
        // object store would answer it as plain bytes.
        let typed =
            headers.iter().any(|(k, v)| k == http::header::CONTENT_TYPE && !v.as_bytes().eq_ignore_ascii_case(b"application/octet-stream"));
        if typed {
            return None;
        }
        let store = self.app.caps.store.clone();
        let ttl = std::time::Duration::from_secs(self.app.config.storage.presigned_redirect_seconds.unwrap_or(300).max(1));
        let d = digest.clone();
        let url = tokio::task::spawn_blocking(move || match store.stat(&d) {
            Ok(Some(_)) => store.presign(&d, ttl),
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        })
        .await;
        let url = match url {
            Ok(Ok(Some(url))) => url,
            Ok(Ok(None)) => return None,
            Ok(Err(e)) => {
                tracing::warn!(digest = %digest, error = %e, "no presigned URL; serving the blob here");
                return None;
            }
            Err(e) => {
                tracing::warn!(digest = %digest, error = %e, "no presigned URL; serving the blob here");
                return None;
            }
        };
        let location = HeaderValue::from_str(&url).ok()?;
        let mut resp = Response::new(body::empty());
        *resp.status_mut() = StatusCode::TEMPORARY_REDIRECT;
        append_headers(&mut resp, headers);
        let h = resp.headers_mut();
        // The plugin's headers describe the blob; the redirect itself has no body.
        h.remove(http::header::CONTENT_LENGTH);
        h.remove(http::header::CONTENT_TYPE);
        h.insert(http::header::LOCATION, location);
        h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(0u64));
        tracing::debug!(repo = %repo.name, digest = %digest, "blob redirected to the object store");
        self.app.metrics.blob_redirected(repo.name.as_str());
        Some(resp)
    }

    /// A remote's blob was pulled: what its cache limits evict by.
    fn pulled(&self, digest: &Digest) {
        if let Some(repo) = self.repo.as_deref().filter(|r| r.repo_type == crate::repos::RepoType::Remote) {
            self.app.gc.pulled(repo.name.as_str(), digest);
        }
    }

    async fn fetch_blob(&self, plan: types::FetchBlob) -> Response<Body> {
        let format = &self.plugin.meta.format;
        let Some(repo) = self.repo.clone() else {
            return plugin_fault(format, "fetch-blob for a request with no repository");
        };
        let digest: Digest = match plan.digest.parse() {
            Ok(d) => d,
            Err(e) => return plugin_fault(format, format!("fetch-blob: {e}")),
        };
        let r = &plan.request;
        let request = match parse_request(&r.method, &r.url, &r.headers, r.with_credentials) {
            Ok(req) => req,
            Err(e) => return plugin_fault(format, format!("fetch-blob: {e}")),
        };
        self.pulled(&digest);
        let fill = match self.app.fills.join_or_start(repo, digest.clone(), request) {
            Ok(Joined::Stored | Joined::StoredAs(..)) => return self.serve_stored(&digest, &plan.headers).await,
            Ok(Joined::Filling(fill)) => fill,
            Err(e) => return self.fill_failure(e).await,
        };
        self.stream_fill(fill, plan.headers).await
    }

    /// A fill's bytes to this client as they arrive (a range of them from the growing file too).
    async fn stream_fill(&self, fill: Arc<crate::upstream::fill::Fill>, headers: Vec<(String, String)>) -> Response<Body> {
        let format = &self.plugin.meta.format;
        let total = match wait_started(&fill.progress).await {
            Ok(total) => total,
            Err(e) => return self.fill_failure(e).await,
        };
        // A range of a blob still arriving is served from the growing staging file too.
        let range = match (total, self.range.as_deref()) {
            (Some(len), Some(r)) => parse_range(r, len),
            _ => None,
        };
        let (status, start, count) = match (range, total) {
            (Some(Ok((start, count))), _) => (StatusCode::PARTIAL_CONTENT, start, Some(count)),
            (Some(Err(())), Some(len)) => return range_not_satisfiable(len),
            (_, total) => (StatusCode::OK, 0, total),
        };
        let end = if status == StatusCode::PARTIAL_CONTENT { count.map(|c| start + c) } else { None };
        let mut resp = Response::new(if self.head { body::empty() } else { body::follow(fill, start, end) });
        *resp.status_mut() = status;
        if let Err(e) = apply_headers(&mut resp, headers) {
            return plugin_fault(format, e);
        }
        if let Some(count) = count {
            resp.headers_mut().insert(http::header::CONTENT_LENGTH, HeaderValue::from(count));
        }
        if let (StatusCode::PARTIAL_CONTENT, Some(count), Some(len)) = (status, count, total)
            && let Some(v) = content_range(start, count, len)
        {
            resp.headers_mut().insert(http::header::CONTENT_RANGE, v);
        }
        resp
    }

    async fn fill_failure(&self, e: FillError) -> Response<Body> {
        let (kind, status) = match &e {
            FillError::Status(s) => (FailureKind::UpstreamStatus, Some(*s)),
            FillError::Upstream(UpstreamError::Unreachable(_) | UpstreamError::Refused(_))
            | FillError::Stalled(_)
            | FillError::TooSlow { .. }
            | FillError::Length { .. } => (FailureKind::UpstreamUnreachable, None),
            FillError::TooMany { .. } => (FailureKind::TooManyRequests, None),
            FillError::Upstream(UpstreamError::NotAllowed(m) | UpstreamError::Invalid(m)) => {
                return plugin_fault(&self.plugin.meta.format, format!("fetch-blob: {m}"));
            }
            // A full disk is the server's unavailability (503 until space is freed), not a bug.
            FillError::NoRoom(_) => (FailureKind::Unavailable, None),
            FillError::Storage(_) if self.app.caps.store.health().suspect(self.app.caps.store.layout()) => (FailureKind::Unavailable, None),
            FillError::Upstream(UpstreamError::TooLarge(_)) | FillError::Storage(_) => (FailureKind::Internal, None),
            FillError::TooLarge { .. } => (FailureKind::TooLarge, None),
            FillError::DigestMismatch { .. } => (FailureKind::DigestMismatch, None),
        };
        self.failure(kind, status, e.to_string()).await
    }
}

/// Streams a request body onto the end of an upload session, hashing it as it goes. Frames are
/// gathered into large pieces so each blocking write (and hash) is worth the thread hop. Returns
/// the appender (not yet made durable: the caller finishes or commits it) and the body's error
/// when the client went away, what arrived before it appended.
async fn append(mut appender: Appender, mut body: Paced<Incoming>) -> Result<(Appender, Option<String>), String> {
    let mut buf = BytesMut::with_capacity(APPEND_CHUNK);
    loop {
        let end = match body.frame().await {
            None => Some(None),
            Some(Err(e)) => Some(Some(e.to_string())),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
                None
            }
        };
        if buf.len() >= APPEND_CHUNK || (end.is_some() && !buf.is_empty()) {
            let piece = buf.split().freeze();
            let (a, wrote) = tokio::task::spawn_blocking(move || {
                let wrote = appender.write(&piece);
                (appender, wrote)
            })
            .await
            .map_err(|e| e.to_string())?;
            wrote.map_err(|e| e.to_string())?;
            appender = a;
        }
        if let Some(body_error) = end {
            return Ok((appender, body_error));
        }
    }
}

/// Waits until the fill's content is stored; its digest and size.
pub(crate) async fn wait_stored(rx: &tokio::sync::watch::Receiver<Progress>) -> Result<(Digest, u64), FillError> {
    let mut rx = rx.clone();
    loop {
        {
            let p = rx.borrow_and_update();
            match (&p.outcome, &p.stored) {
                (Some(Err(e)), _) => return Err(e.clone()),
                (Some(Ok(size)), Some(d)) => return Ok((d.clone(), *size)),
                _ => {}
            }
        }
        if rx.changed().await.is_err() {
            return Err(FillError::Storage("fill ended without an outcome".into()));
        }
    }
}

/// Waits for the upstream's answer; returns its Content-Length.
async fn wait_started(rx: &tokio::sync::watch::Receiver<Progress>) -> Result<Option<u64>, FillError> {
    let mut rx = rx.clone();
    loop {
        {
            let p = rx.borrow_and_update();
            match &p.outcome {
                Some(Err(e)) => return Err(e.clone()),
                Some(Ok(size)) => return Ok(Some(*size)),
                None if p.started => return Ok(p.total),
                None => {}
            }
        }
        if rx.changed().await.is_err() {
            return Err(FillError::Storage("fill ended without an outcome".into()));
        }
    }
}
