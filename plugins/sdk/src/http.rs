//! Request and response helpers shared by every format: header and query access, and small
//! responses in the shapes formats answer with (plain text, JSON).

use crate::contract::{Headers, Request, Response};

/// First value of a header, names compared case-insensitively.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Every value of a header, in order.
pub fn header_values<'a>(
    headers: &'a [(String, String)],
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .iter()
        .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

impl Request {
    /// First value of a request header.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The value of a query parameter (percent-decoded; `Some("")` for a bare `?force`).
    pub fn query_param(&self, name: &str) -> Option<String> {
        query_param(self.query.as_deref(), name)
    }

    pub fn is_read(&self) -> bool {
        self.method == "GET" || self.method == "HEAD"
    }

    /// The declared body size, when the client sent a valid Content-Length.
    pub fn content_length(&self) -> Option<u64> {
        self.header("content-length")?.trim().parse().ok()
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

/// A response with `body` and a content type.
pub fn respond(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Response {
    Response {
        status,
        headers: vec![("Content-Type".to_owned(), content_type.to_owned())],
        body: body.into(),
    }
}

/// A plain-text response; a newline is added so that terminals show it whole.
pub fn text(status: u16, message: &str) -> Response {
    let mut body = message.to_owned();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    respond(status, "text/plain; charset=utf-8", body)
}

/// A JSON response.
pub fn json(status: u16, value: &serde_json::Value) -> Response {
    respond(status, "application/json", value.to_string())
}

impl Response {
    /// The same response with one more header.
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Response {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// The answer to HEAD: the headers of the GET answer (with its length), no body.
    pub fn for_method(mut self, method: &str) -> Response {
        if method == "HEAD" {
            if header(&self.headers, "content-length").is_none() {
                let len = self.body.len().to_string();
                self.headers.push(("Content-Length".to_owned(), len));
            }
            self.body.clear();
        }
        self
    }
}

/// `name: value` pairs as headers.
pub fn headers(pairs: &[(&str, &str)]) -> Headers {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// "scheme://host[:port]" of an absolute http(s) URL.
pub fn origin(url: &str) -> Option<&str> {
    let scheme_end = url.find("://")?;
    let scheme = &url[..scheme_end];
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let rest = &url[scheme_end + 3..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    (end > 0).then(|| &url[..scheme_end + 3 + end])
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
    fn origins() {
        assert_eq!(origin("http://a:8080/x/y.tgz"), Some("http://a:8080"));
        assert_eq!(origin("https://a?x"), Some("https://a"));
        assert_eq!(origin("ftp://a/x"), None);
        assert_eq!(origin("charts/x.tgz"), None);
        assert_eq!(origin("http:///x"), None);
    }

    #[test]
    fn head_keeps_length() {
        let r = text(404, "no").for_method("HEAD");
        assert!(r.body.is_empty());
        assert_eq!(header(&r.headers, "content-length"), Some("3"));
    }
}
