//! `upstream.send` for reads, shared: concurrent identical GET or HEAD requests of one repository
//! make one upstream request (single-flight, like blob fills), and a 404 is remembered for the
//! repository's `miss_cache_seconds`, so that a storm of pulls of something the upstream lacks
//! makes one upstream request, not one each.
//!
//! "Concurrent" is judged by when the client's request arrived, not when its plugin call got to
//! the upstream request: a request that arrived while an answer was in flight could have joined
//! it, so that answer serves it too, even if it came back a moment before the request's plugin
//! call asked (calls start at different times on a busy machine). Requests that arrive after the
//! answer ask afresh (a tag revalidated every time stays so), except for the answers of the auth
//! exchange: an auth challenge (401) and a token (a 2xx from a realm the remote named) serve every
//! identical request for a few seconds. A request that arrives just after the token came back,
//! while the plugin call that asked for it has not stored it yet, would otherwise ask the token
//! service again; a token is good for a minute at least, and a challenge does not change from one
//! second to the next.
//!
//! "Identical" is the repository, the remote and credentials it is configured with, the method,
//! the URL and every header the plugin set (a bearer token among them), and whether configured
//! credentials are attached: requests that could be answered differently never share. Only
//! GET and HEAD share: they do not change the upstream, so one answer serves every asker.
//!
//! The request runs in a task of its own, so a plugin call that gives up (its deadline passed)
//! does not fail the others waiting on it; the in-flight entry is released by a guard, so a
//! request that fails or panics lets the next asker go upstream again.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use tokio::sync::watch;

use super::{SmallResponse, Upstream, UpstreamError, UpstreamRequest};
use crate::repos::Repository;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    repo: String,
    /// The remote and its credentials: a repository redefined with others shares nothing with
    /// what it was. A hash, so that no password is kept in the map.
    remote: u64,
    method: Method,
    url: String,
    headers: Vec<(String, Vec<u8>)>,
    with_credentials: bool,
}

impl Key {
    fn of(repo: &Repository, req: &UpstreamRequest) -> Key {
        let mut h = DefaultHasher::new();
        (&repo.url, &repo.username, &repo.password).hash(&mut h);
        let mut headers: Vec<(String, Vec<u8>)> = req.headers.iter().map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec())).collect();
        headers.sort();
        Key {
            repo: repo.name.to_string(),
            remote: h.finish(),
            method: req.method.clone(),
            url: req.url.as_str().to_owned(),
            headers,
            with_credentials: req.with_credentials,
        }
    }
}

type Outcome = Option<Result<SmallResponse, UpstreamError>>;

/// How long an answer is kept for requests that arrived while it was in flight.
const RECENT_FOR: Duration = Duration::from_secs(10);
/// How long an auth challenge or a token answers every identical request: well within a token's
/// life (60 s at the least, by the token spec's default) less the margin plugins keep (10 s).
const AUTH_SHARED_FOR: Duration = Duration::from_secs(5);
/// Answers kept at once, and their bytes: bounded whatever the upstreams send.
const MAX_KEPT: usize = 4096;
const MAX_KEPT_BYTES: usize = 16 * 1024 * 1024;

tokio::task_local! {
    /// When the client request being served arrived (set by the server around each request).
    pub static ARRIVED: Instant;
}

/// An answer that already came back.
struct Kept {
    /// when it came back
    answered: Instant,
    /// until when it answers every asker (a 404 remembered, an auth challenge, a token)
    open_until: Option<Instant>,
    keep_until: Instant,
    outcome: Result<SmallResponse, UpstreamError>,
}

impl Kept {
    fn bytes(&self) -> usize {
        256 + self.outcome.as_ref().map_or(0, |r| r.body.len())
    }

    /// An answer serves a request that arrived before it came back (the request could have
    /// joined it in flight); a remembered miss, a challenge or a token serves anyone for a while.
    fn serves(&self, arrived: Instant, now: Instant) -> bool {
        now < self.keep_until && (arrived <= self.answered || self.open_until.is_some_and(|u| now < u))
    }
}

#[derive(Default)]
struct State {
    inflight: HashMap<Key, watch::Receiver<Outcome>>,
    kept: HashMap<Key, Kept>,
    kept_bytes: usize,
}

impl State {
    fn keep(&mut self, key: Key, kept: Kept) {
        let now = Instant::now();
        if self.kept.len() >= MAX_KEPT || self.kept_bytes + kept.bytes() > MAX_KEPT_BYTES {
            self.kept.retain(|_, k| now < k.keep_until);
            self.kept_bytes = self.kept.values().map(Kept::bytes).sum();
        }
        if self.kept.len() < MAX_KEPT && self.kept_bytes + kept.bytes() <= MAX_KEPT_BYTES {
            self.kept_bytes += kept.bytes();
            if let Some(old) = self.kept.insert(key, kept) {
                self.kept_bytes -= old.bytes();
            }
        }
    }
}

/// Requests in flight and answers kept.
#[derive(Default)]
pub struct Shared {
    state: Mutex<State>,
}

/// Takes the in-flight entry out however the request ends.
struct Release {
    up: Arc<Upstream>,
    key: Key,
}

impl Drop for Release {
    fn drop(&mut self) {
        self.up.shared.lock().inflight.remove(&self.key);
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Upstream {
    /// A small request of `repo`'s plugin, to be answered within `deadline`: shared with identical
    /// reads in flight, or answered from a remembered miss.
    pub async fn small_shared(
        self: &Arc<Self>,
        repo: Arc<Repository>,
        req: UpstreamRequest,
        deadline: Duration,
    ) -> Result<SmallResponse, UpstreamError> {
        if req.method != Method::GET && req.method != Method::HEAD {
            return self.small_within(&repo, &req, deadline).await;
        }
        let key = Key::of(&repo, &req);
        let arrived = ARRIVED.try_with(|a| *a).unwrap_or_else(|_| Instant::now());
        let mut rx = {
            let mut state = self.shared.lock();
            if let Some(kept) = state.kept.get(&key).filter(|k| k.serves(arrived, Instant::now())) {
                tracing::debug!(url = %req.url, "upstream answer shared");
                return kept.outcome.clone();
            }
            match state.inflight.get(&key) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    state.inflight.insert(key.clone(), rx.clone());
                    let up = self.clone();
                    tokio::spawn(async move {
                        let release = Release { up: up.clone(), key: key.clone() };
                        let outcome = up.small_within(&repo, &req, deadline).await;
                        let now = Instant::now();
                        let open_until = match &outcome {
                            Ok(r) if r.status == StatusCode::NOT_FOUND && repo.miss_cache_seconds > 0 => {
                                Some(now + Duration::from_secs(repo.miss_cache_seconds))
                            }
                            Ok(r) if r.status == StatusCode::UNAUTHORIZED || (r.status.is_success() && up.is_realm(&repo, &req.url)) => {
                                Some(now + AUTH_SHARED_FOR)
                            }
                            _ => None,
                        };
                        let keep_until = (now + RECENT_FOR).max(open_until.unwrap_or(now));
                        // Kept before the in-flight entry goes, under one lock: an asker finds one or the other.
                        let mut state = up.shared.lock();
                        state.keep(key, Kept { answered: now, open_until, keep_until, outcome: outcome.clone() });
                        drop(state);
                        drop(release);
                        let _ = tx.send(Some(outcome));
                    });
                    rx
                }
            }
        };
        loop {
            if let Some(outcome) = rx.borrow_and_update().clone() {
                return outcome;
            }
            if rx.changed().await.is_err() {
                return Err(UpstreamError::Unreachable("the shared upstream request ended without an answer".into()));
            }
        }
    }

    /// A small document must arrive whole within `deadline`: an upstream that sends a byte now and
    /// then resets any idle timer, and would hold the plugin instance (and its client) for ever.
    async fn small_within(&self, repo: &Repository, req: &UpstreamRequest, deadline: Duration) -> Result<SmallResponse, UpstreamError> {
        tokio::time::timeout(deadline, self.small(repo, req))
            .await
            .map_err(|_| UpstreamError::Unreachable(format!("no complete answer from upstream in {} s", deadline.as_secs())))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::HeaderMap;

    fn key(i: usize) -> Key {
        Key {
            repo: "r".into(),
            remote: 0,
            method: Method::GET,
            url: format!("http://127.0.0.1:9/x/{i}"),
            headers: Vec::new(),
            with_credentials: false,
        }
    }

    fn kept(body: usize, answered: Instant, open_until: Option<Instant>) -> Kept {
        let resp = SmallResponse { status: StatusCode::OK, headers: HeaderMap::new(), body: Bytes::from(vec![0u8; body]) };
        Kept { answered, open_until, keep_until: Instant::now() + RECENT_FOR, outcome: Ok(resp) }
    }

    #[test]
    fn answers_kept_stay_within_their_budget() {
        let mut state = State::default();
        for i in 0..MAX_KEPT * 2 {
            state.keep(key(i), kept(1024 * 1024, Instant::now(), None));
            assert!(state.kept_bytes <= MAX_KEPT_BYTES, "{} bytes kept", state.kept_bytes);
        }
        assert_eq!(state.kept_bytes, state.kept.values().map(Kept::bytes).sum::<usize>());
        for i in 0..MAX_KEPT * 2 {
            state.keep(key(i), kept(0, Instant::now(), None));
            assert!(state.kept.len() <= MAX_KEPT);
        }
    }

    #[test]
    fn an_answer_serves_requests_that_arrived_while_it_was_in_flight() {
        let before = Instant::now();
        let k = kept(1, Instant::now(), None);
        let now = Instant::now();
        assert!(k.serves(before, now));
        let after = now + Duration::from_millis(1);
        assert!(!k.serves(after, after), "a later request asks afresh");
        let miss = kept(1, before, Some(now + Duration::from_secs(5)));
        assert!(miss.serves(after, after), "a remembered miss answers later requests too");
        assert!(!miss.serves(after, now + Duration::from_secs(6)), "until it expires");
    }
}
