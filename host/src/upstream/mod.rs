//! Talking to upstream registries: one pooled HTTP client, the capability check that keeps a
//! repository's requests on its own remote (and the auth realms that remote names), fail-fast
//! while an upstream is down, and the single-flight blob fill.

pub mod fill;
pub mod health;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use url::Url;

use crate::config::UpstreamConfig;
use crate::metrics::Metrics;
use crate::repos::Repository;
use health::Health;

/// Small documents (manifests, token answers) are read whole up to this size.
pub const SMALL_LIMIT: u64 = 4 * 1024 * 1024;

/// A request a plugin asked for, checked and typed by the host.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    pub method: Method,
    pub url: Url,
    pub headers: HeaderMap,
    pub with_credentials: bool,
}

#[derive(Debug)]
pub struct SmallResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// The plugin asked for a URL outside its repository's remote: the plugin's fault.
    #[error("not allowed: {0}")]
    NotAllowed(String),
    /// The upstream could not be reached or stalled: the upstream's fault.
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    #[error("upstream document of {0} bytes is over the limit")]
    TooLarge(u64),
    /// A header or method the plugin built is not valid HTTP: the plugin's fault.
    #[error("invalid request: {0}")]
    Invalid(String),
}

pub struct Upstream {
    client: reqwest::Client,
    config: UpstreamConfig,
    health: Health,
    /// Origins each repository's remote named as auth realms.
    realms: Mutex<HashMap<String, HashSet<String>>>,
    metrics: Arc<Metrics>,
}

/// Origins one repository may have named (realms and `allow-origin`).
const MAX_NAMED_ORIGINS: usize = 1024;

fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// The `realm` parameter of every challenge in `WWW-Authenticate` values (RFC 7235).
fn challenge_realms(headers: &HeaderMap) -> Vec<String> {
    let mut out = Vec::new();
    for value in headers.get_all(http::header::WWW_AUTHENTICATE) {
        let Ok(v) = value.to_str() else { continue };
        let lower = v.to_ascii_lowercase();
        let mut from = 0;
        while let Some(i) = lower[from..].find("realm=") {
            let start = from + i + "realm=".len();
            let rest = &v[start..];
            let realm = match rest.strip_prefix('"') {
                Some(q) => q.split('"').next().unwrap_or(""),
                None => rest.split([',', ' ']).next().unwrap_or(""),
            };
            out.push(realm.to_owned());
            from = start;
        }
    }
    out
}

impl Upstream {
    pub fn new(config: UpstreamConfig, metrics: Arc<Metrics>) -> Result<Upstream, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.idle_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("binaryrepo/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Upstream { client, health: Health::new(config.down_for), config, realms: Mutex::new(HashMap::new()), metrics })
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A repository may reach its remote's origin and the realms that remote named.
    fn check_allowed(&self, repo: &Repository, url: &Url) -> Result<(), UpstreamError> {
        let Some(remote) = repo.url.as_deref().and_then(|u| Url::parse(u).ok()) else {
            return Err(UpstreamError::NotAllowed(format!("repository {} has no remote", repo.name)));
        };
        let target = origin(url);
        if target == origin(&remote) {
            return Ok(());
        }
        let realms = self.realms.lock().unwrap_or_else(|e| e.into_inner());
        if realms.get(repo.name.as_str()).is_some_and(|set| set.contains(&target)) {
            return Ok(());
        }
        Err(UpstreamError::NotAllowed(format!("{target} is neither the remote of {} nor a realm it named", repo.name)))
    }

    /// An origin the plugin found named in one of the remote's documents (`allow-origin`).
    pub fn allow_origin(&self, repo: &Repository, origin: String) {
        let mut realms = self.realms.lock().unwrap_or_else(|e| e.into_inner());
        let set = realms.entry(repo.name.to_string()).or_default();
        // Bounded: a remote that names origins without end cannot grow the host's memory.
        if set.len() < MAX_NAMED_ORIGINS {
            set.insert(origin);
        }
    }

    fn remember_realms(&self, repo: &Repository, url: &Url, headers: &HeaderMap) {
        let Some(remote) = repo.url.as_deref().and_then(|u| Url::parse(u).ok()) else { return };
        if origin(url) != origin(&remote) {
            return;
        }
        let found: Vec<String> = challenge_realms(headers).iter().filter_map(|r| Url::parse(r).ok()).map(|u| origin(&u)).collect();
        if !found.is_empty() {
            let mut realms = self.realms.lock().unwrap_or_else(|e| e.into_inner());
            realms.entry(repo.name.to_string()).or_default().extend(found);
        }
    }

    fn build(&self, repo: &Repository, req: &UpstreamRequest) -> Result<reqwest::RequestBuilder, UpstreamError> {
        self.check_allowed(repo, &req.url)?;
        let target = origin(&req.url);
        if self.health.is_down(&target) {
            return Err(UpstreamError::Unreachable(format!("{target} is marked down after a recent failure")));
        }
        let mut headers = req.headers.clone();
        if req.with_credentials
            && let Some((user, pass)) = repo.credentials()
        {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
            let value = HeaderValue::from_str(&format!("Basic {token}")).map_err(|e| UpstreamError::Invalid(e.to_string()))?;
            headers.insert(http::header::AUTHORIZATION, value);
        }
        Ok(self.client.request(req.method.clone(), req.url.clone()).headers(headers))
    }

    fn classify(&self, url: &Url, e: reqwest::Error) -> UpstreamError {
        if e.is_connect() || e.is_timeout() {
            self.health.mark_down(&origin(url));
        }
        UpstreamError::Unreachable(format!("{}: {e}", url.as_str()))
    }

    /// Sends a request whose body the caller streams (blob fills).
    pub async fn send(&self, repo: &Repository, req: &UpstreamRequest) -> Result<reqwest::Response, UpstreamError> {
        let builder = self.build(repo, req)?;
        let resp = builder.send().await.map_err(|e| {
            self.metrics.upstream_error(repo.name.as_str());
            self.classify(&req.url, e)
        })?;
        self.metrics.upstream_response(repo.name.as_str(), &req.method, resp.status().as_u16());
        self.health.mark_up(&origin(&req.url));
        self.remember_realms(repo, &req.url, resp.headers());
        Ok(resp)
    }

    /// Sends a request and reads a small body whole.
    pub async fn small(&self, repo: &Repository, req: &UpstreamRequest) -> Result<SmallResponse, UpstreamError> {
        let mut resp = self.send(repo, req).await?;
        if let Some(len) = resp.content_length().filter(|l| *l > SMALL_LIMIT) {
            return Err(UpstreamError::TooLarge(len));
        }
        let status = resp.status();
        let headers = std::mem::take(resp.headers_mut());
        let mut body = Vec::new();
        if req.method != Method::HEAD {
            let received = self.metrics.upstream_bytes_of(repo.name.as_str());
            while let Some(chunk) = resp.chunk().await.map_err(|e| self.classify(&req.url, e))? {
                received.inc_by(chunk.len() as u64);
                body.extend_from_slice(&chunk);
                if body.len() as u64 > SMALL_LIMIT {
                    return Err(UpstreamError::TooLarge(body.len() as u64));
                }
            }
        }
        Ok(SmallResponse { status, headers, body: Bytes::from(body) })
    }
}

/// Builds a typed request from a plugin's strings.
pub fn parse_request(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    with_credentials: bool,
) -> Result<UpstreamRequest, UpstreamError> {
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| UpstreamError::Invalid(format!("method {method:?}")))?;
    let url = Url::parse(url).map_err(|e| UpstreamError::Invalid(format!("url {url:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(UpstreamError::NotAllowed(format!("scheme {}", url.scheme())));
    }
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| UpstreamError::Invalid(format!("header name {k:?}")))?;
        let value = HeaderValue::from_str(v).map_err(|_| UpstreamError::Invalid(format!("header value for {k}")))?;
        map.append(name, value);
    }
    Ok(UpstreamRequest { method, url, headers: map, with_credentials })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realms_from_challenges() {
        let mut h = HeaderMap::new();
        h.append(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io""#),
        );
        h.append(http::header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic Realm=http://other:5000/x"));
        assert_eq!(challenge_realms(&h), vec!["https://auth.docker.io/token", "http://other:5000/x"]);
    }

    fn repo(url: &str) -> Repository {
        crate::repos::RepositoryInput {
            name: Some("r".into()),
            repo_type: Some("remote".into()),
            format: Some("docker".into()),
            url: Some(url.into()),
            ..Default::default()
        }
        .validate(None, &["docker".to_string()])
        .unwrap()
    }

    #[test]
    fn capability_is_the_remote_and_named_realms() {
        let up = Upstream::new(
            UpstreamConfig {
                connect_timeout: Duration::from_secs(1),
                idle_timeout: Duration::from_secs(1),
                down_for: Duration::from_secs(1),
                hold_last_byte: false,
            },
            Default::default(),
        )
        .unwrap();
        let r = repo("http://127.0.0.1:5000");
        assert!(up.check_allowed(&r, &Url::parse("http://127.0.0.1:5000/v2/").unwrap()).is_ok());
        let token = Url::parse("http://127.0.0.1:6000/token").unwrap();
        assert!(matches!(up.check_allowed(&r, &token), Err(UpstreamError::NotAllowed(_))));
        let mut h = HeaderMap::new();
        h.insert(http::header::WWW_AUTHENTICATE, HeaderValue::from_static(r#"Bearer realm="http://127.0.0.1:6000/token""#));
        up.remember_realms(&r, &Url::parse("http://127.0.0.1:5000/v2/").unwrap(), &h);
        assert!(up.check_allowed(&r, &token).is_ok());
        // A realm named by someone else's server is not trusted.
        up.remember_realms(&r, &token, &{
            let mut h = HeaderMap::new();
            h.insert(http::header::WWW_AUTHENTICATE, HeaderValue::from_static(r#"Bearer realm="http://evil:1/""#));
            h
        });
        assert!(up.check_allowed(&r, &Url::parse("http://evil:1/").unwrap()).is_err());
    }
}
