//! The little URL handling the plugin needs: query parameters in and out, URLs handed to
//! clients, and which host an upstream base URL names.

use crate::contract::Request;

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

/// The decoded value of the first `key` parameter in a raw query string.
pub fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query_values(query, key).next()
}

/// The decoded values of every `key` parameter, in order (`?tag=a&tag=b`).
pub fn query_values<'a>(query: Option<&'a str>, key: &'a str) -> impl Iterator<Item = String> + 'a {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(move |pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k) == key).then(|| decode(v))
        })
}

/// Percent-decoding with '+' as space (form encoding, which is what clients send).
pub fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-encoding of a query component: everything but RFC 3986 unreserved characters.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `base` with `params` appended as a query, respecting a query `base` already has.
pub fn with_query(base: &str, params: &[(&str, &str)]) -> String {
    if params.is_empty() {
        return base.to_owned();
    }
    let q: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}{}", q.join("&"))
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
    fn query_params() {
        let q = Some("n=10&last=v1%2E2&x");
        assert_eq!(query_param(q, "n").as_deref(), Some("10"));
        assert_eq!(query_param(q, "last").as_deref(), Some("v1.2"));
        assert_eq!(query_param(q, "x").as_deref(), Some(""));
        assert_eq!(query_param(q, "y"), None);
        assert_eq!(query_param(None, "n"), None);
        assert_eq!(query_param(Some("n=1&n=2"), "n").as_deref(), Some("1"));
    }

    #[test]
    fn repeated_query_params() {
        let q = Some("tag=a&n=1&tag=b%2Ec&tag=");
        let tags: Vec<String> = query_values(q, "tag").collect();
        assert_eq!(tags, vec!["a", "b.c", ""]);
        assert_eq!(query_values(Some("n=1"), "tag").count(), 0);
        assert_eq!(query_values(None, "tag").count(), 0);
    }

    #[test]
    fn decoding_is_lenient() {
        assert_eq!(decode("a%"), "a%");
        assert_eq!(decode("a%4"), "a%4");
        assert_eq!(decode("a%zz"), "a%zz");
        assert_eq!(decode("a+b%20c"), "a b c");
    }

    #[test]
    fn encoding_and_query_building() {
        assert_eq!(
            encode("repository:library/redis:pull"),
            "repository%3Alibrary%2Fredis%3Apull"
        );
        assert_eq!(
            with_query(
                "https://auth.docker.io/token",
                &[("service", "registry.docker.io"), ("scope", "a b")]
            ),
            "https://auth.docker.io/token?service=registry.docker.io&scope=a%20b"
        );
        assert_eq!(
            with_query("http://x/t?a=1", &[("b", "2")]),
            "http://x/t?a=1&b=2"
        );
        assert_eq!(with_query("http://x/t", &[]), "http://x/t");
    }

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
