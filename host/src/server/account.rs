//! A request's access line and request metrics, kept off the time its client waits.
//!
//! Both are bookkeeping the client does not wait for, but done where the response is made they
//! come between the request's bytes and its response's: on a core that a request finds cold (a
//! client sending requests in bursts, like `go mod download`), a few microseconds of every
//! read. A read whose counters its repository's series already keeps (GET and HEAD answered
//! 200, 206, 304 or 404) is instead noted in its worker thread's queue, and counted and logged
//! when that thread runs out of work (the runtime's `on_thread_park`, set by [`hooks`]), once
//! the response has gone out; together with the others of its burst, in one hand-over to the
//! log writer. Anything else is counted and logged at once.
//!
//! Bounded: a queue holds at most `QUEUE_MAX` requests, past which the thread empties it at
//! once (a thread that never runs out of work still logs every `QUEUE_MAX` requests). Nothing
//! is lost: a scrape of `/metrics` empties every queue first ([`flush_all`]), and a thread's
//! queue is emptied when it stops. Without the hooks (tests, library users) nothing is deferred.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use http::{Method, Response, Uri};

use super::Body;
use crate::App;
use crate::auth::{Identity, UserIdentity};
use crate::logging::{self, Access, AccessLines};
use crate::metrics::Series;
use crate::repos::Repository;

/// Requests a worker thread holds before it logs them anyway.
const QUEUE_MAX: usize = 64;

/// Whether the runtime empties the queues (`hooks`).
static ON: AtomicBool = AtomicBool::new(false);
/// Every thread's queue, for `flush_all`.
static QUEUES: Mutex<Vec<Weak<Queue>>> = Mutex::new(Vec::new());

thread_local! {
    static HERE: Arc<Queue> = {
        let q = Arc::new(Queue::default());
        let mut all = QUEUES.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&q));
        q
    };
}

/// One answered read, as its access line and metrics need it.
struct Served {
    series: Arc<Series>,
    head: bool,
    status: u16,
    bytes: Option<u64>,
    elapsed: Duration,
    at: SystemTime,
    uri: Uri,
    client: IpAddr,
    user: Option<Arc<UserIdentity>>,
}

#[derive(Default)]
struct Queue(Mutex<Vec<Served>>);

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Served>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the queue holds; an empty queue (most times a thread parks) allocates nothing.
    fn take(&self) -> Vec<Served> {
        let mut queue = self.lock();
        if queue.is_empty() {
            return Vec::new();
        }
        let room = queue.capacity();
        std::mem::replace(&mut *queue, Vec::with_capacity(room))
    }
}

/// Queues a request on this thread, emptying the queue when it is full.
fn queue(served: Served) {
    let full = HERE.try_with(|q| {
        let mut queue = q.lock();
        queue.push(served);
        queue.len() >= QUEUE_MAX
    });
    // Err: no queue on a thread being torn down; the request is not logged.
    if full == Ok(true) {
        flush_here();
    }
}

/// Sets the worker threads of `builder` to log and count their queued requests when they run
/// out of work and when they stop, and turns queueing on.
pub fn hooks(builder: &mut tokio::runtime::Builder) -> &mut tokio::runtime::Builder {
    ON.store(true, Ordering::Release);
    builder.on_thread_park(flush_here).on_thread_stop(flush_here)
}

/// Logs and counts what this thread queued.
pub fn flush_here() {
    // `try_with`: a thread being torn down has no queue left to empty.
    if let Ok(served) = HERE.try_with(|q| q.take()) {
        record(served);
    }
}

/// Logs and counts what every thread queued (before a scrape of the metrics).
pub fn flush_all() {
    let queues: Vec<Arc<Queue>> = QUEUES.lock().unwrap_or_else(|p| p.into_inner()).iter().filter_map(Weak::upgrade).collect();
    for q in queues {
        record(q.take());
    }
}

fn record(served: Vec<Served>) {
    if served.is_empty() {
        return;
    }
    let mut lines = AccessLines::new(served.len(), served.iter().map(|s| s.uri.path().len()).sum());
    for s in &served {
        let method = if s.head { Method::HEAD } else { Method::GET };
        // Kept by the series when queued: it keeps its counters for good.
        s.series.request_kept(&method, s.status, s.bytes, s.elapsed);
        if let Some(lines) = lines.as_mut() {
            let name = s.series.name();
            let access = Access {
                method: method.as_str(),
                path: s.uri.path(),
                repo: (!name.is_empty()).then_some(name),
                status: s.status,
                bytes: s.bytes,
                elapsed: s.elapsed,
                client: s.client,
                user: s.user.as_deref().map(|u| u.name.as_str()),
            };
            lines.add(&access, s.at);
        }
    }
    if let Some(lines) = lines {
        lines.write();
    }
}

/// The request's access line and its request metrics: queued for when the thread runs out of
/// work where that is allowed, else at once. `identity`: None when the credentials were refused
/// (or not checked).
#[allow(clippy::too_many_arguments)]
pub fn account(
    app: &App,
    method: &Method,
    uri: &Uri,
    repo: Option<&Arc<Repository>>,
    resp: &Response<Body>,
    started: Instant,
    client: IpAddr,
    identity: Option<&Identity>,
) {
    let user = match identity {
        Some(Identity::User(u)) => Some(u),
        _ => None,
    };
    let status = resp.status().as_u16();
    let bytes = body_length(resp);
    let elapsed = started.elapsed();
    let series = app.metrics.series_of(repo.map(|r| &**r));
    if ON.load(Ordering::Relaxed) && series.keeps(method, status) {
        let served = Served {
            series,
            head: *method == Method::HEAD,
            status,
            bytes,
            elapsed,
            at: SystemTime::now(),
            uri: uri.clone(),
            client,
            user: user.cloned(),
        };
        queue(served);
        return;
    }
    app.metrics.request(&series, method, status, bytes, elapsed);
    logging::access(&Access {
        method: method.as_str(),
        path: uri.path(),
        repo: repo.map(|r| r.name.as_str()),
        status,
        bytes,
        elapsed,
        client,
        user: user.map(|u| u.name.as_str()),
    });
}

/// The body's length as the client will get it: exact for small bodies, Content-Length for
/// streamed blobs, None when neither says.
pub fn body_length(resp: &Response<Body>) -> Option<u64> {
    hyper::body::Body::size_hint(resp.body())
        .exact()
        .or_else(|| resp.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(metrics: &crate::metrics::Metrics) -> String {
        let text = metrics.render(0).unwrap_or_else(|e| panic!("{e}"));
        text.lines().filter(|l| l.starts_with("binaryrepo_http_requests_total{") && l.contains("\"queued\"")).collect::<Vec<_>>().join("\n")
    }

    /// Guards the queue's bound (without it a thread that never parks holds every request it
    /// served) and `flush_all` (without it a scrape misses what threads hold).
    #[test]
    fn a_queue_stays_within_its_bound_and_a_scrape_sees_every_request() {
        let metrics = crate::metrics::Metrics::new();
        let series = metrics.series(Some("queued"));
        // The first request of a (method, status) takes its counter from the family, at once.
        metrics.request(&series, &Method::GET, 200, Some(1), Duration::from_millis(1));
        let served = move || Served {
            series: series.clone(),
            head: false,
            status: 200,
            bytes: Some(1),
            elapsed: Duration::from_millis(1),
            at: SystemTime::now(),
            uri: Uri::from_static("/queued/x"),
            client: IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            user: None,
        };
        for _ in 0..(QUEUE_MAX * 2 + 5) {
            queue(served());
            assert!(HERE.with(|q| q.lock().len()) < QUEUE_MAX);
        }
        assert!(count(&metrics).ends_with(&format!(" {}", QUEUE_MAX * 2 + 1)), "{}", count(&metrics));
        // Another thread's queue, while that thread lives on.
        let (queued, done) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
        let theirs = served();
        let other = std::thread::spawn(move || {
            queue(theirs);
            let _ = queued.0.send(());
            let _ = done.1.recv();
        });
        let _ = queued.1.recv();
        flush_all();
        let _ = done.0.send(());
        other.join().unwrap_or_else(|_| panic!("thread"));
        assert!(count(&metrics).ends_with(&format!(" {}", QUEUE_MAX * 2 + 6 + 1)), "{}", count(&metrics));
    }
}
