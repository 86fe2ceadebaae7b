//! Requests to a remote repository's upstream registry, and answering its auth challenges.
//!
//! The host attaches configured credentials (HTTP Basic) when asked and keeps requests within
//! the remote and the realms it names; which challenge to answer and how is decided here.

use crate::challenge::{self, Challenge};
use crate::contract::{Headers, Host, Level, UpstreamRequest, UpstreamResponse};
use crate::error::{ErrorCode, RegistryError};
use crate::reference::Name;
use crate::url;
use serde::Deserialize;

const CHALLENGE_KEY: &str = "challenge";
/// A registry's auth set-up rarely changes; an hour keeps token discovery off the hot path.
const CHALLENGE_TTL: u64 = 3600;
/// The token spec's default lifetime when a token service leaves `expires_in` out.
const DEFAULT_TOKEN_LIFETIME: u64 = 60;
/// Margin so a token is not used in the last seconds of its life (clock skew, slow requests).
const TOKEN_MARGIN: u64 = 10;

pub struct Upstream<'h, H: Host> {
    host: &'h H,
    base: String,
    name: Name,
    has_credentials: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Auth {
    Bearer(String),
    Anonymous,
    /// the host attaches the repository's configured Basic credentials
    Credentials,
}

impl Auth {
    fn into_parts(self) -> (Headers, bool) {
        match self {
            Auth::Bearer(t) => (
                vec![("Authorization".to_owned(), format!("Bearer {t}"))],
                false,
            ),
            Auth::Anonymous => (Vec::new(), false),
            Auth::Credentials => (Vec::new(), true),
        }
    }
}

/// The upstream's name for a repository: Docker Hub keeps official images under `library/`.
pub fn upstream_name(remote_url: &str, name: &Name) -> Name {
    if url::is_docker_hub(remote_url) && name.is_single_component() {
        Name::parse(&format!("library/{name}")).unwrap_or_else(|_| name.clone())
    } else {
        name.clone()
    }
}

impl<'h, H: Host> Upstream<'h, H> {
    pub fn new(host: &'h H, remote_url: &str, name: &Name, has_credentials: bool) -> Self {
        Upstream {
            host,
            base: remote_url.trim_end_matches('/').to_owned(),
            name: upstream_name(remote_url, name),
            has_credentials,
        }
    }

    /// The repository name as the upstream knows it.
    pub fn name(&self) -> &Name {
        &self.name
    }

    /// `<base>/v2/<upstream name>/<tail>`
    pub fn url(&self, tail: &str) -> String {
        format!("{}/v2/{}/{}", self.base, self.name, tail)
    }

    fn scope(&self) -> String {
        format!("repository:{}:pull", self.name)
    }

    fn token_key(&self) -> String {
        format!("token/{}", self.scope())
    }

    /// Send a request, answering one auth challenge if the upstream raises it.
    pub fn send(
        &self,
        method: &str,
        url: &str,
        extra: &[(String, String)],
    ) -> Result<UpstreamResponse, RegistryError> {
        let auth = self.prepare()?;
        let first = self.raw(method, url, extra, &auth)?;
        if first.status != 401 {
            if !matches!(auth, Auth::Bearer(_)) && self.remembered_challenge().is_none() {
                self.remember_challenge(&Challenge::None);
            }
            return Ok(first);
        }
        let Some(challenge) = challenge::from_headers(&first.headers) else {
            return Ok(first);
        };
        self.remember_challenge(&challenge);
        match challenge {
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let scope = scope.unwrap_or_else(|| self.scope());
                let token = self.fetch_token(&realm, service.as_deref(), &scope)?;
                self.raw(method, url, extra, &Auth::Bearer(token))
            }
            Challenge::Basic if !self.has_credentials => Err(needs_credentials()),
            // we already sent them: the upstream refuses the configured credentials
            Challenge::Basic if auth == Auth::Credentials => Ok(first),
            Challenge::Basic => self.raw(method, url, extra, &Auth::Credentials),
            Challenge::None => Ok(first),
        }
    }

    /// Authorization for a request the host will make on our behalf (a fetch-blob plan),
    /// which cannot come back to us on a 401: settle auth up front.
    pub fn plan_auth(&self) -> Result<(Headers, bool), RegistryError> {
        if self.cached_token().is_none() && self.remembered_challenge().is_none() {
            self.discover()?;
        }
        if self.remembered_challenge() == Some(Challenge::Basic) && !self.has_credentials {
            return Err(needs_credentials());
        }
        Ok(self.prepare()?.into_parts())
    }

    /// `GET /v2/` tells which challenge the upstream raises, without touching a repository.
    fn discover(&self) -> Result<(), RegistryError> {
        let url = format!("{}/v2/", self.base);
        let resp = self.raw("GET", &url, &[], &Auth::Anonymous)?;
        let challenge = match resp.status {
            401 => challenge::from_headers(&resp.headers).unwrap_or(Challenge::None),
            _ => Challenge::None,
        };
        self.host.log(
            Level::Debug,
            &format!("upstream {} challenge: {challenge:?}", self.base),
        );
        self.remember_challenge(&challenge);
        Ok(())
    }

    /// How to authenticate the first attempt of a request, from what earlier ones learned.
    fn prepare(&self) -> Result<Auth, RegistryError> {
        if let Some(token) = self.cached_token() {
            return Ok(Auth::Bearer(token));
        }
        if let Some(Challenge::Bearer { realm, service, .. }) = self.remembered_challenge() {
            let token = self.fetch_token(&realm, service.as_deref(), &self.scope())?;
            return Ok(Auth::Bearer(token));
        }
        Ok(if self.has_credentials {
            Auth::Credentials
        } else {
            Auth::Anonymous
        })
    }

    fn cached_token(&self) -> Option<String> {
        let bytes = self.host.scratch_get(&self.token_key())?;
        String::from_utf8(bytes).ok().filter(|t| !t.is_empty())
    }

    fn remembered_challenge(&self) -> Option<Challenge> {
        let bytes = self.host.scratch_get(CHALLENGE_KEY)?;
        serde_json::from_slice(&bytes).ok()
    }

    fn remember_challenge(&self, challenge: &Challenge) {
        if let Ok(bytes) = serde_json::to_vec(challenge) {
            self.host.scratch_put(CHALLENGE_KEY, &bytes, CHALLENGE_TTL);
        }
    }

    /// Ask the realm for a token; the token service gets the configured credentials, if any,
    /// so that private repositories work and anonymous pulls stay anonymous.
    fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<String, RegistryError> {
        let mut params = Vec::new();
        if let Some(service) = service {
            params.push(("service", service));
        }
        params.push(("scope", scope));
        let request = UpstreamRequest {
            method: "GET".to_owned(),
            url: url::with_query(realm, &params),
            headers: Vec::new(),
            with_credentials: self.has_credentials,
        };
        let resp = self.host.upstream(&request)?;
        match resp.status {
            200..=299 => {}
            401 => {
                return Err(RegistryError::new(
                    ErrorCode::Unauthorized,
                    "the upstream token service refused the repository's credentials",
                )
                .with_detail(serde_json::json!({ "realm": realm })));
            }
            403 => {
                return Err(RegistryError::new(
                    ErrorCode::Denied,
                    "the upstream token service denied access",
                )
                .with_detail(serde_json::json!({ "realm": realm })));
            }
            s => {
                return Err(RegistryError::new(
                    ErrorCode::UpstreamUnavailable,
                    format!("the upstream token service answered {s}"),
                ));
            }
        }
        let Some((token, lifetime)) = parse_token(&resp.body) else {
            return Err(RegistryError::new(
                ErrorCode::UpstreamUnavailable,
                "the upstream token service sent no token",
            ));
        };
        self.host
            .scratch_put(&self.token_key(), token.as_bytes(), token_ttl(lifetime));
        Ok(token)
    }

    fn raw(
        &self,
        method: &str,
        url: &str,
        extra: &[(String, String)],
        auth: &Auth,
    ) -> Result<UpstreamResponse, RegistryError> {
        let (mut headers, with_credentials) = auth.clone().into_parts();
        headers.extend_from_slice(extra);
        let request = UpstreamRequest {
            method: method.to_owned(),
            url: url.to_owned(),
            headers,
            with_credentials,
        };
        Ok(self.host.upstream(&request)?)
    }
}

fn needs_credentials() -> RegistryError {
    RegistryError::new(
        ErrorCode::Unauthorized,
        "the upstream registry requires credentials; configure a username and password on the repository",
    )
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// `token` (or the OAuth2 `access_token`) and its lifetime in seconds.
pub(crate) fn parse_token(body: &[u8]) -> Option<(String, u64)> {
    let r: TokenResponse = serde_json::from_slice(body).ok()?;
    let token = r
        .token
        .filter(|t| !t.is_empty())
        .or(r.access_token.filter(|t| !t.is_empty()))?;
    let lifetime = r
        .expires_in
        .filter(|&s| s > 0)
        .unwrap_or(DEFAULT_TOKEN_LIFETIME);
    Some((token, lifetime))
}

/// How long to keep a token: its lifetime less a margin, but a short-lived token is still
/// kept a few seconds so that one pull does not fetch a token per layer.
pub(crate) fn token_ttl(lifetime: u64) -> u64 {
    lifetime.saturating_sub(TOKEN_MARGIN).max(lifetime.min(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_names_get_library() {
        let redis = Name::parse("redis").unwrap();
        assert_eq!(
            upstream_name("https://registry-1.docker.io", &redis).as_str(),
            "library/redis"
        );
        assert_eq!(
            upstream_name("https://index.docker.io/", &redis).as_str(),
            "library/redis"
        );
        let two = Name::parse("bitnami/redis").unwrap();
        assert_eq!(
            upstream_name("https://registry-1.docker.io", &two).as_str(),
            "bitnami/redis"
        );
        assert_eq!(
            upstream_name("http://127.0.0.1:5000", &redis).as_str(),
            "redis"
        );
    }

    #[test]
    fn token_bodies() {
        assert_eq!(
            parse_token(br#"{"token":"t","expires_in":300}"#),
            Some(("t".into(), 300))
        );
        assert_eq!(
            parse_token(br#"{"access_token":"a"}"#),
            Some(("a".into(), 60))
        );
        assert_eq!(
            parse_token(br#"{"token":"","access_token":"a","expires_in":0}"#),
            Some(("a".into(), 60))
        );
        assert_eq!(parse_token(br#"{"expires_in":300}"#), None);
        assert_eq!(parse_token(b"nope"), None);
    }

    #[test]
    fn token_ttls() {
        assert_eq!(token_ttl(300), 290);
        assert_eq!(token_ttl(60), 50);
        assert_eq!(token_ttl(12), 5);
        assert_eq!(token_ttl(3), 3);
    }
}
