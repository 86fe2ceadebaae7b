//! Reads answered from the request as it arrived: the front index of kept plans.
//!
//! A warm read that a kept plan answers (`plugins::reuse`) still resolves its repository,
//! authenticates, checks the repository's grants and builds the plan's key before it finds the
//! plan. On a core that a request finds cold (a client's requests come in bursts) that is a
//! sizeable part of its cost, for an answer that was the same the last time. The front index
//! maps the request as it arrived (listener, method, authority, `Host`, path and query) to what
//! that work found: the resolution and the kept plan.
//!
//! Only requests whose answer depends on nothing else are indexed: GET and HEAD without
//! credentials (anonymous: what they may read is the repository's grants, part of its
//! definition), not from a trusted proxy (whose `X-Forwarded-*` headers change the resolution
//! and the client's address), to a local or remote repository. An entry is served only while
//! everything it was found from holds: the repository definitions and the plugins serving
//! (generations read before the request that made it was resolved, so a change during that
//! request leaves the entry stale from birth), and the kept plan itself, checked as the plan
//! cache checks it (its expiry, the repository's metadata, blob removals, plugin swaps, the
//! headers it varies on).

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use http::{HeaderMap, Method, Uri};

use super::resolve::Resolved;
use crate::App;
use crate::plugins::reuse;

/// A key longer than this is not indexed (as for the plan cache: real targets are short).
const MAX_KEY: usize = 2048;
/// What an entry costs besides the bytes of its key and resolution.
const ENTRY_OVERHEAD: usize = 320;

/// Where the definitions stood when a request began to be resolved.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Stamp {
    repos: u64,
    plugins: u64,
}

impl Stamp {
    pub fn now(app: &App) -> Stamp {
        Stamp { repos: app.repos.generation(), plugins: app.plugins.generation() }
    }
}

/// A request the index may take, noted before it was resolved.
#[derive(Clone, Copy)]
pub struct Admit {
    main_listener: bool,
    port: u16,
    stamp: Stamp,
}

impl Admit {
    pub fn new(app: &App, main_listener: bool, port: u16) -> Admit {
        Admit { main_listener, port, stamp: Stamp::now(app) }
    }

    pub fn stamp(&self) -> Stamp {
        self.stamp
    }

    /// The request's key parts (it was admitted, so it is one the index takes).
    pub fn arrived<'a>(&self, parts: &'a http::request::Parts) -> Option<Arrived<'a>> {
        Arrived::of(self.main_listener, self.port, false, &parts.method, &parts.uri, &parts.headers)
    }
}

/// The parts of a request its index key is made of, borrowed from the request.
#[derive(PartialEq, Eq, Hash, Clone, Copy)]
pub struct Arrived<'a> {
    main_listener: bool,
    port: u16,
    head: bool,
    authority: Option<&'a str>,
    host: Option<&'a [u8]>,
    target: &'a str,
}

impl<'a> Arrived<'a> {
    /// None for a request the index does not answer: not a GET or HEAD, with credentials, or
    /// from a trusted proxy (`forwarded`).
    pub fn of(main_listener: bool, port: u16, forwarded: bool, method: &Method, uri: &'a Uri, headers: &'a HeaderMap) -> Option<Self> {
        let head = match *method {
            Method::GET => false,
            Method::HEAD => true,
            _ => return None,
        };
        if forwarded || headers.contains_key(http::header::AUTHORIZATION) {
            return None;
        }
        Some(Arrived {
            main_listener,
            port,
            head,
            authority: uri.authority().map(|a| a.as_str()),
            host: headers.get(http::header::HOST).map(|h| h.as_bytes()),
            target: uri.path_and_query().map_or("/", |p| p.as_str()),
        })
    }

    fn len(&self) -> usize {
        self.authority.map_or(0, str::len) + self.host.map_or(0, <[u8]>::len) + self.target.len()
    }

    fn owned(&self) -> Key {
        Key {
            main_listener: self.main_listener,
            port: self.port,
            head: self.head,
            authority: self.authority.map(Into::into),
            host: self.host.map(Into::into),
            target: self.target.into(),
        }
    }
}

/// A request as the index keeps it.
#[derive(PartialEq, Eq)]
pub struct Key {
    main_listener: bool,
    port: u16,
    head: bool,
    authority: Option<Box<str>>,
    host: Option<Box<[u8]>>,
    target: Box<str>,
}

impl Key {
    fn arrived(&self) -> Arrived<'_> {
        Arrived {
            main_listener: self.main_listener,
            port: self.port,
            head: self.head,
            authority: self.authority.as_deref(),
            host: self.host.as_deref(),
            target: &self.target,
        }
    }
}

// Hashed as its borrowed form, so that a look-up needs no owned key.
impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.arrived().hash(state)
    }
}

impl quick_cache::Equivalent<Key> for Arrived<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        *self == key.arrived()
    }
}

/// What the request's resolution found, and the plan that answered it.
pub struct Entry {
    pub resolved: Resolved,
    pub kept: Arc<reuse::Kept>,
    /// The plan's key in the plan cache, to forget it when it fails.
    pub plan: reuse::Key,
    stamp: Stamp,
}

impl Entry {
    /// The repository the entry's request resolved to (always one: see `Front::insert`).
    pub fn repo(&self) -> Option<&Arc<crate::repos::Repository>> {
        self.resolved.repo.as_ref()
    }
}

#[derive(Clone)]
struct ByBytes;

impl quick_cache::Weighter<Key, Arc<Entry>> for ByBytes {
    fn weight(&self, key: &Key, entry: &Arc<Entry>) -> u64 {
        // The plan's own weight too: an entry keeps its plan alive after the plan cache let it go.
        let parts = key.arrived().len() + entry.resolved.path.len() + entry.resolved.base_url.len() + entry.plan.size();
        (parts + ENTRY_OVERHEAD) as u64 + entry.kept.weight()
    }
}

/// The index, bounded by weight (its plans' included) like the plan cache (S3-FIFO: a flood of
/// one-off requests cycles through the probationary queue without evicting the entries in use).
pub struct Front {
    entries: quick_cache::sync::Cache<Key, Arc<Entry>, ByBytes>,
}

impl Front {
    pub fn new(bytes: u64) -> Front {
        let estimated_items = (bytes / 1024).clamp(16, 1 << 20) as usize;
        Front { entries: quick_cache::sync::Cache::with_weighter(estimated_items, bytes.max(1), ByBytes) }
    }

    /// The entry for this request, while the definitions it was found from have not changed
    /// and its plan answers these headers. The plan's own validity is checked by the caller,
    /// once it has entered the blob store's touches (`PlanCache::holds`). `now`: the definitions'
    /// stamp as the request finds them.
    pub fn find(&self, now: Stamp, arrived: &Arrived<'_>, headers: &HeaderMap) -> Option<Arc<Entry>> {
        let entry = self.entries.get(arrived)?;
        if entry.stamp != now {
            // The definitions moved on: every entry made before is stale. Dropped at once rather
            // than one by one as they are asked for, so that a replaced plugin's code and old
            // repository definitions are not kept alive by entries nobody asks for again.
            self.entries.clear();
            return None;
        }
        entry.kept.answers(headers).then_some(entry)
    }

    /// Indexes a request that a kept plan answered. `stamp`: taken before it was resolved.
    pub fn insert(&self, arrived: &Arrived<'_>, stamp: Stamp, resolved: &Resolved, kept: Arc<reuse::Kept>, plan: reuse::Key) {
        if arrived.len() > MAX_KEY || resolved.repo.is_none() {
            return;
        }
        let entry = Entry { resolved: resolved.clone(), kept, plan, stamp };
        self.entries.insert(arrived.owned(), Arc::new(entry));
    }

    pub fn forget(&self, arrived: &Arrived<'_>) {
        self.entries.remove(arrived);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, target: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().method(method).uri(target);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap_or_else(|e| panic!("{e}")).into_parts().0
    }

    fn arrived(p: &http::request::Parts) -> Option<Arrived<'_>> {
        Arrived::of(true, 8080, false, &p.method, &p.uri, &p.headers)
    }

    #[test]
    fn only_anonymous_reads_not_from_a_trusted_proxy_are_indexed() {
        let get = request("GET", "/go/r/m/@v/list", &[("host", "h")]);
        assert!(arrived(&get).is_some());
        assert!(arrived(&request("HEAD", "/go/r/m/@v/list", &[])).is_some());
        for method in ["PUT", "POST", "DELETE", "PATCH", "OPTIONS"] {
            assert!(arrived(&request(method, "/go/r/m/@v/list", &[])).is_none(), "{method}");
        }
        for auth in ["Basic YTpi", "Bearer x", ""] {
            assert!(arrived(&request("GET", "/go/r/m/@v/list", &[("authorization", auth)])).is_none(), "{auth:?}");
        }
        assert!(Arrived::of(true, 8080, true, &get.method, &get.uri, &get.headers).is_none(), "from a trusted proxy");
    }

    #[test]
    fn a_request_is_found_by_every_part_of_its_key_and_only_so() {
        let index: quick_cache::sync::Cache<Key, u32> = quick_cache::sync::Cache::new(64);
        let base = request("GET", "/go/r/m/@v/v1.0.0.info?x=1", &[("host", "a.test:80")]);
        let Some(first) = arrived(&base) else { panic!("not indexed") };
        index.insert(first.owned(), 1);
        assert_eq!(index.get(&first), Some(1));
        let again = request("GET", "/go/r/m/@v/v1.0.0.info?x=1", &[("host", "a.test:80"), ("accept", "*/*")]);
        assert_eq!(arrived(&again).and_then(|a| index.get(&a)), Some(1), "headers outside the key do not count");
        let others = [
            request("HEAD", "/go/r/m/@v/v1.0.0.info?x=1", &[("host", "a.test:80")]),
            request("GET", "/go/r/m/@v/v1.0.0.info?x=2", &[("host", "a.test:80")]),
            request("GET", "/go/r/m/@v/v1.0.0.info", &[("host", "a.test:80")]),
            request("GET", "/go/r/m/@v/v1.0.0.info?x=1", &[("host", "b.test:80")]),
            request("GET", "/go/r/m/@v/v1.0.0.info?x=1", &[]),
            request("GET", "http://a.test:80/go/r/m/@v/v1.0.0.info?x=1", &[("host", "a.test:80")]),
        ];
        for p in &others {
            let Some(a) = arrived(p) else { panic!("not indexed") };
            assert_eq!(index.get(&a), None, "{} {} {:?}", p.method, p.uri, p.headers.get("host"));
        }
        for (main_listener, port) in [(false, 8080), (true, 8081)] {
            let a = Arrived::of(main_listener, port, false, &base.method, &base.uri, &base.headers);
            assert_eq!(a.and_then(|a| index.get(&a)), None, "another listener");
        }
    }
}
