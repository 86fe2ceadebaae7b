//! What an operator of a cache watches, for Prometheus (`GET /metrics`): requests and their
//! latency per repository, how often a blob came from the store, from a fill in progress or from
//! upstream, every upstream request and byte (Docker Hub counts pulls), plugin calls and the ones
//! the plan cache saved, and the process itself.
//!
//! Counters are kept per label set in `prometheus-client` families; the label values are bounded
//! (configured repository names, a fixed list of methods, HTTP status codes, plan and export names),
//! so a client cannot grow the series by sending odd requests.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry, Unit};

use crate::plugins::bindings::types::Plan;
use crate::plugins::reuse::Ready;

/// The Content-Type of the exposition (OpenMetrics text, which Prometheus scrapes natively).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// shared with the repository's `Series`, so counting a request allocates nothing
    repository: Arc<str>,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RepoLabels {
    repository: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlanLabels {
    repository: String,
    plan: &'static str,
    /// "plugin": the plugin was called for it; "reused": a plan it offered earlier answered
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FetchLabels {
    repository: String,
    /// "started" an upstream fill, "joined" one in flight, or found the blob "stored" meanwhile
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FillLabels {
    repository: String,
    /// "stored" (verified and committed) or "failed" (nothing stored)
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    format: String,
    export: &'static str,
    /// "ok", or "failed": a trap, the CPU or memory limit
    outcome: &'static str,
}

type Counters<L> = Family<L, Counter<u64, AtomicU64>>;

/// The kinds of plan, in the order of `Series::plans`.
const PLAN_KINDS: [&str; 5] = ["respond", "serve-blob", "fetch-blob", "receive-upload", "read-body"];

/// A repository's per-request series, resolved once: counting a request then costs one map
/// look-up for these and one for its (method, status) counter, and no allocation. Every
/// repository's plan counters exist from its first request on, at zero.
pub struct Series {
    name: Arc<str>,
    response_bytes: Counter<u64, AtomicU64>,
    seconds: Histogram,
    /// `PLAN_KINDS` called from the plugin, then the same reused
    plans: [Counter<u64, AtomicU64>; 2 * PLAN_KINDS.len()],
    store_served: Counter<u64, AtomicU64>,
    store_served_bytes: Counter<u64, AtomicU64>,
    /// the request counters of GET and HEAD with the statuses most reads end in
    /// (`common_slot`), taken from the family the first time
    common: [std::sync::OnceLock<Counter<u64, AtomicU64>>; 8],
}

/// Where a `Repository` keeps its series once found, so that its requests find it without the
/// map look-up. A definition changed is a new `Repository` and finds it again (by name); a copy
/// starts empty, so it can never hold another repository's series.
#[derive(Default)]
pub struct SeriesSlot(std::sync::OnceLock<Arc<Series>>);

impl Clone for SeriesSlot {
    fn clone(&self) -> Self {
        SeriesSlot::default()
    }
}

impl std::fmt::Debug for SeriesSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SeriesSlot")
    }
}

/// Where `Series::common` keeps the counter of a (method, status), if it keeps it.
fn common_slot(method: &http::Method, status: u16) -> Option<usize> {
    let m = match *method {
        http::Method::GET => 0,
        http::Method::HEAD => 1,
        _ => return None,
    };
    let s = match status {
        200 => 0,
        206 => 1,
        304 => 2,
        404 => 3,
        _ => return None,
    };
    Some(m * 4 + s)
}

impl Series {
    /// A blob body served from the store, without an upstream transfer.
    pub fn served_from_store(&self, bytes: u64) {
        self.store_served.inc();
        self.store_served_bytes.inc_by(bytes);
    }

    /// One plan carried out: the plugin's answer, or (`reused`) a plan it offered earlier.
    pub fn plan(&self, plan: &Plan, reused: bool) {
        let kind = match plan {
            Plan::Respond(_) => 0,
            Plan::ServeBlob(_) => 1,
            Plan::FetchBlob(_) | Plan::FetchFile(_) => 2,
            Plan::ReceiveUpload(_) => 3,
            Plan::ReadBody(_) => 4,
        };
        self.count_plan(kind, reused);
    }

    /// A plan kept from an earlier request carried out again.
    pub fn reused(&self, ready: &Ready) {
        self.count_plan(if matches!(ready, Ready::Respond { .. }) { 0 } else { 1 }, true);
    }

    /// The name of the repository the series counts (empty: no repository).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Counts one request whose (method, status) counter this series keeps and has already
    /// taken from the family (`Metrics::request` takes it the first time); counts nothing for
    /// any other (see `keeps`).
    pub fn request_kept(&self, method: &http::Method, status: u16, body_bytes: Option<u64>, elapsed: Duration) {
        if let Some(counter) = self.kept(method, status) {
            self.response(body_bytes, elapsed);
            counter.inc();
        }
    }

    /// Whether `request_kept` counts this request.
    pub fn keeps(&self, method: &http::Method, status: u16) -> bool {
        self.kept(method, status).is_some()
    }

    fn kept(&self, method: &http::Method, status: u16) -> Option<&Counter<u64, AtomicU64>> {
        common_slot(method, status).and_then(|i| self.common.get(i)).and_then(|slot| slot.get())
    }

    /// A response's body bytes and time, whatever its method and status.
    fn response(&self, body_bytes: Option<u64>, elapsed: Duration) {
        if let Some(bytes) = body_bytes.filter(|b| *b > 0) {
            self.response_bytes.inc_by(bytes);
        }
        self.seconds.observe(elapsed.as_secs_f64());
    }

    fn count_plan(&self, kind: usize, reused: bool) {
        if let Some(c) = self.plans.get(kind + if reused { PLAN_KINDS.len() } else { 0 }) {
            c.inc();
        }
    }
}

pub struct Metrics {
    registry: Registry,
    series: RwLock<HashMap<String, Arc<Series>>>,
    requests: Counters<RequestLabels>,
    response_bytes: Counters<RepoLabels>,
    request_seconds: Family<RepoLabels, Histogram>,
    plans: Counters<PlanLabels>,
    fetches: Counters<FetchLabels>,
    fills: Counters<FillLabels>,
    upstream_requests: Counters<RequestLabels>,
    upstream_errors: Counters<RepoLabels>,
    upstream_bytes: Counters<RepoLabels>,
    store_served: Counters<RepoLabels>,
    store_served_bytes: Counters<RepoLabels>,
    blob_redirects: Counters<RepoLabels>,
    plugin_calls: Counters<PluginLabels>,
}

/// What a repository's cache has done since start, read from the counters above (the web page and
/// `GET /api/stats` show it; Prometheus has the same numbers as series).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CacheStats {
    /// Blob bodies served from the store (a GET, not a HEAD).
    pub served_from_store: u64,
    /// Their bytes: for a remote, what clients got without an upstream transfer.
    pub served_from_store_bytes: u64,
    /// Upstream fills this repository started.
    pub fetched_upstream: u64,
    /// Requests that joined a fill already under way instead of starting their own.
    pub joined_in_flight: u64,
    /// Body bytes received from the upstream (documents, tokens and blobs).
    pub upstream_bytes: u64,
    /// Body bytes sent to clients (as announced: a client that hung up early got fewer).
    pub client_bytes: u64,
}

impl CacheStats {
    /// What clients got beyond what came from upstream: the traffic a remote spared its upstream.
    pub fn bytes_saved(&self) -> u64 {
        self.client_bytes.saturating_sub(self.upstream_bytes)
    }
}

/// Latency buckets from 250 µs (a cached manifest) to 10 s (a cold fill waiting on upstream).
const BUCKETS: [f64; 13] = [0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0];

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut root = Registry::default();
        // The process family keeps its conventional unprefixed names (`process_*`).
        root.register_collector(Box::new(Process::new()));
        let r = root.sub_registry_with_prefix("binaryrepo");
        Metrics {
            series: Default::default(),
            requests: register(r, "http_requests", "Requests answered, by repository (empty: the management API), method and status", None),
            response_bytes: register(
                r,
                "http_response_body",
                "Response body bytes as announced to clients (Content-Length; a client that hangs up early got fewer)",
                Some(Unit::Bytes),
            ),
            request_seconds: register_metric(
                r,
                "http_request_duration",
                "Time until the response head was ready (a streamed blob's body goes on after it)",
                Some(Unit::Seconds),
                Family::new_with_constructor(|| Histogram::new(BUCKETS)),
            ),
            plans: register(
                r,
                "plans",
                "Plans carried out, by kind, and whether the plugin was called or a plan it offered was reused",
                None,
            ),
            fetches: register(
                r,
                "blob_fetches",
                "fetch-blob plans: the request started an upstream fill, joined one in flight, or found the blob stored meanwhile",
                None,
            ),
            fills: register(r, "upstream_fills", "Upstream blob fills finished, by outcome", None),
            upstream_requests: register(r, "upstream_requests", "Requests sent upstream that got an answer, by status", None),
            upstream_errors: register(r, "upstream_errors", "Requests sent upstream that got no answer (connect failure, timeout)", None),
            upstream_bytes: register(r, "upstream_body", "Body bytes received from upstreams", Some(Unit::Bytes)),
            store_served: register(r, "store_served_blobs", "Blob bodies served from the store, without an upstream transfer", None),
            store_served_bytes: register(
                r,
                "store_served_blob",
                "Bytes of blob bodies served from the store, without an upstream transfer",
                Some(Unit::Bytes),
            ),
            blob_redirects: register(r, "blob_redirects", "Blob GETs redirected to a presigned URL of the object store", None),
            plugin_calls: register(r, "plugin_calls", "Calls into format plugins, by export and outcome", None),
            registry: root,
        }
    }

    /// The series of a request's repository (None: the management API and requests for no
    /// repository), kept by the repository after its first request.
    pub fn series_of(&self, repository: Option<&crate::repos::Repository>) -> Arc<Series> {
        match repository {
            Some(r) => r.series.0.get_or_init(|| self.series(Some(r.name.as_str()))).clone(),
            None => self.series(None),
        }
    }

    /// The series of a repository (None: the management API and requests for no repository).
    pub fn series(&self, repository: Option<&str>) -> Arc<Series> {
        let name = repository.unwrap_or_default();
        if let Some(s) = self.series.read().unwrap_or_else(|p| p.into_inner()).get(name) {
            return s.clone();
        }
        let mut map = self.series.write().unwrap_or_else(|p| p.into_inner());
        map.entry(name.to_owned())
            .or_insert_with(|| {
                let labels = RepoLabels { repository: name.to_owned() };
                let plan = |i: usize| {
                    let (plan, source) = (PLAN_KINDS[i % PLAN_KINDS.len()], if i < PLAN_KINDS.len() { "plugin" } else { "reused" });
                    self.plans.get_or_create_owned(&PlanLabels { repository: name.to_owned(), plan, source })
                };
                Arc::new(Series {
                    name: name.into(),
                    response_bytes: self.response_bytes.get_or_create_owned(&labels),
                    seconds: self.request_seconds.get_or_create_owned(&labels),
                    plans: std::array::from_fn(plan),
                    store_served: self.store_served.get_or_create_owned(&labels),
                    store_served_bytes: self.store_served_bytes.get_or_create_owned(&labels),
                    common: Default::default(),
                })
            })
            .clone()
    }

    /// One answered request.
    pub fn request(&self, series: &Series, method: &http::Method, status: u16, body_bytes: Option<u64>, elapsed: Duration) {
        series.response(body_bytes, elapsed);
        let labels = || RequestLabels { repository: series.name.clone(), method: method_label(method), status };
        match common_slot(method, status).and_then(|i| series.common.get(i)) {
            Some(slot) => slot.get_or_init(|| self.requests.get_or_create_owned(&labels())).inc(),
            None => self.requests.get_or_create(&labels()).inc(),
        };
    }

    pub fn upstream_response(&self, repository: &str, method: &http::Method, status: u16) {
        let labels = RequestLabels { repository: repository.into(), method: method_label(method), status };
        self.upstream_requests.get_or_create(&labels).inc();
    }

    pub fn upstream_error(&self, repository: &str) {
        self.upstream_errors.get_or_create(&RepoLabels { repository: repository.to_owned() }).inc();
    }

    /// A fetch-blob plan `started` an upstream fill, `joined` one in flight, or found the blob `stored`.
    pub fn blob_fetch(&self, repository: &str, result: &'static str) {
        self.fetches.get_or_create(&FetchLabels { repository: repository.to_owned(), result }).inc();
    }

    pub fn fill_ended(&self, repository: &str, stored: bool) {
        let outcome = if stored { "stored" } else { "failed" };
        self.fills.get_or_create(&FillLabels { repository: repository.to_owned(), outcome }).inc();
    }

    /// A blob GET was answered with a redirect to the object store (`blob_redirect`).
    pub fn blob_redirected(&self, repository: &str) {
        self.blob_redirects.get_or_create(&RepoLabels { repository: repository.to_owned() }).inc();
    }

    /// The cache figures of one repository. Only called for configured repositories, so the
    /// series it creates stay bounded like every other.
    pub fn cache_stats(&self, repository: &str) -> CacheStats {
        let labels = RepoLabels { repository: repository.to_owned() };
        let fetches = |result| self.fetches.get_or_create(&FetchLabels { repository: repository.to_owned(), result }).get();
        CacheStats {
            served_from_store: self.store_served.get_or_create(&labels).get(),
            served_from_store_bytes: self.store_served_bytes.get_or_create(&labels).get(),
            fetched_upstream: fetches("started"),
            joined_in_flight: fetches("joined"),
            upstream_bytes: self.upstream_bytes.get_or_create(&labels).get(),
            client_bytes: self.response_bytes.get_or_create(&labels).get(),
        }
    }

    /// The counter of one plugin export's calls with one outcome, taken once when the plugin loads.
    pub fn plugin_call_counter(&self, format: &str, export: &'static str, outcome: &'static str) -> Counter<u64, AtomicU64> {
        self.plugin_calls.get_or_create_owned(&PluginLabels { format: format.to_owned(), export, outcome })
    }

    /// The counter a transfer adds its received bytes to, taken once per transfer.
    pub fn upstream_bytes_of(&self, repository: &str) -> Counter<u64, AtomicU64> {
        self.upstream_bytes.get_or_create_owned(&RepoLabels { repository: repository.to_owned() })
    }

    pub fn render(&self, fills_in_flight: usize) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode_registry(&mut out, &self.registry)?;
        // A gauge read from the fill map at scrape time: the registry's collectors cannot borrow it.
        writeln!(out, "# HELP binaryrepo_upstream_fills_in_flight Upstream blob fills under way")?;
        writeln!(out, "# TYPE binaryrepo_upstream_fills_in_flight gauge")?;
        writeln!(out, "binaryrepo_upstream_fills_in_flight {fills_in_flight}")?;
        prometheus_client::encoding::text::encode_eof(&mut out)?;
        Ok(out)
    }
}

/// A counter family registered under `name`.
fn register<L>(registry: &mut Registry, name: &str, help: &str, unit: Option<Unit>) -> Counters<L>
where
    Counters<L>: Metric + Clone + Default,
{
    register_metric(registry, name, help, unit, Counters::<L>::default())
}

/// Registers `metric` and hands it back: the registry keeps a clone, which shares its values.
fn register_metric<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, unit: Option<Unit>, metric: M) -> M {
    match unit {
        Some(unit) => registry.register_with_unit(name, help, unit, metric.clone()),
        None => registry.register(name, help, metric.clone()),
    }
    metric
}

/// A bounded label for a request method: anything unusual is "other".
pub fn method_label(method: &http::Method) -> &'static str {
    use http::Method as M;
    match *method {
        M::GET => "GET",
        M::HEAD => "HEAD",
        M::PUT => "PUT",
        M::POST => "POST",
        M::PATCH => "PATCH",
        M::DELETE => "DELETE",
        M::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The process metrics every Prometheus client exports (`process_*`), read from /proc at
/// scrape time.
#[derive(Debug)]
struct Process {
    start: f64,
}

impl Process {
    fn new() -> Process {
        Process { start: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()) }
    }
}

/// CPU seconds, resident bytes and threads from /proc/self/stat (fields 14, 15, 20 and 24).
fn proc_stat() -> Option<(f64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; the fields after it start past its ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split(' ').collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    // SAFETY: sysconf only reads a system constant.
    let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    let cpu = (field(14)? + field(15)?) as f64 / ticks.max(1) as f64;
    Some((cpu, field(24)? * page.max(1) as u64, field(20)?))
}

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let start = ConstGauge::new(self.start);
        start.encode(encoder.encode_descriptor(
            "process_start_time",
            "Start time of the process since the unix epoch",
            Some(&Unit::Seconds),
            start.metric_type(),
        )?)?;
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            let open = ConstGauge::new(fds.count() as i64);
            open.encode(encoder.encode_descriptor("process_open_fds", "Open file descriptors", None, open.metric_type())?)?;
        }
        let Some((cpu, resident, threads)) = proc_stat() else { return Ok(()) };
        let cpu = ConstCounter::new(cpu);
        cpu.encode(encoder.encode_descriptor("process_cpu", "User and system CPU time spent", Some(&Unit::Seconds), cpu.metric_type())?)?;
        let resident = ConstGauge::new(resident as i64);
        resident.encode(encoder.encode_descriptor(
            "process_resident_memory",
            "Resident memory size",
            Some(&Unit::Bytes),
            resident.metric_type(),
        )?)?;
        let threads = ConstGauge::new(threads as i64);
        threads.encode(encoder.encode_descriptor("process_threads", "OS threads", None, threads.metric_type())?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repository_keeps_its_own_series_and_a_copy_finds_it_again() {
        let m = Metrics::new();
        let input = crate::repos::RepositoryInput {
            name: Some("r".into()),
            repo_type: Some("local".into()),
            format: Some("docker".into()),
            ..Default::default()
        };
        let repo = input.validate(None, &["docker".to_string()]).unwrap_or_else(|e| panic!("{e}"));
        let first = m.series_of(Some(&repo));
        assert!(Arc::ptr_eq(&first, &m.series_of(Some(&repo))));
        assert!(Arc::ptr_eq(&first, &m.series(Some("r"))));
        let copy = repo.clone();
        assert!(copy.series.0.get().is_none(), "a copy starts without a series");
        assert!(Arc::ptr_eq(&first, &m.series_of(Some(&copy))));
        assert!(Arc::ptr_eq(&m.series_of(None), &m.series(None)));
    }

    #[test]
    fn exposition_names_every_family_with_its_labels() {
        let m = Metrics::new();
        m.request(&m.series(Some("docker-remote")), &http::Method::GET, 200, Some(754), Duration::from_micros(300));
        m.request(&m.series(None), &http::Method::from_bytes(b"BREW").expect("method"), 405, Some(0), Duration::from_micros(30));
        m.series(Some("docker-remote")).plan(&Plan::ReadBody(0), false);
        m.series(Some("docker-remote")).plan(&Plan::ReadBody(0), true);
        m.upstream_response("docker-remote", &http::Method::HEAD, 200);
        m.upstream_bytes_of("docker-remote").inc_by(5);
        let text = m.render(2).expect("render");
        for line in [
            r#"binaryrepo_http_requests_total{repository="docker-remote",method="GET",status="200"} 1"#,
            r#"binaryrepo_http_requests_total{repository="",method="other",status="405"} 1"#,
            r#"binaryrepo_http_response_body_bytes_total{repository="docker-remote"} 754"#,
            r#"binaryrepo_http_request_duration_seconds_bucket{le="0.0005",repository="docker-remote"} 1"#,
            r#"binaryrepo_upstream_requests_total{repository="docker-remote",method="HEAD",status="200"} 1"#,
            r#"binaryrepo_upstream_body_bytes_total{repository="docker-remote"} 5"#,
            r#"binaryrepo_plans_total{repository="docker-remote",plan="read-body",source="plugin"} 1"#,
            r#"binaryrepo_plans_total{repository="docker-remote",plan="read-body",source="reused"} 1"#,
            r#"binaryrepo_plans_total{repository="docker-remote",plan="serve-blob",source="reused"} 0"#,
            "binaryrepo_upstream_fills_in_flight 2",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
        assert!(text.contains("\nprocess_cpu_seconds_total "), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        // An empty body (HEAD, 204) adds no bytes; the series is there from the first request, at zero.
        assert!(text.lines().any(|l| l == r#"binaryrepo_http_response_body_bytes_total{repository=""} 0"#), "{text}");
    }

    #[test]
    fn cache_stats_read_a_repository_s_counters() {
        let m = Metrics::new();
        m.request(&m.series(Some("r")), &http::Method::GET, 200, Some(1000), Duration::from_micros(300));
        m.upstream_bytes_of("r").inc_by(400);
        m.blob_fetch("r", "started");
        m.blob_fetch("r", "joined");
        m.blob_fetch("other", "started");
        m.series(Some("r")).served_from_store(600);
        let s = m.cache_stats("r");
        assert_eq!((s.fetched_upstream, s.joined_in_flight, s.served_from_store, s.served_from_store_bytes), (1, 1, 1, 600));
        assert_eq!((s.client_bytes, s.upstream_bytes, s.bytes_saved()), (1000, 400, 600));
        // more fetched than served (a client hung up) saves nothing rather than underflowing
        m.upstream_bytes_of("r").inc_by(5000);
        assert_eq!(m.cache_stats("r").bytes_saved(), 0);
        assert!(m.render(0).expect("render").contains(r#"binaryrepo_store_served_blob_bytes_total{repository="r"} 600"#));
    }

    #[test]
    fn proc_stat_reads_this_process() {
        let (cpu, resident, threads) = proc_stat().expect("/proc/self/stat");
        assert!(cpu >= 0.0 && resident > 1 << 20 && threads >= 1, "{cpu} {resident} {threads}");
    }
}
