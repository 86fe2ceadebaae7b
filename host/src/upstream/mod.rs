//! Talking to upstream registries: pooled HTTP clients, the capability check that keeps a
//! repository's requests on its own remote (and the auth realms that remote names), the egress
//! rules for realms and redirects (egress.rs), fail-fast while an upstream is down, and the
//! single-flight blob fill.

pub mod allowed_network;
pub mod document;
pub mod egress;
pub mod fill;
pub mod health;
pub mod shared;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use url::Url;

use crate::config::UpstreamConfig;
use crate::metrics::Metrics;
use crate::repos::Repository;
use egress::{AddressPolicy, GuardedResolver, Hop};
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

#[derive(Debug, Clone)]
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
    /// The upstream sent the request where a remote may not go (a realm over a weaker scheme, a
    /// redirect to an internal address or from https to http): the upstream's fault.
    #[error("refused: {0}")]
    Refused(String),
}

/// The HTTP clients could not be set up: the operator's configuration is at fault.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("upstream_ca_file {path}: {message}")]
    CaFile { path: PathBuf, message: String },
    #[error("HTTP client: {0}")]
    Build(#[from] reqwest::Error),
}

/// Realm origins a remote may name; more replace the ones remembered (a remote names one or two).
const REALMS_PER_REMOTE: usize = 16;

pub struct Upstream {
    /// For the remote's own host, wherever the operator put it.
    client: reqwest::Client,
    /// For everything else: resolves only to addresses `policy` permits.
    checked: reqwest::Client,
    policy: Arc<AddressPolicy>,
    config: UpstreamConfig,
    health: Health,
    /// What each remote (repository name, remote origin) named.
    named: Mutex<HashMap<(String, String), Named>>,
    metrics: Arc<Metrics>,
    /// `upstream.fetch` calls in flight (single-flight by repository and key).
    documents: document::Documents,
    /// `upstream.send` reads in flight, and misses remembered.
    shared: shared::Shared,
}

/// Origins one repository may have named (realms and `allow-origin`).
const MAX_NAMED_ORIGINS: usize = 1024;

/// What a remote named: the origins it may be reached at besides its own (auth realms and
/// `allow-origin`), and its auth realms themselves (URLs without query: a GET of one is a token
/// request).
#[derive(Default)]
struct Named {
    origins: HashSet<String>,
    realms: HashSet<String>,
}

/// Adds what a challenge named; past `REALMS_PER_REMOTE` the new ones replace those remembered.
fn remember_bounded(set: &mut HashSet<String>, found: impl ExactSizeIterator<Item = String>) {
    if set.len() + found.len() > REALMS_PER_REMOTE {
        set.clear();
    }
    set.extend(found.take(REALMS_PER_REMOTE));
}

fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// A URL as a realm is named: the parameters of a token request (service, scope) are its query.
fn without_query(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

fn remote_of(repo: &Repository) -> Result<Url, UpstreamError> {
    repo.url
        .as_deref()
        .and_then(|u| Url::parse(u).ok())
        .ok_or_else(|| UpstreamError::NotAllowed(format!("repository {} has no remote", repo.name)))
}

/// Extra roots for upstream TLS (a registry behind a private CA), besides the public ones.
fn ca_certificates(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, ClientError> {
    let err = |message: String| ClientError::CaFile { path: path.to_owned(), message };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in it".into()));
    }
    Ok(certs)
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
    pub fn new(config: UpstreamConfig, metrics: Arc<Metrics>) -> Result<Upstream, ClientError> {
        let roots = config.ca_file.as_deref().map(ca_certificates).transpose()?.unwrap_or_default();
        let builder = || {
            let b = reqwest::Client::builder()
                .connect_timeout(config.connect_timeout)
                .read_timeout(config.idle_timeout)
                .pool_idle_timeout(Duration::from_secs(90))
                .user_agent(concat!("binaryrepo/", env!("CARGO_PKG_VERSION")))
                // Followed by `send`, hop by hop, under the egress rules.
                .redirect(reqwest::redirect::Policy::none());
            roots.iter().cloned().fold(b, |b, c| b.add_root_certificate(c))
        };
        let policy = Arc::new(AddressPolicy::new(&config.allow_networks));
        let checked = builder().dns_resolver(Arc::new(GuardedResolver { policy: policy.clone() })).build()?;
        Ok(Upstream {
            client: builder().build()?,
            checked,
            policy,
            health: Health::new(config.down_for),
            config,
            named: Mutex::new(HashMap::new()),
            metrics,
            documents: Default::default(),
            shared: Default::default(),
        })
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn realm_key(repo: &Repository, remote: &Url) -> (String, String) {
        (repo.name.to_string(), origin(remote))
    }

    /// An origin the plugin found named in one of the remote's documents (`allow-origin`): reached
    /// like a realm the remote named.
    pub fn allow_origin(&self, repo: &Repository, named: String) {
        let Ok(remote) = remote_of(repo) else { return };
        let mut all = self.named.lock().unwrap_or_else(|e| e.into_inner());
        let set = &mut all.entry(Self::realm_key(repo, &remote)).or_default().origins;
        // Bounded: a remote that names origins without end cannot grow the host's memory.
        if set.len() < MAX_NAMED_ORIGINS {
            set.insert(named);
        }
    }

    /// Whether the remote named `url`'s origin as an auth realm.
    fn named_realm(&self, repo: &Repository, remote: &Url, url: &Url) -> bool {
        let named = self.named.lock().unwrap_or_else(|e| e.into_inner());
        named.get(&Self::realm_key(repo, remote)).is_some_and(|n| n.origins.contains(&origin(url)))
    }

    /// A repository may reach its remote's origin and the realms that remote named.
    fn check_allowed(&self, repo: &Repository, url: &Url) -> Result<Hop, UpstreamError> {
        let remote = remote_of(repo)?;
        egress::first_hop(&remote, url, self.named_realm(repo, &remote, url), repo.name.as_str())
    }

    /// Realms are trusted only from the remote's own origin.
    fn remember_realms(&self, repo: &Repository, remote: &Url, url: &Url, headers: &HeaderMap) {
        if origin(url) != origin(remote) {
            return;
        }
        let urls: Vec<Url> = challenge_realms(headers)
            .iter()
            .filter_map(|r| Url::parse(r).ok())
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .collect();
        if urls.is_empty() {
            return;
        }
        let mut all = self.named.lock().unwrap_or_else(|e| e.into_inner());
        let named = all.entry(Self::realm_key(repo, remote)).or_default();
        remember_bounded(&mut named.realms, urls.iter().map(without_query));
        remember_bounded(&mut named.origins, urls.iter().map(origin));
    }

    /// Whether `url` is an auth realm `repo`'s remote named in a challenge (a token service).
    pub(crate) fn is_realm(&self, repo: &Repository, url: &Url) -> bool {
        let Ok(remote) = remote_of(repo) else { return false };
        let named = self.named.lock().unwrap_or_else(|e| e.into_inner());
        named.get(&Self::realm_key(repo, &remote)).is_some_and(|n| n.realms.contains(&without_query(url)))
    }

    /// One hop of `req` (the first, or a redirect) to `url`. What the plugin put in the request to
    /// authenticate it goes only to the origin it was made for; configured credentials only where
    /// `hop` says.
    async fn send_hop(&self, repo: &Repository, req: &UpstreamRequest, url: &Url, hop: Hop) -> Result<reqwest::Response, UpstreamError> {
        let target = origin(url);
        if self.health.is_down(&target) {
            return Err(UpstreamError::Unreachable(format!("{target} is marked down after a recent failure")));
        }
        let client = if hop.checked {
            self.policy.check_literal(url).map_err(|e| UpstreamError::Refused(e.to_string()))?;
            &self.checked
        } else {
            &self.client
        };
        let mut headers = req.headers.clone();
        let requested_origin = target == origin(&req.url);
        if !requested_origin {
            egress::strip_credentials(&mut headers);
        }
        if req.with_credentials
            && let Some((user, pass)) = repo.credentials()
        {
            if hop.credentials {
                let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
                let value = HeaderValue::from_str(&format!("Basic {token}")).map_err(|e| UpstreamError::Invalid(e.to_string()))?;
                headers.insert(http::header::AUTHORIZATION, value);
            } else if requested_origin {
                // A realm the remote named over http on another origin: asked anonymously.
                tracing::warn!(repo = %repo.name, target, "credentials withheld: not the remote's origin, nor a realm it named over https");
            } else {
                tracing::debug!(repo = %repo.name, target, "credentials withheld from a redirect to another origin");
            }
        }
        let sent = client.request(req.method.clone(), url.clone()).headers(headers).send();
        // An upstream that accepts and then says nothing is as good as down: the caller serves
        // what is cached rather than waiting for the (longer) idle timeout.
        let resp = match tokio::time::timeout(self.config.response_timeout, sent).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                self.metrics.upstream_error(repo.name.as_str());
                return Err(self.classify(url, e));
            }
            Err(_) => {
                self.metrics.upstream_error(repo.name.as_str());
                self.health.mark_down(&target);
                let waited = self.config.response_timeout.as_secs();
                return Err(UpstreamError::Unreachable(format!("{}: no response within {waited} s", url.as_str())));
            }
        };
        self.metrics.upstream_response(repo.name.as_str(), &req.method, resp.status().as_u16());
        self.health.mark_up(&target);
        Ok(resp)
    }

    fn classify(&self, url: &Url, e: reqwest::Error) -> UpstreamError {
        if let Some(blocked) = egress::blocked_in(&e) {
            return UpstreamError::Refused(blocked.to_string());
        }
        if e.is_connect() || e.is_timeout() {
            self.health.mark_down(&origin(url));
        }
        UpstreamError::Unreachable(format!("{}: {e}", url.as_str()))
    }

    /// Sends a request whose body the caller streams (blob fills). GET and HEAD follow redirects
    /// under the egress rules; other methods get the redirect answer itself.
    pub async fn send(&self, repo: &Repository, req: &UpstreamRequest) -> Result<reqwest::Response, UpstreamError> {
        let remote = remote_of(repo)?;
        let mut hop = self.check_allowed(repo, &req.url)?;
        let follow = req.method == Method::GET || req.method == Method::HEAD;
        let mut url = req.url.clone();
        let mut redirects = 0;
        loop {
            let resp = self.send_hop(repo, req, &url, hop).await?;
            let Some(location) = egress::redirect_location(resp.status(), resp.headers()).filter(|_| follow) else {
                self.remember_realms(repo, &remote, &url, resp.headers());
                return Ok(resp);
            };
            if redirects == egress::MAX_REDIRECTS {
                return Err(UpstreamError::Refused(format!("more than {} redirects from {}", egress::MAX_REDIRECTS, origin(&req.url))));
            }
            let (next, next_hop) = egress::next_hop(&remote, &url, location)?;
            tracing::debug!(from = %url, to = %next, "following an upstream redirect");
            (url, hop) = (next, next_hop);
            redirects += 1;
        }
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
    // The HTTP client would turn user information into Basic credentials for that host.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UpstreamError::NotAllowed("user information in an upstream URL".into()));
    }
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| UpstreamError::Invalid(format!("header name {k:?}")))?;
        let value = HeaderValue::from_str(v).map_err(|_| UpstreamError::Invalid(format!("header value for {k}")))?;
        map.append(name, value);
    }
    Ok(UpstreamRequest { method, url, headers: map, with_credentials })
}

/// Test upstreams: reads a request's head from `conn` (None when the client went away first).
#[cfg(test)]
async fn read_head_for_tests(conn: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(head)
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
            username: Some("alice".into()),
            password: Some("secret".into()),
            ..Default::default()
        }
        .validate(None, &["docker".to_string()])
        .unwrap()
    }

    fn upstream(allow: &[&str]) -> Upstream {
        Upstream::new(
            UpstreamConfig {
                connect_timeout: Duration::from_secs(1),
                idle_timeout: Duration::from_secs(2),
                response_timeout: Duration::from_secs(2),
                down_for: Duration::from_secs(1),
                hold_last_byte: false,
                allow_networks: allow.iter().map(|a| egress::AllowedNetwork::try_from(a.to_string()).unwrap()).collect(),
                ca_file: None,
            },
            Default::default(),
        )
        .unwrap()
    }

    fn get(url: &str, with_credentials: bool) -> UpstreamRequest {
        let headers = [("Authorization".to_owned(), "Bearer registry-token".to_owned())];
        parse_request("GET", url, &headers, with_credentials).unwrap()
    }

    /// A loopback HTTP/1.1 server that answers each request with `answer(path)` (status line and
    /// headers, no body) and keeps every request head it got.
    struct Canned {
        port: u16,
        heads: Arc<Mutex<Vec<String>>>,
    }

    impl Canned {
        async fn start(answer: impl Fn(&str) -> String + Send + Sync + 'static) -> Canned {
            use tokio::io::AsyncWriteExt;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let heads = Arc::new(Mutex::new(Vec::new()));
            let (kept, answer) = (heads.clone(), Arc::new(answer));
            tokio::spawn(async move {
                while let Ok((mut conn, _)) = listener.accept().await {
                    let (kept, answer) = (kept.clone(), answer.clone());
                    tokio::spawn(async move {
                        let Some(head) = super::read_head_for_tests(&mut conn).await else { return };
                        let head = String::from_utf8_lossy(&head).into_owned();
                        let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                        kept.lock().unwrap().push(head);
                        let reply = format!("{}Content-Length: 0\r\nConnection: close\r\n\r\n", answer(&path));
                        let _ = conn.write_all(reply.as_bytes()).await;
                    });
                }
            });
            Canned { port, heads }
        }

        fn url(&self, path: &str) -> String {
            format!("http://127.0.0.1:{}{path}", self.port)
        }

        fn heads(&self) -> Vec<String> {
            self.heads.lock().unwrap().clone()
        }
    }

    fn authorization(head: &str) -> Option<&str> {
        head.lines().find_map(|l| l.strip_prefix("authorization: ").or_else(|| l.strip_prefix("Authorization: ")))
    }

    fn redirect_to(location: String) -> impl Fn(&str) -> String {
        move |_| format!("HTTP/1.1 307 Temporary Redirect\r\nLocation: {location}\r\n")
    }

    #[test]
    fn capability_is_the_remote_and_named_realms() {
        let up = upstream(&[]);
        let r = repo("http://127.0.0.1:5000");
        assert!(up.check_allowed(&r, &Url::parse("http://127.0.0.1:5000/v2/").unwrap()).is_ok());
        let token = Url::parse("http://127.0.0.1:6000/token").unwrap();
        assert!(matches!(up.check_allowed(&r, &token), Err(UpstreamError::NotAllowed(_))));
        let mut h = HeaderMap::new();
        h.insert(http::header::WWW_AUTHENTICATE, HeaderValue::from_static(r#"Bearer realm="http://127.0.0.1:6000/token""#));
        let remote = Url::parse("http://127.0.0.1:5000").unwrap();
        up.remember_realms(&r, &remote, &Url::parse("http://127.0.0.1:5000/v2/").unwrap(), &h);
        assert!(up.check_allowed(&r, &token).is_ok());
        // A realm named by someone else's server is not trusted.
        up.remember_realms(&r, &remote, &token, &{
            let mut h = HeaderMap::new();
            h.insert(http::header::WWW_AUTHENTICATE, HeaderValue::from_static(r#"Bearer realm="http://evil:1/""#));
            h
        });
        assert!(up.check_allowed(&r, &Url::parse("http://evil:1/").unwrap()).is_err());
        // Nor one the repository's previous remote named.
        assert!(up.check_allowed(&repo("http://127.0.0.1:5001"), &Url::parse("http://127.0.0.1:6000/t").unwrap()).is_err());
    }

    #[test]
    fn an_unusable_upstream_ca_file_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        for path in [dir.path().join("missing.pem"), empty] {
            let err = ca_certificates(&path).expect_err("accepted");
            assert!(matches!(err, ClientError::CaFile { .. }) && err.to_string().contains("upstream_ca_file"), "{err}");
        }
    }

    #[test]
    fn user_information_in_a_request_url_is_refused() {
        assert!(matches!(parse_request("GET", "http://u:p@127.0.0.1:5000/v2/", &[], false), Err(UpstreamError::NotAllowed(_))));
    }

    /// Guards `AddressPolicy::check_literal` (send_hop) and `GuardedResolver` (the checked client).
    #[tokio::test]
    async fn a_redirect_to_another_loopback_port_is_refused_and_never_sent() {
        let target = Canned::start(|_| "HTTP/1.1 200 OK\r\n".into()).await;
        for host in ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]", "2130706433"] {
            let remote = Canned::start(redirect_to(format!("http://{host}:{}/blob", target.port))).await;
            let err = upstream(&[]).send(&repo(&remote.url("")), &get(&remote.url("/v2/x/blobs/d"), true)).await.unwrap_err();
            assert!(matches!(err, UpstreamError::Refused(_)), "{host}: {err}");
            assert_eq!(remote.heads().len(), 1);
        }
        assert!(target.heads().is_empty(), "{:?}", target.heads());
    }

    #[tokio::test]
    async fn a_redirect_to_the_remote_origin_is_followed_with_its_credentials() {
        let remote = Canned::start(|path| match path {
            "/v2/x/blobs/d" => "HTTP/1.1 302 Found\r\nLocation: /storage/d\r\n".into(),
            _ => "HTTP/1.1 200 OK\r\n".into(),
        })
        .await;
        let resp = upstream(&[]).send(&repo(&remote.url("")), &get(&remote.url("/v2/x/blobs/d"), true)).await.unwrap();
        assert_eq!((resp.status().as_u16(), resp.url().path()), (200, "/storage/d"));
        let heads = remote.heads();
        assert_eq!(heads.len(), 2);
        assert!(heads.iter().all(|h| authorization(h).is_some_and(|a| a.starts_with("Basic "))), "{heads:?}");
    }

    /// Guards `strip_credentials` in send_hop (the plugin's Bearer token) and `next_hop`'s credentials
    /// rule (the configured Basic credentials).
    #[tokio::test]
    async fn an_allowed_redirect_to_another_origin_carries_no_credentials() {
        let target = Canned::start(|_| "HTTP/1.1 200 OK\r\n".into()).await;
        let remote = Canned::start(redirect_to(target.url("/blob"))).await;
        for with_credentials in [true, false] {
            let resp = upstream(&["127.0.0.0/8"])
                .send(&repo(&remote.url("")), &get(&remote.url("/v2/x/blobs/d"), with_credentials))
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 200);
        }
        assert!(remote.heads().iter().all(|h| authorization(h).is_some()));
        let heads = target.heads();
        assert_eq!(heads.len(), 2);
        assert!(heads.iter().all(|h| authorization(h).is_none()), "{heads:?}");
    }

    #[tokio::test]
    async fn only_get_and_head_follow_redirects_and_only_a_few_hops() {
        let target = Canned::start(|_| "HTTP/1.1 200 OK\r\n".into()).await;
        let remote = Canned::start(redirect_to(target.url("/"))).await;
        let up = upstream(&["127.0.0.0/8"]);
        let post = parse_request("POST", &remote.url("/token"), &[], false).unwrap();
        assert_eq!(up.send(&repo(&remote.url("")), &post).await.unwrap().status().as_u16(), 307);
        assert!(target.heads().is_empty());

        let circle = Canned::start(|path| format!("HTTP/1.1 301 Moved\r\nLocation: {path}x\r\n")).await;
        let err = up.send(&repo(&circle.url("")), &get(&circle.url("/a"), false)).await.unwrap_err();
        assert!(matches!(err, UpstreamError::Refused(ref m) if m.contains("redirects")), "{err}");
        assert_eq!(circle.heads().len(), egress::MAX_REDIRECTS + 1);
    }

    /// A request that arrives just after the token came back (the plugin call that asked has not
    /// stored it yet) gets that token, not a second token request; so does one that arrives just
    /// after the challenge, whatever the order the plugin calls get to the upstream in. Guards
    /// `open_until` for 401s and realm answers in `small_shared`.
    #[tokio::test]
    async fn the_auth_exchange_is_shared_with_requests_that_arrive_just_after_it() {
        use super::shared::ARRIVED;
        use std::time::Instant;
        let realm = Canned::start(|_| "HTTP/1.1 200 OK\r\n".into()).await;
        let challenge =
            format!("HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"{}\",service=\"s\"\r\n", realm.url("/token"));
        let remote = Canned::start(move |_| challenge.clone()).await;
        let (up, r) = (Arc::new(upstream(&[])), Arc::new(repo(&remote.url(""))));
        let anonymous = parse_request("GET", &remote.url("/v2/x/manifests/1"), &[], false).unwrap();
        let token = parse_request("GET", &realm.url("/token?service=s&scope=repository%3Ax%3Apull"), &[], false).unwrap();
        let ask = |req: &UpstreamRequest| {
            let (up, r, req) = (up.clone(), r.clone(), req.clone());
            // each asks as a client request that arrived right now, after the answers before it
            ARRIVED.scope(Instant::now(), async move { up.small_shared(r, req, Duration::from_secs(5)).await.unwrap().status.as_u16() })
        };
        assert_eq!(ask(&anonymous).await, 401);
        assert_eq!(ask(&token).await, 200);
        for _ in 0..3 {
            assert_eq!(ask(&anonymous).await, 401);
            assert_eq!(ask(&token).await, 200);
        }
        assert_eq!(remote.heads().len(), 1, "one challenge: {:?}", remote.heads());
        assert_eq!(realm.heads().len(), 1, "one token request: {:?}", realm.heads());
        // another scope is another token
        let other = parse_request("GET", &realm.url("/token?service=s&scope=repository%3Ay%3Apull"), &[], false).unwrap();
        assert_eq!(ask(&other).await, 200);
        assert_eq!(realm.heads().len(), 2);
        // an answer from anywhere but a realm is not shared with later requests
        let elsewhere = parse_request("GET", &realm.url("/v2/x/manifests/1"), &[], false).unwrap();
        for _ in 0..2 {
            assert_eq!(ask(&elsewhere).await, 200);
        }
        assert_eq!(realm.heads().len(), 4);
    }

    /// Guards the `hop.credentials` condition in send_hop (`first_hop`: credentials only over https).
    #[tokio::test]
    async fn an_http_realm_on_another_port_is_asked_without_credentials() {
        let realm = Canned::start(|_| "HTTP/1.1 200 OK\r\n".into()).await;
        let challenge =
            format!("HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"{}\",service=\"s\"\r\n", realm.url("/token"));
        let remote = Canned::start(move |_| challenge.clone()).await;
        let (up, r) = (upstream(&[]), repo(&remote.url("")));
        assert_eq!(up.send(&r, &get(&remote.url("/v2/"), true)).await.unwrap().status().as_u16(), 401);
        let token = parse_request("GET", &realm.url("/token?scope=x"), &[], true).unwrap();
        assert_eq!(up.send(&r, &token).await.unwrap().status().as_u16(), 200);
        let heads = realm.heads();
        assert_eq!(heads.len(), 1);
        assert!(authorization(&heads[0]).is_none(), "{heads:?}");
        assert!(authorization(&remote.heads()[0]).is_some());
    }
}
