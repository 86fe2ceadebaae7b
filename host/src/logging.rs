//! Where log lines go, and the one access line per request.
//!
//! Every line (tracing's and the access log's) is appended to one in-memory batch; a background
//! thread writes the batch to the output a moment after its first line arrived: `ACCESS_LINGER`
//! while the batch holds only access lines, `LINGER` once any other line (a warning, an audit
//! record) is in it. A busy server thus makes one write and one thread wake-up per batch instead
//! of one per request (both were most of what logging cost a small request), and an idle one makes
//! none. Access lines wait longer because they are most of the lines: with a short linger, a
//! client that sends requests in small bursts (`go mod download`) woke the writer every few
//! requests, a fifth of the server's CPU. Not lossy: past `MAX_BATCH` unwritten bytes, logging
//! waits for the writer, as nginx's buffered access_log does.
//!
//! The access line is formatted by hand in the same shape as tracing's lines (a formatted event
//! cost ~10k instructions, a third of a cached manifest GET). The sink is process-wide like the
//! tracing dispatcher it serves; without one (tests, library users) the access line is an
//! ordinary tracing event.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use tracing_subscriber::fmt::MakeWriter;

/// How long the writer lets a batch fill after its first line, once it holds a line other than
/// an access line.
const LINGER: Duration = Duration::from_millis(5);
/// How long the writer lets a batch of access lines only fill after its first line.
const ACCESS_LINGER: Duration = Duration::from_millis(50);
/// Unwritten bytes past which logging waits for the writer.
const MAX_BATCH: usize = 1 << 20;

static SINK: OnceLock<Sink> = OnceLock::new();
/// Replaces the level filter of the installed subscriber (`log_level` changes on reload).
type SetFilter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;
static FILTER: OnceLock<SetFilter> = OnceLock::new();

struct State {
    buf: Vec<u8>,
    /// the batch holds a line other than an access line: write it after `LINGER`
    prompt: bool,
    closed: bool,
}

impl State {
    /// How long the batch may wait for more lines before it is written.
    fn linger(&self) -> Duration {
        if self.prompt || self.buf.len() >= MAX_BATCH { LINGER } else { ACCESS_LINGER }
    }
}

struct Shared {
    state: Mutex<State>,
    /// a line arrived in an empty batch, or the sink closed
    filled: Condvar,
    /// the writer took the batch
    drained: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `prompt`: the line is not an access line, and the batch is written after `LINGER`.
    fn append(&self, bytes: &[u8], prompt: bool) {
        let mut st = self.lock();
        while st.buf.len() >= MAX_BATCH && !st.closed {
            // The writer may be lingering on a batch that just became full.
            self.filled.notify_one();
            st = self.drained.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        let was_empty = st.buf.is_empty();
        let sooner = prompt && !st.prompt;
        st.buf.extend_from_slice(bytes);
        st.prompt |= prompt;
        drop(st);
        // Only the first line of a batch wakes the writer, and the first line that shortens its
        // linger; it finds the rest when it takes the batch.
        if was_empty || sooner {
            self.filled.notify_one();
        }
    }
}

/// The batched log output. Cloned into tracing's fmt layer as its writer.
#[derive(Clone)]
pub struct Sink {
    shared: Arc<Shared>,
    ansi: bool,
    /// access lines as JSON objects (`log_format = "json"`)
    json: bool,
}

/// Writes what is still batched and stops the writer thread when dropped (at exit).
pub struct FlushGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.filled.notify_one();
        self.shared.drained.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn write_out(shared: &Shared, mut out: impl Write) {
    let mut batch = Vec::new();
    loop {
        {
            let mut st = shared.lock();
            while st.buf.is_empty() && !st.closed {
                st = shared.filled.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.buf.is_empty() {
                return;
            }
            let first = Instant::now();
            while !st.closed {
                let Some(left) = st.linger().checked_sub(first.elapsed()).filter(|d| !d.is_zero()) else { break };
                st = shared.filled.wait_timeout(st, left).unwrap_or_else(|p| p.into_inner()).0;
            }
            std::mem::swap(&mut st.buf, &mut batch);
            st.prompt = false;
        }
        shared.drained.notify_all();
        // Nowhere to report a failed log write; the next batch tries again.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        // A batch grown large by a burst is not kept around.
        batch.shrink_to(64 * 1024);
    }
}

impl Sink {
    /// Starts the writer thread for `out`; `ansi` colours the access line's level.
    pub fn start(out: impl Write + Send + 'static, ansi: bool) -> io::Result<(Sink, FlushGuard)> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State { buf: Vec::with_capacity(64 * 1024), prompt: false, closed: false }),
            filled: Condvar::new(),
            drained: Condvar::new(),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new().name("log-writer".into()).spawn(move || write_out(&shared, out))?
        };
        Ok((Sink { shared: shared.clone(), ansi, json: false }, FlushGuard { shared, thread: Some(thread) }))
    }

    /// Installs this sink as the writer of every log line: tracing's (text or JSON objects, as
    /// `format` says), filtered by `RUST_LOG` when set, else by `level`; and the access lines.
    /// The filter can be replaced later with [`set_level`]. Call once.
    pub fn install(mut self, format: crate::config::LogFormat, level: &str) {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        use tracing_subscriber::{EnvFilter, reload};
        let from_env = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
        let filter = EnvFilter::try_new(from_env.as_deref().unwrap_or(level)).unwrap_or_else(|e| {
            eprintln!("binaryrepo: log_level {level:?}: {e}; using \"info\"");
            EnvFilter::new("info")
        });
        let (filter, handle) = reload::Layer::new(filter);
        let fixed = from_env.is_some();
        let _ = FILTER.set(Box::new(move |level: &str| {
            if fixed {
                return Err("RUST_LOG is set and wins over log_level".into());
            }
            let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
            handle.reload(filter).map_err(|e| e.to_string())
        }));
        self.json = format == crate::config::LogFormat::Json;
        let _ = SINK.set(self.clone());
        let registry = tracing_subscriber::registry().with(filter);
        if self.json {
            let layer = tracing_subscriber::fmt::layer().json().flatten_event(false).with_current_span(true).with_writer(self);
            registry.with(layer).init();
        } else {
            let ansi = self.ansi;
            registry.with(tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(self)).init();
        }
    }

    /// Makes this the sink of `access` lines for the rest of the process.
    pub fn install_for_access(&self) {
        let _ = SINK.set(self.clone());
    }
}

/// Replaces the level filter installed by [`Sink::install`] (a `log_level` change on reload).
pub fn set_level(level: &str) -> Result<(), String> {
    match FILTER.get() {
        Some(set) => set(level),
        None => Err("no log filter installed".into()),
    }
}

pub struct SinkWriter<'a>(&'a Shared);

impl Write for SinkWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.append(buf, true);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = SinkWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        SinkWriter(&self.shared)
    }
}

/// One served request, as the access log records it.
pub struct Access<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub repo: Option<&'a str>,
    pub status: u16,
    /// the response body's length (0 for HEAD), None when not known up front
    pub bytes: Option<u64>,
    pub elapsed: Duration,
    /// the client's address (behind a trusted proxy: the one it forwarded)
    pub client: std::net::IpAddr,
    /// the signed-in user; None: anonymous or refused credentials
    pub user: Option<&'a str>,
}

/// Logs one request at info level, target `binaryrepo::server` (what `RUST_LOG` filters on):
/// `<time>  INFO request{method=GET path=/v2/... repo="r"}: binaryrepo::server: served status=200 bytes=754 ms=0`.
pub fn access(a: &Access<'_>) {
    if let Some(mut lines) = AccessLines::new(1, a.path.len()) {
        lines.add(a, SystemTime::now());
        lines.write();
    }
}

/// Access lines formatted together and handed to the output in one piece.
pub struct AccessLines {
    sink: Option<&'static Sink>,
    buf: Vec<u8>,
}

impl AccessLines {
    /// None when access lines are filtered out. `count` and `path_bytes`: what the buffer is sized for.
    pub fn new(count: usize, path_bytes: usize) -> Option<AccessLines> {
        if !tracing::enabled!(target: "binaryrepo::server", tracing::Level::INFO) {
            return None;
        }
        let sink = SINK.get();
        let buf = if sink.is_some() { Vec::with_capacity(200 * count + path_bytes) } else { Vec::new() };
        Some(AccessLines { sink, buf })
    }

    /// The line of a request that was answered `at`.
    pub fn add(&mut self, a: &Access<'_>, at: SystemTime) {
        match self.sink {
            None => tracing::info!(
                target: "binaryrepo::server",
                method = a.method, path = a.path, repo = a.repo, status = a.status, bytes = a.bytes,
                ms = a.elapsed.as_millis() as u64, client = %a.client, user = a.user, "served"
            ),
            Some(sink) if sink.json => format_access_json(&mut self.buf, a, at),
            Some(sink) => format_access(&mut self.buf, a, at, sink.ansi),
        }
    }

    pub fn write(self) {
        if let Some(sink) = self.sink
            && !self.buf.is_empty()
        {
            sink.shared.append(&self.buf, false);
        }
    }
}

/// The access line as tracing's JSON formatter shapes an event: `{"timestamp", "level", "fields",
/// "target", "span"}`, with the client and the user among the fields.
fn format_access_json(line: &mut Vec<u8>, a: &Access<'_>, now: SystemTime) {
    let value = serde_json::json!({
        "timestamp": humantime::format_rfc3339_micros(now).to_string(),
        "level": "INFO",
        "fields": {
            "message": "served",
            "status": a.status,
            "bytes": a.bytes,
            "ms": a.elapsed.as_millis() as u64,
            "client": a.client.to_string(),
            "user": a.user,
        },
        "target": "binaryrepo::server",
        "span": {"name": "request", "method": a.method, "path": a.path, "repo": a.repo},
    });
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *line, &value);
    line.push(b'\n');
}

fn format_access(line: &mut Vec<u8>, a: &Access<'_>, now: SystemTime, ansi: bool) {
    timestamp(line, now);
    line.extend_from_slice(if ansi { b" \x1b[32m INFO\x1b[0m " } else { b"  INFO " });
    line.extend_from_slice(b"request{method=");
    line.extend_from_slice(a.method.as_bytes());
    line.extend_from_slice(b" path=");
    line.extend_from_slice(a.path.as_bytes());
    if let Some(repo) = a.repo {
        line.extend_from_slice(b" repo=\"");
        line.extend_from_slice(repo.as_bytes());
        line.push(b'"');
    }
    line.extend_from_slice(b"}: binaryrepo::server: served status=");
    number(line, a.status.into());
    line.extend_from_slice(b" bytes=");
    match a.bytes {
        Some(n) => number(line, n),
        None => line.push(b'-'),
    }
    line.extend_from_slice(b" ms=");
    number(line, a.elapsed.as_millis() as u64);
    line.extend_from_slice(b" client=");
    match a.client {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    line.push(b'.');
                }
                number(line, octet.into());
            }
        }
        v6 => {
            let _ = write!(line, "{v6}");
        }
    }
    if let Some(user) = a.user {
        line.extend_from_slice(b" user=");
        line.extend_from_slice(user.as_bytes());
    }
    line.push(b'\n');
}

fn number(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// RFC 3339 UTC with microseconds, as tracing's fmt layer writes it: `2026-11-23T03:12:01.620610Z`.
/// The date and time of day are formatted once a second per thread (`SECOND`), the
/// microseconds on every line.
fn timestamp(out: &mut Vec<u8>, now: SystemTime) {
    let Ok(since) = now.duration_since(std::time::UNIX_EPOCH) else {
        // Writing into a Vec cannot fail.
        let _ = write!(out, "{}", humantime::format_rfc3339_micros(now));
        return;
    };
    let secs = since.as_secs();
    SECOND.with(|cell| {
        let mut second = cell.borrow_mut();
        if second.0 != secs || second.1.is_empty() {
            second.1.clear();
            let whole = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
            // `2026-11-23T03:12:01Z`: the part before the `Z` is kept.
            let _ = write!(second.1, "{}", humantime::format_rfc3339_seconds(whole));
            second.1.pop();
            second.0 = secs;
        }
        out.extend_from_slice(&second.1);
    });
    let micros = since.subsec_micros();
    let mut digits = [b'.', b'0', b'0', b'0', b'0', b'0', b'0', b'Z'];
    let mut n = micros;
    for d in digits[1..7].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&digits);
}

thread_local! {
    /// The second the access lines of this thread were last stamped with, formatted.
    static SECOND: std::cell::RefCell<(u64, Vec<u8>)> = const { std::cell::RefCell::new((0, Vec::new())) };
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    #[test]
    fn access_line_has_the_shape_of_a_tracing_line() {
        let mut line = Vec::new();
        let a = Access {
            method: "GET",
            path: "/v2/bench/library/test/manifests/1",
            repo: Some("bench"),
            status: 200,
            bytes: Some(754),
            elapsed: Duration::from_micros(1500),
            client: std::net::IpAddr::from([127, 0, 0, 1]),
            user: Some("alice"),
        };
        let t = UNIX_EPOCH + Duration::from_micros(1_795_403_521_620_610);
        format_access(&mut line, &a, t, false);
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "2026-11-23T03:12:01.620610Z  INFO request{method=GET path=/v2/bench/library/test/manifests/1 repo=\"bench\"}: \
             binaryrepo::server: served status=200 bytes=754 ms=1 client=127.0.0.1 user=alice\n"
        );
        let mut line = Vec::new();
        let a = Access { repo: None, bytes: None, status: 404, user: None, ..a };
        format_access(&mut line, &a, UNIX_EPOCH + Duration::from_secs(951_782_400), false);
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "2000-02-29T00:00:00.000000Z  INFO request{method=GET path=/v2/bench/library/test/manifests/1}: \
             binaryrepo::server: served status=404 bytes=- ms=1 client=127.0.0.1\n"
        );
        // the same second again (its date and time kept by the thread), and an IPv6 client
        let mut line = Vec::new();
        let v6 = Access { client: std::net::IpAddr::from([0, 0, 0, 0, 0, 0, 0, 1]), ..a };
        format_access(&mut line, &v6, UNIX_EPOCH + Duration::from_micros(951_782_400_000_042), false);
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "2000-02-29T00:00:00.000042Z  INFO request{method=GET path=/v2/bench/library/test/manifests/1}: \
             binaryrepo::server: served status=404 bytes=- ms=1 client=::1\n"
        );
        let mut line = Vec::new();
        format_access(&mut line, &a, UNIX_EPOCH + Duration::from_micros(999_999), false);
        assert!(String::from_utf8(line).unwrap().starts_with("1970-01-01T00:00:00.999999Z  INFO "));
        let mut line = Vec::new();
        format_access_json(&mut line, &Access { user: Some("bob"), ..a }, UNIX_EPOCH);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["fields"]["client"], "127.0.0.1");
        assert_eq!(v["fields"]["user"], "bob");
        assert_eq!(v["span"]["path"], "/v2/bench/library/test/manifests/1");
        assert_eq!(v["fields"]["status"], 404);
    }

    #[test]
    fn access_lines_linger_longer_than_other_lines() {
        let mut st = State { buf: b"access line\n".to_vec(), prompt: false, closed: false };
        assert_eq!(st.linger(), ACCESS_LINGER);
        st.prompt = true;
        assert_eq!(st.linger(), LINGER, "a warning or an audit record is written promptly");
        st.prompt = false;
        st.buf.resize(MAX_BATCH, b'x');
        assert_eq!(st.linger(), LINGER, "a full batch does not keep the loggers waiting");
    }

    #[test]
    fn batches_reach_the_output_in_order_and_at_close() {
        #[derive(Clone, Default)]
        struct Out(Arc<Mutex<Vec<u8>>>);
        impl Write for Out {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let out = Out::default();
        let (sink, guard) = Sink::start(out.clone(), false).unwrap();
        for i in 0..1000 {
            let _ = writeln!(sink.make_writer(), "line {i}");
        }
        drop(guard);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let expected: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(text, expected);
    }
}
