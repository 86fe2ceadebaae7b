//! Reads answered from the request as it arrived: the front index of kept plans.
//!
//! A warm read that a kept plan answers (`plugins::reuse`) still resolves its repository,
//! authenticates, checks the repository's grants and builds the plan's key before it finds the
//! plan. On a core that a request finds cold (a client's requests come in bursts) that is a
//! sizeable part of its cost, for an answer that was the same the last time. The front index
//! maps the request as it arrived (listener, method, authority, `Host`, credentials, path and
//! query) to what that work found: the resolution, the identity and the kept plan.
//!
//! Only GET and HEAD to a local or remote repository are indexed, and not from a trusted proxy
//! (whose `X-Forwarded-*` headers change the resolution and the client's address). An entry is
//! served only while everything it was found from holds: the repository definitions (grants
//! included), the plugins serving, and the users and API tokens (generations read before the
//! request that made it was resolved, so a change during that request leaves the entry stale
//! from birth); for a request with credentials, no longer than `Auth::trusted_until` (the
//! credential cache's time, and the token's expiry); and the kept plan itself, checked as the
//! plan cache checks it (its expiry, the repository's metadata, blob removals, plugin swaps,
//! the headers it varies on).
//!
//! Credentials are part of the key as an HMAC under a key of this process (as in the
//! credential cache): the index holds no password or token, and only the exact header that
//! authenticated finds the entry; anything else is checked in full.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use http::{HeaderMap, Method, Uri};
use ring::hmac;

use super::resolve::Resolved;
use crate::App;
use crate::auth::Identity;
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
    auth: u64,
}

impl Stamp {
    pub fn now(app: &App) -> Stamp {
        Stamp { repos: app.repos.generation(), plugins: app.plugins.generation(), auth: app.auth.epoch() }
    }
}

/// The `Authorization` header a request brought, as the index keys it.
#[derive(PartialEq, Eq, Hash, Clone, Copy)]
pub struct Credential([u8; 32]);

/// A request the index may take, noted before it was resolved.
#[derive(Clone, Copy)]
pub struct Admit {
    main_listener: bool,
    port: u16,
    credential: Option<Credential>,
    stamp: Stamp,
}

impl Admit {
    /// `stamp`: read before the request is resolved.
    pub fn new(stamp: Stamp, arrived: &Arrived<'_>) -> Admit {
        Admit { main_listener: arrived.main_listener, port: arrived.port, credential: arrived.credential, stamp }
    }

    pub fn stamp(&self) -> Stamp {
        self.stamp
    }

    /// The request's key parts (it was admitted, so it is one the index takes).
    pub fn arrived<'a>(&self, parts: &'a http::request::Parts) -> Option<Arrived<'a>> {
        Arrived::of(self.main_listener, self.port, self.credential, &parts.method, &parts.uri, &parts.headers)
    }
}

/// The parts of a request its index key is made of, borrowed from the request.
#[derive(PartialEq, Eq, Hash, Clone, Copy)]
pub struct Arrived<'a> {
    main_listener: bool,
    port: u16,
    head: bool,
    credential: Option<Credential>,
    authority: Option<&'a str>,
    host: Option<&'a [u8]>,
    target: &'a str,
}

impl<'a> Arrived<'a> {
    /// None for a request that is not a GET or HEAD. `credential`: its `Authorization`, keyed.
    fn of(
        main_listener: bool,
        port: u16,
        credential: Option<Credential>,
        method: &Method,
        uri: &'a Uri,
        headers: &'a HeaderMap,
    ) -> Option<Self> {
        let head = match *method {
            Method::GET => false,
            Method::HEAD => true,
            _ => return None,
        };
        Some(Arrived {
            main_listener,
            port,
            head,
            credential,
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
            credential: self.credential,
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
    credential: Option<Credential>,
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
            credential: self.credential,
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

/// What the request's resolution and authentication found, and the plan that answered it.
pub struct Entry {
    pub resolved: Resolved,
    pub identity: Identity,
    /// Unix seconds after which the request's credentials are checked again (`Auth::trusted_until`).
    pub until: Option<u64>,
    pub kept: Arc<reuse::Kept>,
    /// The plan's key in the plan cache, to forget it when it fails.
    pub plan: reuse::Key,
    /// Where the definitions stood before the request was resolved (`Admit::stamp`).
    pub stamp: Stamp,
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
    /// Keys the `Authorization` header; a fresh one per process. None (no randomness to make
    /// one from): requests with credentials are not indexed.
    credentials: Option<hmac::Key>,
}

impl Front {
    pub fn new(bytes: u64) -> Front {
        let estimated_items = (bytes / 1024).clamp(16, 1 << 20) as usize;
        let credentials = hmac::Key::generate(hmac::HMAC_SHA256, &ring::rand::SystemRandom::new()).ok();
        Front { entries: quick_cache::sync::Cache::with_weighter(estimated_items, bytes.max(1), ByBytes), credentials }
    }

    /// The request's key, or None for one the index does not answer: not a GET or HEAD, or
    /// from a trusted proxy (`forwarded`).
    pub fn arrived<'a>(
        &self,
        main_listener: bool,
        port: u16,
        forwarded: bool,
        method: &Method,
        uri: &'a Uri,
        headers: &'a HeaderMap,
    ) -> Option<Arrived<'a>> {
        if forwarded || !matches!(*method, Method::GET | Method::HEAD) {
            return None;
        }
        let credential = match headers.get(http::header::AUTHORIZATION) {
            None => None,
            Some(value) => {
                let tag = hmac::sign(self.credentials.as_ref()?, value.as_bytes());
                let mut bytes = [0u8; 32];
                bytes.copy_from_slice(tag.as_ref());
                Some(Credential(bytes))
            }
        };
        Arrived::of(main_listener, port, credential, method, uri, headers)
    }

    /// The entry for this request, while the definitions it was found from have not changed
    /// and its plan answers these headers. The plan's own validity is checked by the caller,
    /// once it has entered the blob store's touches (`PlanCache::holds`). `now`: the definitions'
    /// stamp as the request finds them.
    pub fn find(&self, now: Stamp, arrived: &Arrived<'_>, headers: &HeaderMap) -> Option<Arc<Entry>> {
        let entry = self.entries.get(arrived)?;
        if entry.until.is_some_and(|until| super::now_unix() >= until) {
            self.entries.remove(arrived);
            return None;
        }
        if entry.stamp != now {
            // The definitions moved on: every entry made before is stale. Dropped at once rather
            // than one by one as they are asked for, so that a replaced plugin's code and old
            // repository definitions are not kept alive by entries nobody asks for again.
            self.entries.clear();
            return None;
        }
        entry.kept.answers(headers).then_some(entry)
    }

    /// Indexes a request that a kept plan answered. A request with credentials must have an
    /// `until`: without one they are checked every time.
    pub fn insert(&self, arrived: &Arrived<'_>, entry: Entry) {
        if arrived.len() > MAX_KEY || entry.resolved.repo.is_none() || (arrived.credential.is_some() && entry.until.is_none()) {
            return;
        }
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

    fn arrived<'a>(front: &Front, p: &'a http::request::Parts) -> Option<Arrived<'a>> {
        front.arrived(true, 8080, false, &p.method, &p.uri, &p.headers)
    }

    #[test]
    fn only_reads_not_from_a_trusted_proxy_are_indexed() {
        let front = Front::new(1 << 20);
        let get = request("GET", "/go/r/m/@v/list", &[("host", "h")]);
        assert!(arrived(&front, &get).is_some());
        assert!(arrived(&front, &request("HEAD", "/go/r/m/@v/list", &[])).is_some());
        for method in ["PUT", "POST", "DELETE", "PATCH", "OPTIONS"] {
            assert!(arrived(&front, &request(method, "/go/r/m/@v/list", &[])).is_none(), "{method}");
        }
        assert!(front.arrived(true, 8080, true, &get.method, &get.uri, &get.headers).is_none(), "from a trusted proxy");
    }

    /// Guards the credential in the key: without it, a request with someone else's credentials
    /// (or none) would be answered as the first one was.
    #[test]
    fn credentials_are_part_of_the_key_as_a_mac_not_as_sent() {
        let front = Front::new(1 << 20);
        let index: quick_cache::sync::Cache<Key, u32> = quick_cache::sync::Cache::new(64);
        let with = |auth: &str| request("GET", "/go/r/m/@v/list", &[("host", "h"), ("authorization", auth)]);
        let alice = with("Basic YWxpY2U6c2VjcmV0");
        let Some(first) = arrived(&front, &alice) else { panic!("not indexed") };
        index.insert(first.owned(), 1);
        assert_eq!(arrived(&front, &with("Basic YWxpY2U6c2VjcmV0")).and_then(|a| index.get(&a)), Some(1));
        for other in ["Basic YWxpY2U6c2VjcmV1", "Bearer YWxpY2U6c2VjcmV0", "basic YWxpY2U6c2VjcmV0", ""] {
            assert_eq!(arrived(&front, &with(other)).and_then(|a| index.get(&a)), None, "{other:?}");
        }
        let anonymous = request("GET", "/go/r/m/@v/list", &[("host", "h")]);
        assert_eq!(arrived(&front, &anonymous).and_then(|a| index.get(&a)), None, "without credentials");
        // Another process (another key) makes another MAC of the same header.
        let elsewhere = Front::new(1 << 20);
        assert_eq!(arrived(&elsewhere, &alice).and_then(|a| index.get(&a)), None, "another process's key");
        let Some(Credential(mac)) = first.credential else { panic!("no credential") };
        assert!(!mac.windows(6).any(|w| w == b"secret" || w == b"YWxpY2"), "the header is not kept");
    }

    #[test]
    fn a_request_is_found_by_every_part_of_its_key_and_only_so() {
        let front = Front::new(1 << 20);
        let index: quick_cache::sync::Cache<Key, u32> = quick_cache::sync::Cache::new(64);
        let base = request("GET", "/go/r/m/@v/v1.0.0.info?x=1", &[("host", "a.test:80")]);
        let Some(first) = arrived(&front, &base) else { panic!("not indexed") };
        index.insert(first.owned(), 1);
        assert_eq!(index.get(&first), Some(1));
        let again = request("GET", "/go/r/m/@v/v1.0.0.info?x=1", &[("host", "a.test:80"), ("accept", "*/*")]);
        assert_eq!(arrived(&front, &again).and_then(|a| index.get(&a)), Some(1), "headers outside the key do not count");
        let others = [
            request("HEAD", "/go/r/m/@v/v1.0.0.info?x=1", &[("host", "a.test:80")]),
            request("GET", "/go/r/m/@v/v1.0.0.info?x=2", &[("host", "a.test:80")]),
            request("GET", "/go/r/m/@v/v1.0.0.info", &[("host", "a.test:80")]),
            request("GET", "/go/r/m/@v/v1.0.0.info?x=1", &[("host", "b.test:80")]),
            request("GET", "/go/r/m/@v/v1.0.0.info?x=1", &[]),
            request("GET", "http://a.test:80/go/r/m/@v/v1.0.0.info?x=1", &[("host", "a.test:80")]),
        ];
        for p in &others {
            let Some(a) = arrived(&front, p) else { panic!("not indexed") };
            assert_eq!(index.get(&a), None, "{} {} {:?}", p.method, p.uri, p.headers.get("host"));
        }
        for (main_listener, port) in [(false, 8080), (true, 8081)] {
            let a = front.arrived(main_listener, port, false, &base.method, &base.uri, &base.headers);
            assert_eq!(a.and_then(|a| index.get(&a)), None, "another listener");
        }
    }
}
