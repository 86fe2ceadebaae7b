//! Which repository a request is for, and the URL the client sees it under.
//!
//! In order: a repository bound to the listener's port; a virtual host; the path prefix
//! `/repo/<name>/` (the original project's nginx set-up); the path method (the segment right
//! after a format root names a repository whose name has a `-`, `_` or `.`); the default repository.
//! `X-Forwarded-Host`/`-Proto`/`-Prefix` count only from a trusted proxy (`forwarded`).

use std::sync::Arc;

use http::HeaderMap;

use crate::App;
use crate::plugins::LoadedPlugin;
use crate::plugins::bindings::types::Mount;
use crate::repos::Repository;

pub use super::forwarded::{TrustedProxies, client_addr};

#[derive(Clone)]
pub struct Resolved {
    pub repo: Option<Arc<Repository>>,
    pub plugin: Arc<LoadedPlugin>,
    /// The path the plugin sees, with the repository's mount removed.
    pub path: String,
    pub base_url: String,
    pub path_repo: Option<String>,
    pub mount: Mount,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("repository {0:?} not found")]
    UnknownRepository(String),
    #[error("no repository or format serves {0:?}")]
    NoRoute(String),
    #[error("repository {repo} has format {format}, whose plugin is not loaded")]
    NoPlugin { repo: String, format: String },
}

fn first_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(|v| v.split(',').next().unwrap_or("").trim()).filter(|v| !v.is_empty())
}

/// `host[:port]` without the port (case as sent: host names are matched without case).
fn host_only(authority: &str) -> &str {
    let a = authority.trim();
    if let Some(rest) = a.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        a.rsplit_once(':').map_or(a, |(h, p)| if p.bytes().all(|b| b.is_ascii_digit()) { h } else { a })
    }
}

/// The external base URL. Behind a proxy that sets `X-Forwarded-Host`, the client sees the
/// proxy's host at its root unless `X-Forwarded-Prefix` says otherwise (the original set-up
/// maps a virtual host to `/repo/<name>/`, which the client never sees). `forwarded`: the peer is
/// a trusted proxy, so its `X-Forwarded-*` headers count. `scheme` is the listener's own, unless
/// such a proxy says what the client used.
fn base_url(headers: &HeaderMap, forwarded: bool, uri_authority: Option<&str>, mount: &str, scheme: &'static str) -> String {
    let fwd = |name| if forwarded { first_value(headers, name) } else { None };
    let scheme = fwd("x-forwarded-proto").unwrap_or(scheme);
    if let Some(fwd_host) = fwd("x-forwarded-host") {
        let prefix = fwd("x-forwarded-prefix").unwrap_or("").trim_end_matches('/');
        return [scheme, "://", fwd_host, prefix].concat();
    }
    let host = headers.get(http::header::HOST).and_then(|v| v.to_str().ok()).or(uri_authority).unwrap_or("localhost");
    // `concat`, not `format!`: this runs for every request and the formatter costs ~1k instructions.
    [scheme, "://", host, mount].concat()
}

/// `forwarded`: the request came from a trusted proxy (`TrustedProxies::contains` of the peer).
/// Whether the path method may take `segment` as a repository name: only names with a `-`, `_`
/// or `.`. The namespaces of the big public registries are lowercase letters and digits only, so
/// a mirror request for `<namespace>/<image>` sent to the root always reaches the default
/// repository, even when a repository happens to be called like that namespace.
fn path_method_name(segment: &str) -> bool {
    segment.contains(['-', '_', '.'])
}

pub fn resolve(
    app: &App,
    main_listener: bool,
    local_port: u16,
    forwarded: bool,
    method_path: (&http::Uri, &HeaderMap),
) -> Result<Resolved, ResolveError> {
    let (uri, headers) = method_path;
    // Every listener speaks TLS when the server has a certificate.
    let scheme = if app.tls.is_some() { "https" } else { "http" };
    let path = uri.path();
    let authority = uri.authority().map(|a| a.as_str());
    let plugin_for = |repo: &Repository| {
        app.plugins.get(&repo.format).ok_or_else(|| ResolveError::NoPlugin { repo: repo.name.to_string(), format: repo.format.clone() })
    };
    let whole = |repo: Arc<Repository>, path: &str, prefix: &str, mount: Mount| -> Result<Resolved, ResolveError> {
        Ok(Resolved {
            plugin: plugin_for(&repo)?,
            repo: Some(repo),
            path: if path.is_empty() { "/".into() } else { path.to_owned() },
            base_url: base_url(headers, forwarded, authority, prefix, scheme),
            path_repo: None,
            mount,
        })
    };

    if !main_listener && let Some(repo) = app.repos.by_port(local_port) {
        return whole(repo, path, "", Mount::Port);
    }
    let host = forwarded
        .then(|| first_value(headers, "x-forwarded-host"))
        .flatten()
        .or_else(|| headers.get(http::header::HOST).and_then(|v| v.to_str().ok()))
        .or(authority);
    if let Some(repo) = host.and_then(|h| app.repos.by_hostname(host_only(h))) {
        return whole(repo, path, "", Mount::Host);
    }
    if let Some(rest) = path.strip_prefix("/repo/") {
        let (name, tail) = rest.split_once('/').map_or((rest, ""), |(n, t)| (n, t));
        let repo = app.repos.get(name).ok_or_else(|| ResolveError::UnknownRepository(name.to_owned()))?;
        return whole(repo, &["/", tail].concat(), &["/repo/", name].concat(), Mount::Prefix);
    }
    let (plugin, root_len) = app.plugins.by_root(path).ok_or_else(|| ResolveError::NoRoute(path.to_owned()))?;
    if let Some((root, after)) = root_len.and_then(|n| Some((path.get(..n)?, path.get(n..)?)))
        && let Some((segment, tail)) = after.split_once('/')
        && path_method_name(segment)
        && let Some(repo) = app.repos.get(segment).filter(|r| r.format == plugin.meta.format)
    {
        return Ok(Resolved {
            plugin,
            path: [root, tail].concat(),
            base_url: base_url(headers, forwarded, authority, "", scheme),
            path_repo: Some(repo.name.to_string()),
            repo: Some(repo),
            mount: Mount::Path,
        });
    }
    let repo = app.repos.default_repository().filter(|r| r.format == plugin.meta.format);
    Ok(Resolved {
        plugin,
        repo,
        path: path.to_owned(),
        base_url: base_url(headers, forwarded, authority, "", scheme),
        path_repo: None,
        mount: Mount::Root,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn path_method_names() {
        for taken in ["images-remote", "team_images", "quay.io", "a-b"] {
            assert!(path_method_name(taken), "{taken}");
        }
        for left in ["library", "bitnami", "team", "r", "ci2"] {
            assert!(!path_method_name(left), "{left}");
        }
    }

    #[test]
    fn hosts() {
        assert_eq!(host_only("Docker-Remote.example.com:8081"), "Docker-Remote.example.com");
        assert_eq!(host_only("[::1]:80"), "::1");
        assert_eq!(host_only("plain"), "plain");
    }

    #[test]
    fn base_urls() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("127.0.0.1:8081"));
        assert_eq!(base_url(&h, true, None, "/repo/x", "http"), "http://127.0.0.1:8081/repo/x");
        assert_eq!(base_url(&h, true, None, "/repo/x", "https"), "https://127.0.0.1:8081/repo/x");
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("x-forwarded-host", HeaderValue::from_static("docker-remote.example.com"));
        assert_eq!(base_url(&h, true, None, "/repo/x", "http"), "https://docker-remote.example.com");
        h.insert("x-forwarded-prefix", HeaderValue::from_static("/artifacts/"));
        assert_eq!(base_url(&h, true, None, "/repo/x", "http"), "https://docker-remote.example.com/artifacts");
        // the same headers from a peer that is not a trusted proxy change nothing
        assert_eq!(base_url(&h, false, None, "/repo/x", "http"), "http://127.0.0.1:8081/repo/x");
    }
}
