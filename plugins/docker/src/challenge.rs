//! `WWW-Authenticate` challenges (RFC 7235) as upstream registries send them, and the form
//! in which the answer is remembered between requests.

use crate::contract::header_values;
use serde::{Deserialize, Serialize};

/// What an upstream asks for; remembered in scratch so that later requests (and fetch-blob
/// plans, which cannot react to a 401) can authenticate up front.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "scheme", rename_all = "lowercase")]
pub enum Challenge {
    Bearer {
        realm: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<String>,
        /// the scope the upstream named; not remembered because it is per request
        #[serde(skip)]
        scope: Option<String>,
    },
    Basic,
    /// the upstream answered without asking for anything
    None,
}

/// The most useful challenge across all `WWW-Authenticate` headers: Bearer (with a realm)
/// wins over Basic because a token is what registries actually want.
pub fn from_headers(headers: &[(String, String)]) -> Option<Challenge> {
    let all: Vec<Challenge> = header_values(headers, "www-authenticate")
        .flat_map(parse)
        .collect();
    let bearer = all.iter().find(|c| matches!(c, Challenge::Bearer { .. }));
    bearer.or_else(|| all.first()).cloned()
}

/// Every challenge in one header value; schemes other than Bearer and Basic are dropped,
/// as is a Bearer challenge without a realm (there is nowhere to ask for a token).
pub fn parse(value: &str) -> Vec<Challenge> {
    parse_raw(value)
        .into_iter()
        .filter_map(|(scheme, params)| {
            let get = |k: &str| {
                params
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(k))
                    .map(|(_, v)| v.clone())
            };
            if scheme.eq_ignore_ascii_case("bearer") {
                let realm = get("realm").filter(|r| !r.is_empty())?;
                let service = get("service").filter(|s| !s.is_empty());
                let scope = get("scope").filter(|s| !s.is_empty());
                Some(Challenge::Bearer {
                    realm,
                    service,
                    scope,
                })
            } else if scheme.eq_ignore_ascii_case("basic") {
                Some(Challenge::Basic)
            } else {
                None
            }
        })
        .collect()
}

type Params = Vec<(String, String)>;

/// `challenge = auth-scheme [ 1*SP ( token68 / #auth-param ) ]`, several separated by commas.
/// Lenient where registries are sloppy: spaces around '=', empty list elements, unquoted
/// values with characters a strict token would refuse, and a missing closing quote.
fn parse_raw(value: &str) -> Vec<(String, Params)> {
    let mut p = Cursor {
        s: value.as_bytes(),
        i: 0,
    };
    let mut out: Vec<(String, Params)> = Vec::new();
    loop {
        p.skip_list_separators();
        if p.done() {
            break;
        }
        let scheme = p.token();
        if scheme.is_empty() {
            // Not a token: skip one character so the loop always advances.
            p.i += 1;
            continue;
        }
        let mut params = Params::new();
        loop {
            p.skip_ws();
            let mark = p.i;
            let name = p.token();
            p.skip_ws();
            if !name.is_empty() && p.eat(b'=') {
                p.skip_ws();
                let value = if p.peek() == Some(b'"') {
                    p.quoted()
                } else {
                    p.unquoted()
                };
                params.push((name, value));
                p.skip_ws();
                if p.eat(b',') {
                    continue;
                }
                break;
            }
            // Not `name=`: an empty list element, or the next challenge's scheme (or a
            // token68, which no scheme we answer uses).
            p.i = mark;
            if name.is_empty() && p.eat(b',') {
                continue;
            }
            break;
        }
        out.push((scheme, params));
    }
    out
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn done(&self) -> bool {
        self.i >= self.s.len()
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    fn skip_list_separators(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.i += 1;
        }
    }

    /// RFC 7230 tchar run.
    fn token(&mut self) -> String {
        let start = self.i;
        while let Some(b) = self.peek() {
            let tchar = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            if !tchar {
                break;
            }
            self.i += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }

    /// A quoted-string with backslash escapes; an unterminated one runs to the end.
    fn quoted(&mut self) -> String {
        self.i += 1;
        let mut out = Vec::new();
        while let Some(b) = self.peek() {
            self.i += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    if let Some(n) = self.peek() {
                        out.push(n);
                        self.i += 1;
                    }
                }
                _ => out.push(b),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// An unquoted value runs to the next comma or whitespace (realms are URLs: keep ':' '/').
    fn unquoted(&mut self) -> String {
        let start = self.i;
        while let Some(b) = self.peek() {
            if b == b',' || b == b' ' || b == b'\t' {
                break;
            }
            self.i += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(realm: &str, service: Option<&str>, scope: Option<&str>) -> Challenge {
        Challenge::Bearer {
            realm: realm.into(),
            service: service.map(Into::into),
            scope: scope.map(Into::into),
        }
    }

    #[test]
    fn docker_hub() {
        let v = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/redis:pull""#;
        assert_eq!(
            parse(v),
            vec![bearer(
                "https://auth.docker.io/token",
                Some("registry.docker.io"),
                Some("repository:library/redis:pull")
            )]
        );
    }

    #[test]
    fn scope_with_commas_and_missing_scope() {
        let v = r#"Bearer realm="http://127.0.0.1:5001/auth", scope="repository:a/b:pull,push", service="reg""#;
        assert_eq!(
            parse(v),
            vec![bearer(
                "http://127.0.0.1:5001/auth",
                Some("reg"),
                Some("repository:a/b:pull,push")
            )]
        );
        let v = r#"Bearer realm="https://ghcr.io/token",service="ghcr.io""#;
        assert_eq!(
            parse(v),
            vec![bearer("https://ghcr.io/token", Some("ghcr.io"), None)]
        );
    }

    #[test]
    fn odd_quoting_and_spacing() {
        let v = "bearer  Realm = \"https://a/t\" ,,service=unquoted.example , scope=\"x\\\"y\"";
        assert_eq!(
            parse(v),
            vec![bearer(
                "https://a/t",
                Some("unquoted.example"),
                Some("x\"y")
            )]
        );
        let v = r#"Bearer realm=https://auth.example.com/token?x=1,service="s""#;
        assert_eq!(
            parse(v),
            vec![bearer(
                "https://auth.example.com/token?x=1",
                Some("s"),
                None
            )]
        );
        // unterminated quote: take what there is
        let v = r#"Bearer realm="https://a/t"#;
        assert_eq!(parse(v), vec![bearer("https://a/t", None, None)]);
    }

    #[test]
    fn several_challenges_in_one_value() {
        let v = r#"Basic realm="Registry", Bearer realm="https://a/t",service="s""#;
        assert_eq!(
            parse(v),
            vec![Challenge::Basic, bearer("https://a/t", Some("s"), None)]
        );
        let headers = vec![("WWW-Authenticate".to_owned(), v.to_owned())];
        assert_eq!(
            from_headers(&headers),
            Some(bearer("https://a/t", Some("s"), None))
        );
    }

    #[test]
    fn basic_and_unknown_schemes() {
        assert_eq!(
            parse(r#"Basic realm="Registry Realm""#),
            vec![Challenge::Basic]
        );
        assert_eq!(parse("Basic"), vec![Challenge::Basic]);
        assert_eq!(
            parse(r#"Negotiate abc==, Basic realm="x""#),
            vec![Challenge::Basic]
        );
        assert_eq!(parse(r#"Digest realm="x", nonce="y""#), vec![]);
        assert_eq!(parse(""), vec![]);
        assert_eq!(parse(",,,"), vec![]);
        // Bearer without a realm cannot be answered
        assert_eq!(parse(r#"Bearer service="s""#), vec![]);
    }

    #[test]
    fn several_headers_prefer_bearer() {
        let headers = vec![
            (
                "www-authenticate".to_owned(),
                "Basic realm=\"r\"".to_owned(),
            ),
            (
                "Www-Authenticate".to_owned(),
                "Bearer realm=\"https://t\"".to_owned(),
            ),
        ];
        assert_eq!(
            from_headers(&headers),
            Some(bearer("https://t", None, None))
        );
        assert_eq!(from_headers(&[]), None);
    }

    #[test]
    fn remembered_form_drops_scope() {
        let c = bearer("https://t", Some("s"), Some("repository:x:pull"));
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(
            json,
            r#"{"scheme":"bearer","realm":"https://t","service":"s"}"#
        );
        let back: Challenge = serde_json::from_str(&json).unwrap();
        assert_eq!(back, bearer("https://t", Some("s"), None));
        let none: Challenge = serde_json::from_str(r#"{"scheme":"none"}"#).unwrap();
        assert_eq!(none, Challenge::None);
    }
}
