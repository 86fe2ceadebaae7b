//! The answers hyper writes itself, in the format's shape: a request head it refuses while
//! parsing it, before there is a request to route — a header block over its limits (`431`), a
//! request target over 64 KiB (`414`), a malformed request line or header (`400`). hyper writes
//! these bare (no body) and no hook lets the service replace them. So the connection's stream
//! keeps the first bytes of each request it reads, and when hyper writes such a bare head, writes
//! in its place the failure the repository's plugin renders for the request line and `Host` seen
//! (plain text where no repository answers, or where the request line itself cannot be read).
//! Everything else passes through.

use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::App;
use crate::plugins::bindings::types::FailureKind;
use crate::storage::mapped;

/// Bytes of a request head kept: the request line and, usually, `Host`.
const KEPT: usize = 8 * 1024;
/// A rendering that takes longer gives way to the plain answer.
const RENDER_TIMEOUT: Duration = Duration::from_secs(5);

/// What hyper refused, by the status it answered.
fn message(status: StatusCode) -> &'static str {
    match status {
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => {
            "the request's header block is over the server's limit (too many or too large header fields)"
        }
        StatusCode::URI_TOO_LONG => "the request target (path and query) is over the server's limit of 64 KiB",
        _ => "the request's head is malformed (request line or a header field cannot be parsed)",
    }
}

/// Where the connection was accepted: what routing needs besides the request.
#[derive(Clone)]
pub struct Listener {
    pub app: Arc<App>,
    pub main_listener: bool,
    pub local_port: u16,
    pub peer: SocketAddr,
}

enum State {
    Passing,
    /// hyper's bare answer with this status is being replaced.
    Start(StatusCode),
    Rendering(Pin<Box<dyn Future<Output = Bytes> + Send>>),
    Writing {
        answer: Bytes,
        at: usize,
    },
}

pub struct Oversized<S> {
    inner: S,
    listener: Listener,
    /// The first bytes read since the last response head was written.
    head: Vec<u8>,
    new_request: bool,
    state: State,
}

impl<S> Oversized<S> {
    pub fn new(inner: S, listener: Listener) -> Self {
        Oversized { inner, listener, head: Vec::new(), new_request: true, state: State::Passing }
    }
}

/// hyper's own answer to a head it could not take: a 400, 414 or 431 status line,
/// `connection: close`, `content-length: 0` and `date`, nothing else. A refusal a handler made
/// has a body (and a content type), so it is never taken for this.
fn bare_refusal(buf: &[u8]) -> Option<StatusCode> {
    let rest = buf.strip_prefix(b"HTTP/1.1 ").or_else(|| buf.strip_prefix(b"HTTP/1.0 "))?;
    let status = match rest.get(..4)? {
        b"400 " => StatusCode::BAD_REQUEST,
        b"414 " => StatusCode::URI_TOO_LONG,
        b"431 " => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        _ => return None,
    };
    let text = std::str::from_utf8(rest).ok()?;
    let (_, headers) = text.split_once("\r\n")?;
    let headers = headers.strip_suffix("\r\n\r\n").or_else(|| headers.strip_suffix("\r\n"))?;
    let mut close = false;
    let bare = headers.split("\r\n").filter(|l| !l.is_empty()).all(|l| {
        let l = l.to_ascii_lowercase();
        close |= l == "connection: close";
        l == "content-length: 0" || l == "connection: close" || l.starts_with("date:")
    });
    (bare && close).then_some(status)
}

/// The request line's method and target, and the `Host` value if it was among the kept bytes.
fn request_of(head: &[u8]) -> Option<(http::Method, http::Uri, Option<HeaderValue>)> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let mut words = lines.next()?.split(' ');
    let method = http::Method::from_bytes(words.next()?.as_bytes()).ok()?;
    let uri = words.next()?.parse::<http::Uri>().ok()?;
    let host = lines
        .take_while(|l| !l.is_empty())
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("host")).map(|(_, v)| v.trim().to_owned()))
        .and_then(|v| HeaderValue::from_str(&v).ok());
    Some((method, uri, host))
}

fn plain(status: StatusCode) -> http::Response<super::body::Body> {
    let mut resp = http::Response::new(super::body::full(format!("{}\n", message(status))));
    resp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// The failure as the request's repository renders it (as for an anonymous caller: the head
/// with the credentials was not read whole).
async fn rendered(listener: &Listener, head: &[u8], status: StatusCode) -> http::Response<super::body::Body> {
    let plain = || plain(status);
    let Some((method, uri, host)) = request_of(head) else { return plain() };
    let path = uri.path();
    if listener.main_listener && (path == "/api" || path.starts_with("/api/") || path == "/metrics") {
        return plain();
    }
    let mut builder = http::Request::builder().method(method).uri(uri);
    if let Some(host) = host {
        builder = builder.header(http::header::HOST, host);
    }
    let Ok(req) = builder.body(()) else { return plain() };
    let (parts, ()) = req.into_parts();
    let app = &listener.app;
    let forwarded = app.config.trusted_proxies.contains(listener.peer.ip());
    let Ok(resolved) = super::resolve::resolve(app, listener.main_listener, listener.local_port, forwarded, (&parts.uri, &parts.headers))
    else {
        return plain();
    };
    let caller = super::gate::caller(app, &super::ANONYMOUS, &resolved);
    super::render_failure(app, &resolved, &parts, &caller, FailureKind::BadRequest, None, message(status).to_owned()).await
}

/// The whole answer as bytes, `Connection: close` (hyper closes the connection after it).
async fn answer(listener: Listener, head: Vec<u8>, status: StatusCode) -> Bytes {
    let resp = match tokio::time::timeout(RENDER_TIMEOUT, rendered(&listener, &head, status)).await {
        Ok(resp) => resp,
        Err(_) => plain(status),
    };
    let (parts, body) = resp.into_parts();
    let body = match tokio::time::timeout(RENDER_TIMEOUT, body.collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        _ => Bytes::from(format!("{}\n", message(status))),
    };
    tracing::info!(peer = %listener.peer, status = status.as_u16(), "request head refused while parsing it");
    let mut out = format!("HTTP/1.1 {} {}\r\n", status.as_u16(), status.canonical_reason().unwrap_or("")).into_bytes();
    for (k, v) in &parts.headers {
        if matches!(*k, http::header::CONTENT_LENGTH | http::header::CONNECTION | http::header::TRANSFER_ENCODING) {
            continue;
        }
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("content-length: {}\r\nconnection: close\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(&body);
    Bytes::from(out)
}

impl<S: AsyncWrite + Unpin> Oversized<S> {
    /// Writes the rendered answer in place of hyper's bare head; reports `claimed` (the bare
    /// head's length) as written once the answer is out.
    fn poll_replace(&mut self, cx: &mut Context<'_>, claimed: usize) -> Poll<io::Result<usize>> {
        loop {
            match &mut self.state {
                // Callers set `Start` first; nothing is pending to replace.
                State::Passing => return Poll::Ready(Ok(claimed)),
                State::Start(status) => {
                    let head = std::mem::take(&mut self.head);
                    self.state = State::Rendering(Box::pin(answer(self.listener.clone(), head, *status)));
                }
                State::Rendering(fut) => {
                    let answer = ready!(fut.as_mut().poll(cx));
                    self.state = State::Writing { answer, at: 0 };
                }
                State::Writing { answer, at } => {
                    while *at < answer.len() {
                        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &answer[*at..]))?;
                        if n == 0 {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                        }
                        *at += n;
                    }
                    self.state = State::Passing;
                    self.new_request = true;
                    return Poll::Ready(Ok(claimed));
                }
            }
        }
    }

    /// Whether `buf` is hyper's bare refusal of the head last read, to be replaced (then the
    /// state says with which status). A `HEAD` request's answer has no body: it stays as it is.
    fn take_refusal(&mut self, buf: &[u8]) -> bool {
        match bare_refusal(buf) {
            Some(status) if !self.head.starts_with(b"HEAD ") => {
                self.state = State::Start(status);
                true
            }
            _ => false,
        }
    }

    fn note_written(&mut self, buf: &[u8]) {
        if buf.starts_with(b"HTTP/1.") {
            self.new_request = true;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Oversized<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let got = &buf.filled()[before..];
        if !got.is_empty() {
            if this.new_request {
                this.head.clear();
                this.new_request = false;
            }
            let room = KEPT.saturating_sub(this.head.len());
            this.head.extend_from_slice(&got[..got.len().min(room)]);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Oversized<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // A slice of a mapped blob is body, never a response head: looking at its bytes would
        // fault the file's pages into this process (zero_copy sends them with sendfile).
        if matches!(this.state, State::Passing) && mapped::lookup(buf).is_some() {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        if !matches!(this.state, State::Passing) || this.take_refusal(buf) {
            return this.poll_replace(cx, buf.len());
        }
        this.note_written(buf);
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let first = bufs.iter().find(|b| !b.is_empty());
        if matches!(this.state, State::Passing) && first.is_some_and(|b| mapped::lookup(b).is_some()) {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        if let Some(first) = first
            && (!matches!(this.state, State::Passing) || this.take_refusal(first))
        {
            return this.poll_replace(cx, first.len());
        }
        if let Some(first) = first {
            this.note_written(first);
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::{bare_refusal, request_of};

    #[test]
    fn only_hypers_bare_head_is_taken_for_the_refusal() {
        let date = "date: Thu, 03 Dec 2026 10:17:00 GMT";
        for (line, status) in [
            ("431 Request Header Fields Too Large", StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
            ("414 URI Too Long", StatusCode::URI_TOO_LONG),
            ("400 Bad Request", StatusCode::BAD_REQUEST),
        ] {
            let head = format!("HTTP/1.1 {line}\r\nconnection: close\r\ncontent-length: 0\r\n{date}\r\n\r\n");
            assert_eq!(bare_refusal(head.as_bytes()), Some(status), "{head}");
        }
        assert!(
            bare_refusal(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\ncontent-length: 12\r\n\r\n")
                .is_none()
        );
        // a handler's empty 400 on a connection kept alive is its own
        assert!(bare_refusal(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(bare_refusal(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(bare_refusal(b"HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n\r\n").is_none());
    }

    #[test]
    fn the_request_line_and_host_are_read_from_a_cut_head() {
        let (m, uri, host) = request_of(b"GET /v2/x/manifests/1 HTTP/1.1\r\nHost: reg.example:5000\r\nX-Pad: xxxxx").unwrap();
        assert_eq!((m.as_str(), uri.path(), host.unwrap().to_str().unwrap()), ("GET", "/v2/x/manifests/1", "reg.example:5000"));
        assert!(request_of(b"\x16\x03\x01 garbage").is_none());
    }
}
