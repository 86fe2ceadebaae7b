//! Plans a plugin offered for reuse (`reusable` in the contract, 0.2.1): the same request gets
//! the same plan again without a plugin call, the way an HTTP cache reuses a response its
//! origin marked fresh, with `Vary`.
//!
//! A warm manifest GET by tag inside its check window is decided from two metadata reads; the
//! plugin call that makes the decision is most of that request's cost (~60% of its instructions:
//! lowering the request into the guest, the guest's allocations, three host calls). The plugin
//! says how long its answer holds; the host adds what it alone can see: a plan is forgotten
//! when the repository's metadata is written, when the repository is reconfigured (its
//! `Repository` is replaced), or when blobs are removed, and it is only taken from a call that
//! read nothing but this repository's metadata and the blob store.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::bindings::types::{Mount, Plan};
use crate::digest::Digest;
use crate::repos::Repository;
use crate::storage::meta::Generation;

/// A key longer than this is not kept: real requests' keys (method, repository, base URL, path,
/// query) are a few hundred bytes, and a long one is most likely made up to fill the cache.
const MAX_KEY: usize = 2048;
/// What an entry costs besides its parts' bytes (the map slot, the `Arc`, the snapshot).
const ENTRY_OVERHEAD: usize = 256;
/// However long a plugin offers.
const MAX_REUSE: Duration = Duration::from_secs(3600);

/// What a plugin offered during a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub seconds: u64,
    pub vary: Vec<HeaderName>,
}

/// Parses the contract's arguments; None when a header name is not one (the offer is void).
pub fn offer(seconds: u64, vary: &[String]) -> Option<Offer> {
    let vary = vary.iter().map(|v| HeaderName::from_bytes(v.as_bytes()).ok()).collect::<Option<Vec<_>>>()?;
    (seconds > 0).then_some(Offer { seconds, vary })
}

/// Which request a plan answers, apart from the headers it varies on.
#[derive(Clone)]
pub struct Key(String);

impl Key {
    /// Its bytes.
    pub fn size(&self) -> usize {
        self.0.len()
    }

    /// Only reads are ever reused; None for anything else.
    // Every part of the request a plan may depend on, named one by one so none is left out.
    #[allow(clippy::too_many_arguments)]
    pub fn of(
        method: &http::Method,
        path: &str,
        query: Option<&str>,
        repo: Option<&str>,
        base_url: &str,
        path_repo: Option<&str>,
        mount: Mount,
        caller: Option<&str>,
    ) -> Option<Key> {
        let method = match *method {
            http::Method::GET => "G",
            http::Method::HEAD => "H",
            _ => return None,
        };
        let mount = match mount {
            Mount::Port => "p",
            Mount::Host => "h",
            Mount::Prefix => "x",
            Mount::Path => "a",
            Mount::Root => "r",
        };
        // NUL cannot occur in a path, a header value or a repository name: the parts cannot run
        // into each other. `concat`, not `format!`: this runs for every read.
        let query = query.map_or("\u{1}", |q| q);
        let key = [
            method,
            mount,
            "\0",
            repo.unwrap_or(""),
            "\0",
            path_repo.unwrap_or(""),
            "\0",
            base_url,
            "\0",
            path,
            "\0",
            query,
            "\0",
            caller.unwrap_or(""),
        ]
        .concat();
        Some(Key(key))
    }
}

/// What a plan was decided from, noted before the plugin call: if any of it moves during the
/// call, the plan is stale from birth and never served.
pub struct Snapshot {
    repo: Option<Arc<Repository>>,
    generation: Generation,
    seen: u64,
    removals: u64,
    /// `PlanCache::epoch` when the call began: a plan decided by a plugin that was replaced
    /// meanwhile is never kept.
    epoch: u64,
}

impl Snapshot {
    pub fn take(repo: Option<Arc<Repository>>, generation: Generation, removals: u64) -> Snapshot {
        let seen = generation.load(Ordering::Acquire);
        Snapshot { repo, generation, seen, removals, epoch: 0 }
    }

    /// Notes the plan cache's epoch (see `PlanCache::clear`).
    pub fn during(mut self, epoch: u64) -> Snapshot {
        self.epoch = epoch;
        self
    }

    /// No write to the repository's metadata since the snapshot.
    fn metadata_unchanged(&self) -> bool {
        self.generation.load(Ordering::Acquire) == self.seen
    }

    fn current(&self, repo: Option<&Arc<Repository>>, removals: u64) -> bool {
        let same_repo = match (&self.repo, repo) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        same_repo && removals == self.removals && self.metadata_unchanged()
    }
}

/// A kept plan in the form the server carries it out: its status, digest and headers checked
/// and parsed once, when it was kept, instead of on every request that reuses it.
#[derive(Debug)]
pub enum Ready {
    Respond { status: StatusCode, headers: Headers, body: Bytes },
    ServeBlob { digest: Digest, headers: Headers },
}

/// A plugin's response headers, parsed.
pub type Headers = Vec<(HeaderName, HeaderValue)>;

/// Parses a plugin's response headers; the error names the one that is not HTTP.
pub fn parse_headers(headers: &[(String, String)]) -> Result<Headers, String> {
    headers.iter().map(|(k, v)| parse_header(k, Bytes::copy_from_slice(v.as_bytes()))).collect()
}

/// One of a plugin's response headers, parsed (`value` taken as it is, without a copy).
pub fn parse_header(name: &str, value: Bytes) -> Result<(HeaderName, HeaderValue), String> {
    let parsed = HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("invalid header name {name:?}"))?;
    let value = HeaderValue::from_maybe_shared(value).map_err(|_| format!("invalid value for header {name}"))?;
    Ok((parsed, value))
}

/// A response's status as a plugin may give it: a final one. 1xx would leave the client waiting
/// or be replaced by hyper, and `StatusCode` takes anything up to 999.
pub fn final_status(status: u16) -> Result<StatusCode, String> {
    match StatusCode::from_u16(status) {
        Ok(s) if (200..=599).contains(&status) => Ok(s),
        _ => Err(format!("status {status} is not a final HTTP status")),
    }
}

impl Ready {
    /// None for a plan that is not kept (it fetches or reads a body) or that does not parse (its
    /// request gets the plugin's fault from the plan as given, and the next call decides again).
    fn of(plan: &Plan) -> Option<Ready> {
        match plan {
            Plan::Respond(r) => Some(Ready::Respond {
                status: final_status(r.status).ok()?,
                headers: parse_headers(&r.headers).ok()?,
                body: Bytes::copy_from_slice(&r.body),
            }),
            Plan::ServeBlob(b) => Some(Ready::ServeBlob { digest: b.digest.parse().ok()?, headers: parse_headers(&b.headers).ok()? }),
            _ => None,
        }
    }
}

struct Entry {
    ready: Arc<Ready>,
    decided: Snapshot,
    expires: Instant,
    /// the headers the plan varies on, with the values the deciding request had
    vary: Vec<(HeaderName, Vec<HeaderValue>)>,
}

impl Entry {
    fn fits(&self, headers: &HeaderMap) -> bool {
        self.vary.iter().all(|(name, values)| headers.get_all(name).iter().eq(values.iter()))
    }

    fn valid(&self, now: Instant, repo: Option<&Arc<Repository>>, removals: u64) -> bool {
        now < self.expires && self.decided.current(repo, removals)
    }
}

/// A kept plan and what it weighs against `plan_cache_mib`.
pub struct Kept {
    entry: Entry,
    weight: u64,
}

impl Kept {
    pub fn ready(&self) -> &Arc<Ready> {
        &self.entry.ready
    }

    /// Whether it answers a request with these headers (the ones it varies on match).
    pub fn answers(&self, headers: &HeaderMap) -> bool {
        self.entry.fits(headers)
    }

    /// Bytes it holds besides its key.
    pub fn weight(&self) -> u64 {
        self.weight
    }
}

/// Weighs an entry by the bytes it holds, so the cache is bounded in memory however large the
/// plans (a `respond` plan carries its body).
#[derive(Clone)]
struct ByBytes;

impl quick_cache::Weighter<String, Arc<Kept>> for ByBytes {
    fn weight(&self, key: &String, kept: &Arc<Kept>) -> u64 {
        key.len() as u64 + kept.weight
    }
}

/// Bytes an entry holds besides its key (approximate: lengths plus a fixed overhead per part).
fn weigh(plan: &Plan, vary: &[(HeaderName, Vec<HeaderValue>)]) -> u64 {
    let headers = |h: &[(String, String)]| h.iter().map(|(k, v)| k.len() + v.len() + 48).sum::<usize>();
    let plan = match plan {
        Plan::Respond(r) => r.body.len() + headers(&r.headers),
        Plan::ServeBlob(b) => b.digest.len() + headers(&b.headers),
        _ => 0,
    };
    let vary: usize = vary.iter().map(|(n, vs)| n.as_str().len() + vs.iter().map(|v| v.len() + 32).sum::<usize>()).sum();
    (ENTRY_OVERHEAD + plan + vary) as u64
}

/// The plans offered for reuse, bounded by weight (`plan_cache_mib`).
///
/// A client chooses much of a key (the query, the `Host` header, the path), so it could fill the
/// cache with keys nobody asks for twice. The cache is S3-FIFO (quick_cache): a new entry waits in
/// a small probationary queue and only one that is asked for again while there moves to the main
/// queue, so a flood of one-off keys cycles through the small queue and never evicts the plans in
/// use; keys longer than `MAX_KEY` (a long query, an odd `Host`) are not kept at all.
pub struct PlanCache {
    entries: quick_cache::sync::Cache<String, Arc<Kept>, ByBytes>,
    /// Moves on at every `clear`; an entry decided in an earlier epoch is not served.
    epoch: std::sync::atomic::AtomicU64,
}

impl PlanCache {
    /// A cache holding up to `bytes` of plans and keys.
    pub fn new(bytes: u64) -> PlanCache {
        let estimated_items = (bytes / 1024).clamp(16, 1 << 20) as usize;
        PlanCache { entries: quick_cache::sync::Cache::with_weighter(estimated_items, bytes.max(1), ByBytes), epoch: Default::default() }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Forgets every plan: a plugin was replaced or removed, and its plans were its decisions.
    /// A call still running on the old plugin took the old epoch, so its plan is not kept either.
    pub fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.entries.clear();
    }

    /// A plan that answers this request, if one is kept and still holds.
    pub fn lookup(&self, key: &Key, repo: Option<&Arc<Repository>>, headers: &HeaderMap, removals: u64) -> Option<Arc<Kept>> {
        let kept = self.entries.get(key.0.as_str())?;
        if !self.holds(&kept, repo, removals) {
            self.entries.remove(key.0.as_str());
            return None;
        }
        kept.answers(headers).then_some(kept)
    }

    /// Whether a plan found earlier still holds for `repo` (the one the request resolved), as
    /// `lookup` would find it now; the caller checks the headers it varies on (`Kept::answers`).
    pub fn holds(&self, kept: &Kept, repo: Option<&Arc<Repository>>, removals: u64) -> bool {
        kept.entry.decided.epoch == self.epoch() && kept.entry.valid(Instant::now(), repo, removals)
    }

    /// Keeps `plan` for the request it answered, when the plugin offered it and the plan can be
    /// reused (a response or a stored blob; never a fetch or anything that reads a body).
    pub fn insert(&self, key: Key, decided: Snapshot, offer: Offer, plan: &Plan, headers: &HeaderMap) {
        if key.0.len() > MAX_KEY || decided.epoch != self.epoch() {
            return;
        }
        let Some(ready) = Ready::of(plan) else {
            return;
        };
        let now = Instant::now();
        let vary: Vec<_> = offer
            .vary
            .into_iter()
            .map(|name| {
                let values = headers.get_all(&name).iter().cloned().collect();
                (name, values)
            })
            .collect();
        let weight = weigh(plan, &vary);
        let entry = Entry { ready: Arc::new(ready), decided, expires: now + Duration::from_secs(offer.seconds).min(MAX_REUSE), vary };
        self.entries.insert(key.0, Arc::new(Kept { entry, weight }));
    }

    /// After a reused plan failed (its blob went missing, say): the plugin decides afresh.
    pub fn forget(&self, key: &Key) {
        self.entries.remove(key.0.as_str());
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    fn weight(&self) -> u64 {
        self.entries.weight()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::bindings::types::{Response, ServeBlob};

    fn local() -> Repository {
        let input = crate::repos::RepositoryInput {
            name: Some("r".into()),
            repo_type: Some("local".into()),
            format: Some("docker".into()),
            ..Default::default()
        };
        input.validate(None, &["docker".to_string()]).unwrap_or_else(|e| panic!("{e}"))
    }

    fn key(path: &str) -> Key {
        Key::of(&http::Method::GET, path, None, Some("r"), "http://h", None, Mount::Path, None).unwrap_or_else(|| unreachable!())
    }

    fn plan(body: &str) -> Plan {
        Plan::Respond(Response { status: 200, headers: vec![], body: body.as_bytes().to_vec() })
    }

    fn body(p: Option<Arc<Kept>>) -> Option<String> {
        match p.as_deref().map(|k| &**k.ready()) {
            Some(Ready::Respond { body, .. }) => Some(String::from_utf8_lossy(body).into_owned()),
            _ => None,
        }
    }

    #[test]
    fn a_plugin_swap_forgets_plans_and_refuses_those_decided_before_it() {
        let cache = PlanCache::new(1 << 20);
        let generation = Generation::default();
        let repo = Arc::new(local());
        let h = HeaderMap::new();
        let offer = || Offer { seconds: 60, vary: vec![] };
        let snap = Snapshot::take(Some(repo.clone()), generation.clone(), 0).during(cache.epoch());
        cache.insert(key("/a"), snap, offer(), &plan("old"), &h);
        // a call on the old plugin began before the swap and ends after it
        let late = Snapshot::take(Some(repo.clone()), generation.clone(), 0).during(cache.epoch());
        cache.clear();
        assert!(cache.lookup(&key("/a"), Some(&repo), &h, 0).is_none());
        cache.insert(key("/a"), late, offer(), &plan("old, late"), &h);
        assert!(cache.lookup(&key("/a"), Some(&repo), &h, 0).is_none(), "decided by the replaced plugin");
        let fresh = Snapshot::take(Some(repo.clone()), generation.clone(), 0).during(cache.epoch());
        cache.insert(key("/a"), fresh, offer(), &plan("new"), &h);
        assert_eq!(body(cache.lookup(&key("/a"), Some(&repo), &h, 0)).as_deref(), Some("new"));
    }

    #[test]
    fn reused_until_metadata_changes() {
        let cache = PlanCache::new(1 << 20);
        let generation = Generation::default();
        let repo = Arc::new(local());
        let h = HeaderMap::new();
        let snap = Snapshot::take(Some(repo.clone()), generation.clone(), 0);
        cache.insert(key("/a"), snap, Offer { seconds: 60, vary: vec![] }, &plan("one"), &h);
        assert_eq!(body(cache.lookup(&key("/a"), Some(&repo), &h, 0)).as_deref(), Some("one"));
        assert!(cache.lookup(&key("/b"), Some(&repo), &h, 0).is_none());
        // a HEAD is another request
        let head =
            Key::of(&http::Method::HEAD, "/a", None, Some("r"), "http://h", None, Mount::Path, None).unwrap_or_else(|| unreachable!());
        assert!(cache.lookup(&head, Some(&repo), &h, 0).is_none());
        // blobs removed
        assert!(cache.lookup(&key("/a"), Some(&repo), &h, 1).is_none());
        let snap = Snapshot::take(Some(repo.clone()), generation.clone(), 0);
        cache.insert(key("/a"), snap, Offer { seconds: 60, vary: vec![] }, &plan("one"), &h);
        generation.fetch_add(1, Ordering::Release);
        assert!(cache.lookup(&key("/a"), Some(&repo), &h, 0).is_none());
        assert_eq!(cache.len(), 0, "a stale plan is dropped when found");
    }

    #[test]
    fn a_write_during_the_call_makes_the_plan_stale_from_birth() {
        let cache = PlanCache::new(1 << 20);
        let generation = Generation::default();
        let repo = Arc::new(local());
        let h = HeaderMap::new();
        let snap = Snapshot::take(Some(repo.clone()), generation.clone(), 0);
        generation.fetch_add(1, Ordering::Release);
        cache.insert(key("/a"), snap, Offer { seconds: 60, vary: vec![] }, &plan("old"), &h);
        assert!(cache.lookup(&key("/a"), Some(&repo), &h, 0).is_none());
    }

    #[test]
    fn a_reconfigured_repository_is_another_repository() {
        let cache = PlanCache::new(1 << 20);
        let repo = Arc::new(local());
        let h = HeaderMap::new();
        let snap = Snapshot::take(Some(repo.clone()), Generation::default(), 0);
        cache.insert(key("/a"), snap, Offer { seconds: 60, vary: vec![] }, &plan("one"), &h);
        let changed = Arc::new(local());
        assert!(cache.lookup(&key("/a"), Some(&changed), &h, 0).is_none());
    }

    #[test]
    fn vary_headers_must_match_and_only_some_plans_are_kept() {
        let cache = PlanCache::new(1 << 20);
        let repo = Arc::new(local());
        let mut h = HeaderMap::new();
        h.append("accept", HeaderValue::from_static("a/b"));
        h.append("accept", HeaderValue::from_static("c/d"));
        let offer = offer(60, &["Accept".to_owned()]).unwrap_or_else(|| unreachable!());
        let snap = || Snapshot::take(Some(repo.clone()), Generation::default(), 0);
        cache.insert(key("/a"), snap(), offer.clone(), &plan("one"), &h);
        assert!(cache.lookup(&key("/a"), Some(&repo), &h, 0).is_some());
        let mut other = HeaderMap::new();
        other.append("accept", HeaderValue::from_static("a/b"));
        assert!(cache.lookup(&key("/a"), Some(&repo), &other, 0).is_none());
        assert!(cache.lookup(&key("/a"), Some(&repo), &HeaderMap::new(), 0).is_none());

        cache.insert(key("/f"), snap(), offer.clone(), &Plan::ReadBody(10), &h);
        assert!(cache.lookup(&key("/f"), Some(&repo), &h, 0).is_none());
        // A plan that would not parse is not kept: its request gets the plugin's fault, and the
        // next one asks the plugin again.
        let blob = |digest: &str, header: (&str, &str)| {
            Plan::ServeBlob(ServeBlob { digest: digest.into(), headers: vec![(header.0.into(), header.1.into())] })
        };
        let good = format!("sha256:{}", "a".repeat(64));
        for (i, bad) in [
            Plan::Respond(Response { status: 101, headers: vec![], body: vec![] }),
            Plan::Respond(Response { status: 200, headers: vec![("bad name".into(), "v".into())], body: vec![] }),
            blob("sha256:short", ("content-type", "a/b")),
            blob(&good, ("content-type", "line\nbreak")),
        ]
        .iter()
        .enumerate()
        {
            cache.insert(key(&format!("/bad{i}")), snap(), offer.clone(), bad, &h);
            assert!(cache.lookup(&key(&format!("/bad{i}")), Some(&repo), &h, 0).is_none(), "{bad:?}");
        }
        cache.insert(key("/blob"), snap(), offer.clone(), &blob(&good, ("content-type", "a/b")), &h);
        match cache.lookup(&key("/blob"), Some(&repo), &h, 0).as_deref().map(|k| &**k.ready()) {
            Some(Ready::ServeBlob { digest, headers }) => {
                assert_eq!(digest.to_string(), good);
                assert_eq!(headers, &vec![(http::header::CONTENT_TYPE, HeaderValue::from_static("a/b"))]);
            }
            other => panic!("{other:?}"),
        }
        assert!(super::offer(60, &["bad name".to_owned()]).is_none());
        assert!(super::offer(0, &[]).is_none());
        assert!(Key::of(&http::Method::PUT, "/a", None, None, "", None, Mount::Root, None).is_none());
    }

    #[test]
    fn expires_and_stays_bounded() {
        let cache = PlanCache::new(1 << 20);
        let repo = Arc::new(local());
        let h = HeaderMap::new();
        let snap = || Snapshot::take(Some(repo.clone()), Generation::default(), 0);
        let big = "x".repeat(64 * 1024);
        for i in 0..100 {
            cache.insert(key(&format!("/{i}")), snap(), Offer { seconds: 60, vary: vec![] }, &plan(&big), &h);
        }
        assert!(cache.weight() <= 1 << 20, "{} bytes kept", cache.weight());
        assert!(cache.len() < 20, "{} plans of 64 KiB in 1 MiB", cache.len());
        let ready = Arc::new(Ready::of(&plan("x")).unwrap_or_else(|| unreachable!()));
        let mut e = Entry { ready, decided: snap(), expires: Instant::now(), vary: vec![] };
        assert!(!e.valid(Instant::now(), Some(&repo), 0));
        e.expires = Instant::now() + Duration::from_secs(5);
        assert!(e.valid(Instant::now(), Some(&repo), 0));
    }

    #[test]
    fn a_flood_of_one_off_keys_does_not_evict_a_plan_in_use() {
        let cache = PlanCache::new(256 * 1024);
        let repo = Arc::new(local());
        let h = HeaderMap::new();
        let snap = || Snapshot::take(Some(repo.clone()), Generation::default(), 0);
        let offer = || Offer { seconds: 60, vary: vec![] };
        cache.insert(key("/hot"), snap(), offer(), &plan("hot"), &h);
        for i in 0..50_000 {
            let q = format!("x={i}");
            let k = Key::of(&http::Method::GET, "/hot", Some(&q), Some("r"), "http://h", None, Mount::Path, None);
            cache.insert(k.unwrap_or_else(|| unreachable!()), snap(), offer(), &plan("one-off"), &h);
            if i % 100 == 0 {
                assert!(cache.lookup(&key("/hot"), Some(&repo), &h, 0).is_some(), "the hot plan was evicted after {i} one-off keys");
            }
        }
        assert!(cache.weight() <= 256 * 1024);
        // a key longer than MAX_KEY is never kept
        let long = "q".repeat(MAX_KEY);
        let k = || Key::of(&http::Method::GET, "/hot", Some(&long), Some("r"), "http://h", None, Mount::Path, None);
        cache.insert(k().unwrap_or_else(|| unreachable!()), snap(), offer(), &plan("long"), &h);
        assert!(cache.lookup(&k().unwrap_or_else(|| unreachable!()), Some(&repo), &h, 0).is_none());
    }
}
