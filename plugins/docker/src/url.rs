//! The little URL handling the plugin needs: query parameters in and out, URLs handed to
//! clients, and which host an upstream base URL names.

use crate::contract::Request;
pub use binaryrepo_plugin_sdk::http::{decode, encode, query_param, query_values, with_query};

/// A registry URL for the client, through the mount the request came in by:
/// `{base-url}/v2/{path-repo/}{tail}`. The path method's repository segment goes back in,
/// or the client would address another repository (or none) with it.
pub fn client_url(req: &Request, tail: &str) -> String {
    let base = req.base_url.trim_end_matches('/');
    match req.path_repo.as_deref().filter(|r| !r.is_empty()) {
        Some(repo) => format!("{base}/v2/{repo}/{tail}"),
        None => format!("{base}/v2/{tail}"),
    }
}

/// The lowercase host of an absolute URL, without port or user-info.
pub fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host_port.starts_with('[') {
        host_port.split_inclusive(']').next()?
    } else {
        host_port.split(':').next()?
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// Docker Hub serves official images under `library/`; clients say just `redis`.
pub fn is_docker_hub(remote_url: &str) -> bool {
    matches!(
        host_of(remote_url).as_deref(),
        Some("registry-1.docker.io" | "index.docker.io" | "docker.io")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_urls() {
        let mut req = Request {
            method: "POST".into(),
            path: "/v2/app/blobs/uploads/".into(),
            query: None,
            headers: vec![],
            base_url: "https://proxy.example/repo/docker-local/".into(),
            path_repo: None,
            repository: None,
            mount: crate::contract::Mount::Prefix,
            now: 0,
            caller: Default::default(),
        };
        assert_eq!(
            client_url(&req, "app/blobs/uploads/1"),
            "https://proxy.example/repo/docker-local/v2/app/blobs/uploads/1"
        );
        req.base_url = "http://h:8081".into();
        req.path_repo = Some("docker-local".into());
        assert_eq!(
            client_url(&req, "app/blobs/uploads/1"),
            "http://h:8081/v2/docker-local/app/blobs/uploads/1"
        );
    }

    #[test]
    fn hosts() {
        assert_eq!(
            host_of("https://registry-1.docker.io").as_deref(),
            Some("registry-1.docker.io")
        );
        assert_eq!(
            host_of("http://u:p@Index.Docker.IO:443/v2/").as_deref(),
            Some("index.docker.io")
        );
        assert_eq!(host_of("http://[::1]:5000").as_deref(), Some("[::1]"));
        assert!(is_docker_hub("https://registry-1.docker.io/"));
        assert!(is_docker_hub("https://docker.io"));
        assert!(!is_docker_hub("http://127.0.0.1:5000"));
        assert!(!is_docker_hub("https://ghcr.io"));
    }
}
